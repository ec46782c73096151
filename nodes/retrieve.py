"""Stage 1: candidate retrieval.

Validates the input, cuts a context longer than ``max_context_chars`` to the
text around the mention (noted in the trace), then keeps the candidates it
carries or retrieves the top-k from the knowledge base (``tools/kb.py``; an
empty candidate list given in the input is noted in the trace). Carried
candidates that name a KB entity by ``qid`` take its stored vector
(``tools.kb.share_listed_vectors``): the linker does not embed them again.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from graph.context import Context, resolve_context
from graph.inputs import clip_context, normalize_candidates, validate_input
from graph.progress import record
from graph.state import State


def retrieve_candidates(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check the input and fix the candidate list for all later rounds."""
    ctx = resolve_context(runtime)
    clean = validate_input(state, strict_image=ctx.strict_image)
    notes: list[str] = []
    # keep the prompt within the model's window: the text around the mention
    clean["context"], cut = clip_context(clean["context"], clean["mention"], ctx.max_context_chars)
    if cut:
        notes.append(cut)
    source = "input"
    if clean["candidates"]:
        from tools.kb import share_listed_vectors

        share_listed_vectors(clean["candidates"], ctx)  # listed KB entities: their stored vectors, not re-embedded
    else:
        from tools.kb import retrieve_candidates as kb_retrieve

        if isinstance(state.get("candidates"), (list, tuple)):  # given, but empty
            notes.append("the input's candidate list is empty: candidates retrieved from the knowledge base instead")
        found = kb_retrieve(clean["mention"], clean["context"], ctx)
        # no name-length limit here: ingest refuses long names, and a store written before it must still answer
        clean["candidates"] = normalize_candidates(found, where="knowledge base result", max_name_chars=None)
        source = "knowledge base"
    entry = {"round": 1, "step": "retrieve",
             "note": "; ".join([f"{len(clean['candidates'])} candidates from {source}", *notes]), "source": source}
    has_visual = bool(clean["image"]) or bool(clean["image_desc"])
    return {
        **clean,
        "candidate_source": source,
        "round": 1,
        "clue_index": 0,
        "clues": [],
        "excluded": [],
        "attempts": [],
        "round_answers": [],
        # a new input starts a new trace, also on a thread that ran before (Overwrite bypasses the append)
        "trace": Overwrite([*({"round": 1, "step": "input", "note": w} for w in clean["warnings"]),
                            *record(entry, "candidates", count=len(clean["candidates"]), source=source)]),
        "usage": {"llm_calls": 0, "input_tokens": 0, "output_tokens": 0},
        "has_visual": has_visual,
        "current_clue": None,
    }
