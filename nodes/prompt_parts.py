"""Prompt text shared by both text linkers (``nodes/link.py`` and ``nodes/link_fused.py``).

Loading the linker model and counting its calls live in ``tools/linker.py``; ``linker`` and
``count_call`` are re-exported here for ``nodes/link_fused.py`` and ``evals/bench_llm.py``.
"""

from __future__ import annotations

from graph.context import Context
from graph.state import State
from prompts import linking as P
from tools.linker import count_call
from tools.linker import load_linker as linker

__all__ = ["candidate_desc", "clue_block", "count_call", "linker", "round_clues"]


def candidate_desc(candidate: dict, limit: int, *, strip_name: bool = False) -> str:
    """`` — <description>`` cut to ``limit`` characters ('' without one).

    ``strip_name`` drops a leading ``Name: <name>.`` (the line shows the name already).
    """
    desc = " ".join(str(candidate.get("desc") or "").split())
    if strip_name:
        name = str(candidate.get("name") or "")
        for prefix in (f"Name: {name}.", f"Name: {name}"):
            if desc.startswith(prefix):
                desc = desc[len(prefix):].strip()
                break
    if not desc:
        return ""
    if len(desc) > limit:
        desc = desc[:limit].rsplit(" ", 1)[0] + "..."
    return f" — {desc}"


def round_clues(state: State, ctx: Context) -> list[dict]:
    """The clues the linker sees this round (all so far, or the newest only)."""
    clues = state.get("clues") or []
    return clues if ctx.accumulate_clues else clues[-1:]


def clue_block(clues: list[dict]) -> str:
    """The prompt's visual-clue paragraph ('' without clues)."""
    if not clues:
        return ""
    return P.CLUES.format(lines="\n".join(
        P.CLUE_LINE.format(label=P.CLUE_LABELS.get(c["type"], c["type"]), text=c["text"]) for c in clues))
