"""Pieces of the linker prompts built from data (prompts/ holds the fixed text)."""

from __future__ import annotations

from prompts import linking as P


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


def clue_block(clues: list[dict]) -> str:
    """The prompt's visual-clue paragraph ('' without clues)."""
    if not clues:
        return ""
    return P.CLUES.format(lines="\n".join(
        P.CLUE_LINE.format(label=P.CLUE_LABELS.get(c["type"], c["type"]), text=c["text"]) for c in clues))
