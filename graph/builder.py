"""Assembly of the I2CR graph.

    START → retrieve_candidates → link_on_text → reflect ─┬─(re-choice)→ link_on_text
                                                          └→ verify ─┬→ finalize → END
                                                                     └→ clue_<next> ─→ link_on_text
                                                                        (empty clue → next clue / finalize)
    finalize ─(human_review and status fallback)→ review → END
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from graph.context import Context
from graph.state import InputState, OutputState, State
from nodes.caption import clue_caption
from nodes.finalize import finalize
from nodes.link import link_on_text
from nodes.objects import clue_objects
from nodes.ocr import clue_ocr
from nodes.reflect import after_reflection, reflect
from nodes.retrieve import retrieve_candidates
from nodes.review import needs_review, review
from nodes.routing import CLUE_NODES, route_next_step
from nodes.scene import clue_scene
from nodes.verify import verify
from tools.errors import I2CRError

CLUE_FUNCTIONS = {"clue_ocr": clue_ocr, "clue_objects": clue_objects, "clue_scene": clue_scene,
                  "clue_caption": clue_caption}
assert set(CLUE_FUNCTIONS) == set(CLUE_NODES.values())


def _transient(exc: Exception) -> bool:
    """Retry a node on errors that may pass (network), never on i2cr's own clear errors."""
    if isinstance(exc, I2CRError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError))


def build_graph(checkpointer: Any = None, **compile_kwargs: Any):
    """Build and compile the I2CR graph; pass a checkpointer for durable, resumable runs."""
    builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    retry = RetryPolicy(max_attempts=3, retry_on=_transient)
    builder.add_node("retrieve_candidates", retrieve_candidates, retry_policy=retry)
    builder.add_node("link_on_text", link_on_text)
    builder.add_node("reflect", reflect)
    builder.add_node("verify", verify)
    for name, fn in CLUE_FUNCTIONS.items():
        builder.add_node(name, fn)
    builder.add_node("finalize", finalize)
    builder.add_node("review", review)

    builder.add_edge(START, "retrieve_candidates")
    builder.add_edge("retrieve_candidates", "link_on_text")
    builder.add_edge("link_on_text", "reflect")
    builder.add_conditional_edges("reflect", after_reflection, ["link_on_text", "verify"])
    clue_targets = [*CLUE_FUNCTIONS, "finalize"]
    builder.add_conditional_edges("verify", route_next_step, clue_targets)
    for name in CLUE_FUNCTIONS:
        builder.add_conditional_edges(name, route_next_step, ["link_on_text", *(t for t in clue_targets if t != name)])
    builder.add_conditional_edges("finalize", needs_review, ["review", END])
    builder.add_edge("review", END)
    graph = builder.compile(checkpointer=checkpointer, **compile_kwargs)
    graph.name = "I2CR entity linker"
    return graph
