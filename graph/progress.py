"""Progress events a person can watch while the graph runs (LangGraph custom stream).

Nodes call ``emit("clue_start", clue="ocr")``; with ``stream_mode="custom"``
(in Python, or through the LangGraph server) each call arrives as one dict::

    {"event": "clue_start", "node": "clue_ocr", "clue": "ocr"}

``event`` is the kind, ``node`` the graph node that emitted it; the other keys
are the event's data. Events are plain JSON (numbers, strings, lists, dicts,
``None``). Outside a graph run (a node called directly, a unit test) ``emit``
does nothing, and when the caller did not ask for custom events LangGraph's
writer drops them.

Kinds (one per line in the nodes): ``candidates`` (retrieval done), ``pick``
(the linker's answer), ``excluded`` (reflection ruled a pick out, and why),
``verification`` (score, threshold, passed), ``clue_start`` / ``clue``
(a visual clue being extracted / its result), ``review`` (waiting for a
person), ``final`` (the answer).

``record(entry, "pick", ...)`` is how a node writes its step: it emits the
event and returns ``[entry]``, the node's addition to ``trace`` (the state
appends it; see ``graph/state.py``).
"""

from __future__ import annotations

import math
from typing import Any

from langgraph.config import get_config, get_stream_writer


def emit(kind: str, **data: Any) -> None:
    """Send one progress event to the custom stream; a no-op outside a graph run."""
    try:
        config = get_config()
    except RuntimeError:  # not inside a LangGraph run
        return
    node = (config.get("metadata") or {}).get("langgraph_node")
    get_stream_writer()({"event": kind, "node": node, **{k: plain(v) for k, v in data.items()}})


def record(entry: dict[str, Any], event: str | None = None, **data: Any) -> list[dict[str, Any]]:
    """One trace entry for the node's update (``{"trace": record(...)}``), after emitting its progress event."""
    if event is not None:
        emit(event, **data)
    return [entry]


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: numpy scalars become numbers, NaN ``None``, anything else its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return plain(value.item())
    return str(value)
