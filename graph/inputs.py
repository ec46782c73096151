"""Validation and normalisation of the graph's input, done once at the entry.

The candidate checks live in ``tools/candidates.py`` (the eval scripts use them too);
``candidate_key`` and ``normalize_candidates`` are re-exported here for the nodes that import them from here.
"""

from __future__ import annotations

import os
import unicodedata

from tools.candidates import candidate_key, check_text, normalize_candidates
from tools.clues.precomputed import parse_image_desc
from tools.errors import InputError

__all__ = ["candidate_key", "check_text", "clip_context", "normalize_candidates", "validate_input", "check_image",
           "visible"]


def clip_context(context: str, mention: str, max_chars: int) -> tuple[str, str | None]:
    """Cut ``context`` to at most ``max_chars`` characters around the mention's first occurrence.

    Returns the text and a note for the trace (``None`` when nothing was cut). The window is
    centred on the mention (on the start of the text when the mention does not occur in it)
    and snapped to word boundaries without cutting the mention; ``max_chars`` 0 = no cut.
    """
    if not max_chars or len(context) <= max_chars:
        return context, None
    pos = context.find(mention)
    if pos < 0:
        pos = context.lower().find(mention.lower())
    if pos < 0:
        start = 0
        where = "from its start (the mention does not occur in it)"
    else:
        start = pos + len(mention) // 2 - max_chars // 2
        start = max(0, min(start, len(context) - max_chars))
        where = f"around the mention at character {pos}"
    end = start + max_chars
    lo, hi = (pos, pos + len(mention)) if pos >= 0 else (end, end)
    if start > 0:  # do not start mid-word
        space = context.find(" ", start, min(lo, start + 40))
        start = space + 1 if space >= 0 else start
    if end < len(context):  # do not end mid-word
        space = context.rfind(" ", max(hi, end - 40), end)
        end = space if space >= 0 else end
    note = (f"context cut to characters {start}..{end} of {len(context)} {where} "
            f"(max_context_chars={max_chars})")
    return context[start:end].strip(), note


def validate_input(state: dict, *, strict_image: bool = False) -> dict:
    """Return the normalised input fields, or raise ``InputError`` naming what is wrong.

    The image is checked here, once (``check_image``): an image that cannot be used is
    dropped (``image`` None) and the reason, naming the file, is added to ``warnings``, so
    the mention is linked on its text (and its precomputed descriptions, if any) and every
    later stage sees a usable image or none. With ``strict_image`` it is an ``InputError``.
    """
    label = f"input {state['id']!r}: " if state.get("id") else ""
    mention = state.get("mention")
    if not isinstance(mention, str) or not visible(mention):
        raise InputError(f"{label}mention: must be a non-empty string (got {mention!r})")
    check_text(mention, f"{label}mention")
    control = next((c for c in mention if unicodedata.category(c) == "Cc" and not c.isspace()), None)
    if control is not None:
        raise InputError(f"{label}mention: holds the control character U+{ord(control):04X} at character "
                         f"{mention.index(control)} (got {mention!r:.80})")
    if "context" not in state or state.get("context") is None:
        raise InputError(f"{label}context: missing; give the text around the mention "
                         "(an empty string is allowed when there is none)")
    context = state["context"]
    if not isinstance(context, str):
        raise InputError(f"{label}context: must be a string, got {type(context).__name__}")
    check_text(context, f"{label}context")
    try:
        image_desc = parse_image_desc(state.get("image_desc"))
    except ValueError as exc:
        raise InputError(f"{label}image_desc: {exc}") from None
    warnings: list[str] = []
    image = state.get("image")
    if image in ("", None):
        image = None
    elif not isinstance(image, (str, os.PathLike)):
        raise InputError(f"{label}image: must be a file path, got {type(image).__name__}")
    else:
        image = os.fspath(image)
        problem = check_image(image)
        if problem is not None:
            if strict_image:
                raise InputError(f"{label}{problem} (strict_image is on)")
            on = "its text and the precomputed image description" if image_desc else "its text"
            warnings.append(f"{problem}; image not used, the mention is linked on {on}")
            image = None
    dropped: list[str] = []
    candidates = normalize_candidates(state.get("candidates"), where=f"{label}candidates", dropped=dropped)
    if dropped:
        listed = "; ".join(dropped[:3]) + ("; ..." if len(dropped) > 3 else "")
        warnings.append(f"{label}candidates: {len(dropped)} duplicate(s) dropped, the first of each kept: {listed}")
    return {"mention": mention.strip(), "context": context.strip(), "image": image,
            "image_desc": image_desc, "candidates": candidates, "warnings": warnings}


def visible(text: str) -> bool:
    """Whether ``text`` holds a character that is neither white space, a control nor a format character
    (zero-width space, joiners, direction marks): a mention of only those is empty."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf", "Zs") for c in text)


def check_image(path: str) -> str | None:
    """Why the image file ``path`` cannot be used (``'image: <what is wrong>: <path>'``), or None when it can.

    The file is decoded in full, so a truncated or corrupt body is found here rather than by a tool;
    the limits (size, side, aspect ratio) are those of ``tools.clues.image_io``.
    """
    from tools.clues.image_io import load_image

    try:
        load_image(path)
    except InputError as exc:
        return str(exc)
    return None
