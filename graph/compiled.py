"""The compiled graph, no checkpointer: what ``langgraph.json`` points LangGraph Studio / ``langgraph dev`` at.

``from graph import graph`` gives the same object (built on first use).
"""

from graph.builder import build_graph

graph = build_graph()
