"""Stage 1: candidate retrieval.

Validates the input, then keeps the candidates it carries or retrieves the
top-k from the knowledge base (``tools/kb.py``).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import emit
from graph.inputs import normalize_candidates, validate_input
from graph.state import State


def retrieve_candidates(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check the input and fix the candidate list for all later rounds."""
    ctx = resolve_context(runtime)
    clean = validate_input(state)
    source = "input"
    if not clean["candidates"]:
        from tools.kb import retrieve_candidates as kb_retrieve

        found = kb_retrieve(clean["mention"], clean["context"], ctx)
        clean["candidates"] = normalize_candidates(found, where="knowledge base result")
        source = "knowledge base"
    emit("candidates", count=len(clean["candidates"]), source=source)
    has_visual = bool(clean["image"]) or bool(clean["image_desc"])
    return {
        **clean,
        "round": 1,
        "clue_index": 0,
        "clues": [],
        "excluded": [],
        "attempts": [],
        "round_answers": [],
        "trace": [{"round": 1, "step": "retrieve", "note": f"{len(clean['candidates'])} candidates from {source}",
                   "source": source}],
        "usage": {"llm_calls": 0, "input_tokens": 0, "output_tokens": 0},
        "has_visual": has_visual,
        "current_clue": None,
    }
