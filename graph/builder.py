"""Assembly of the I2CR graph: the method's figure, node by node.

    START → retrieve_candidates → link_on_text → reflect ─┬─(ruled out: choose again)→ link_on_text
                                                          └→ verify ─┬─(verified / no image / no clue left)→ finalize
                                                                     └→ clue_round ─┬→ link_on_text (a new round)
                                                                                    └→ finalize (every clue empty)
    finalize ─(human_review and status fallback)→ review → END

Every branch is decided by one edge function of ``graph/edges.py``.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from graph.context import Context
from graph.edges import after_clue, after_finalize, after_reflection, after_verify
from graph.state import InputState, OutputState, State
from nodes.clue_round import clue_round
from nodes.finalize import finalize
from nodes.link import link_on_text
from nodes.reflect import reflect
from nodes.retrieve import retrieve_candidates
from nodes.review import review
from nodes.verify import verify
from tools.errors import I2CRError


def _transient(exc: Exception) -> bool:
    """Retry a node on errors that may pass (network), never on i2cr's own clear errors."""
    if isinstance(exc, I2CRError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError))


def build_graph(checkpointer: Any = None, **compile_kwargs: Any):
    """Build and compile the I2CR graph; pass a checkpointer for durable, resumable runs."""
    builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    builder.add_node("retrieve_candidates", retrieve_candidates,
                     retry_policy=RetryPolicy(max_attempts=3, retry_on=_transient))
    builder.add_node("link_on_text", link_on_text)
    builder.add_node("reflect", reflect)
    builder.add_node("verify", verify)
    builder.add_node("clue_round", clue_round)
    builder.add_node("finalize", finalize)
    builder.add_node("review", review)

    builder.add_edge(START, "retrieve_candidates")
    builder.add_edge("retrieve_candidates", "link_on_text")
    builder.add_edge("link_on_text", "reflect")
    builder.add_conditional_edges("reflect", after_reflection, ["link_on_text", "verify"])
    builder.add_conditional_edges("verify", after_verify, ["clue_round", "finalize"])
    builder.add_conditional_edges("clue_round", after_clue, ["link_on_text", "finalize"])
    builder.add_conditional_edges("finalize", after_finalize, ["review", END])
    builder.add_edge("review", END)

    graph = builder.compile(checkpointer=checkpointer, **compile_kwargs)
    graph.name = "I2CR entity linker"
    return graph
