"""Validation and normalisation of the graph's input, done once at the entry."""

from __future__ import annotations

import os
from typing import Any

from tools.clues.precomputed import parse_image_desc
from tools.errors import InputError


def candidate_key(candidate: dict) -> str:
    """The identity of a candidate: its QID, else its name."""
    return str(candidate.get("qid") or candidate.get("name"))


def normalize_candidates(raw: Any, *, where: str = "candidates") -> list[dict]:
    """Check and clean a candidate list; strings are taken as names. Duplicates are dropped."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise InputError(f"{where}: expected a list of {{qid, name, desc}} objects, got {type(raw).__name__}")
    out: list[dict] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise InputError(f"{where}[{i}]: expected an object with a 'name', got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}[{i}]: candidate has no name (got {item!r:.120})")
        cand = {"name": name.strip()}
        if item.get("qid") not in (None, ""):
            cand["qid"] = str(item["qid"]).strip()
        desc = item.get("desc", item.get("description"))
        if desc is not None:
            cand["desc"] = str(desc)
        if isinstance(item.get("score"), (int, float)):
            cand["score"] = float(item["score"])
        if isinstance(item.get("image"), str) and item["image"]:
            cand["image"] = item["image"]  # an entity image (knowledge bases may carry one)
        if isinstance(item.get("aliases"), list):
            cand["aliases"] = [str(a) for a in item["aliases"] if str(a).strip()]
        key = candidate_key(cand)
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out


def validate_input(state: dict, *, strict_image: bool = False) -> dict:
    """Return the normalised input fields, or raise ``InputError`` naming what is wrong.

    The image is checked here, once (``check_image``): an image that cannot be used is
    dropped (``image`` None) and the reason, naming the file, is added to ``warnings``, so
    the mention is linked on its text (and its precomputed descriptions, if any) and every
    later stage sees a usable image or none. With ``strict_image`` it is an ``InputError``.
    """
    label = f"input {state['id']!r}: " if state.get("id") else ""
    mention = state.get("mention")
    if not isinstance(mention, str) or not mention.strip():
        raise InputError(f"{label}mention: must be a non-empty string (got {mention!r})")
    if "context" not in state or state.get("context") is None:
        raise InputError(f"{label}context: missing; give the text around the mention "
                         "(an empty string is allowed when there is none)")
    context = state["context"]
    if not isinstance(context, str):
        raise InputError(f"{label}context: must be a string, got {type(context).__name__}")
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
    candidates = normalize_candidates(state.get("candidates"), where=f"{label}candidates")
    return {"mention": mention.strip(), "context": context.strip(), "image": image,
            "image_desc": image_desc, "candidates": candidates, "warnings": warnings}


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
