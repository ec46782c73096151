"""Where the graph goes next: decided in the nodes (which see the configuration), read by the edges."""

from __future__ import annotations

from graph.context import Context
from graph.state import State

CLUE_NODES = {"ocr": "clue_ocr", "objects": "clue_objects", "scene": "clue_scene", "caption": "clue_caption"}
"""Graph node name of each visual clue type."""


def next_clue_step(state: State, ctx: Context, clue_index: int | None = None) -> str:
    """The next clue node in ``clue_order``, or ``finalize`` when clues or rounds are used up."""
    index = state.get("clue_index", 0) if clue_index is None else clue_index
    clue_rounds_done = state.get("round", 1) - 1
    if clue_rounds_done >= ctx.max_rounds or index >= len(ctx.clue_order):
        return "finalize"
    return CLUE_NODES[ctx.clue_order[index]]


def route_next_step(state: State) -> str:
    """Edge function: follow the ``next_step`` a node decided."""
    return state["next_step"]
