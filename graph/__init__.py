"""The I2CR multimodal entity-linking graph.

    from graph import graph            # compiled, no checkpointer (what LangGraph Studio loads)
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls",
                        "candidates": [...]}, context={"linker_model": "openai:gpt-4o-mini"})

``build_graph(checkpointer=...)`` compiles a durable copy; ``link(...)`` is the
one-call helper.
"""

from graph.api import link
from graph.builder import build_graph
from graph.context import Context

graph = build_graph()

__all__ = ["graph", "build_graph", "link", "Context"]
