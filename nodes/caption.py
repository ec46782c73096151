"""Visual clue node: a caption of the whole image."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.state import State
from nodes.clue_round import run_clue


def clue_caption(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Extract a caption of the whole image and start the next linking round with it."""
    return run_clue("caption", state, resolve_context(runtime))
