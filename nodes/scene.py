"""Visual clue node: the scene: indoor/outdoor and place type."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.state import State
from nodes.clue_round import run_clue


def clue_scene(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Extract the scene: indoor/outdoor and place type and start the next linking round with it."""
    return run_clue("scene", state, resolve_context(runtime))
