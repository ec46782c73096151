"""One-call helper for the common case."""

from __future__ import annotations

from typing import Any


def link(mention: str, context: str = "", *, image: str | None = None, candidates: list | None = None,
         image_desc: dict | None = None, **settings: Any) -> dict[str, Any]:
    """Link one mention and return the graph's output (entity, status, stop_round, trace, ...).

    ``settings`` are :class:`graph.context.Context` fields, e.g.
    ``link("Jordan", "...", candidates=cands, linker_model="openai:gpt-4o-mini")``.
    """
    from graph.compiled import graph
    from graph.context import Context

    inputs: dict[str, Any] = {"mention": mention, "context": context}
    if image is not None:
        inputs["image"] = image
    if candidates is not None:
        inputs["candidates"] = candidates
    if image_desc is not None:
        inputs["image_desc"] = image_desc
    return graph.invoke(inputs, context=Context(**settings))
