"""Visual clue node: text written in the image (OCR)."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.state import State
from nodes.clue_round import run_clue


def clue_ocr(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Extract text written in the image (OCR) and start the next linking round with it."""
    return run_clue("ocr", state, resolve_context(runtime))
