"""The I2CR multimodal entity-linking graph.

    from graph import graph            # compiled, no checkpointer (what LangGraph Studio loads)
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls",
                        "candidates": [...]}, context={"linker_model": "openai:gpt-4o-mini"})

``build_graph(checkpointer=...)`` compiles a durable copy; ``link(...)`` is the
one-call helper.

The graph, ``build_graph`` and ``link`` are imported on first use (PEP 562). The
nodes import this package's foundation (``graph.context``, ``graph.state``,
``graph.progress``, ``graph.inputs``, ``graph.edges``), and Python runs this file
before any of them: importing the builder here would import the nodes while the
first of them is still half-imported (``import nodes.link`` on its own would fail).
The module graph itself has no circle (``tests/test_imports.py``).
"""

from typing import Any

from graph.context import Context

__all__ = ["graph", "build_graph", "link", "Context"]


def __getattr__(name: str) -> Any:
    if name == "build_graph":
        from graph.builder import build_graph

        return build_graph
    if name == "link":
        from graph.api import link

        return link
    if name == "graph":
        from graph.compiled import graph as compiled

        globals()["graph"] = compiled
        return compiled
    raise AttributeError(f"module 'graph' has no attribute {name!r}")
