"""What the text linkers' prompts take from the state: the clues of the round.

The prompt pieces built from data (``candidate_desc``, ``clue_block``) live in ``tools/prompt_text.py``,
loading the linker model and counting its calls (``linker``, ``count_call``) in ``tools/linker.py``;
they are re-exported here for ``nodes/link_fused.py`` and ``evals/bench_llm.py``.
"""

from __future__ import annotations

from graph.context import Context
from graph.state import State
from tools.linker import count_call
from tools.linker import load_linker as linker
from tools.prompt_text import candidate_desc, clue_block

__all__ = ["candidate_desc", "clue_block", "count_call", "linker", "round_clues"]


def round_clues(state: State, ctx: Context) -> list[dict]:
    """The clues the linker sees this round (all so far, or the newest only)."""
    clues = state.get("clues") or []
    return clues if ctx.accumulate_clues else clues[-1:]
