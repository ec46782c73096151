"""Clues from image descriptions a record already carries.

The I2CR datasets ship Azure AI Vision outputs per image
(``mention_imgdesc_Azure``): ``Caption``, ``Dense Captions``, ``Tags``,
``OCR text`` and ``Objects``. WikiDiverse may store that dict as a string
holding a Python literal; :func:`parse_image_desc` reads it safely.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from typing import Any

from tools.clues.base import Clue, empty_clue

SOURCE = "precomputed"


def parse_image_desc(value: Any) -> dict | None:
    """Return the description dict of ``value`` (a dict, a JSON string or a Python-literal string).

    Raises ``ValueError`` when a string cannot be read as either; never uses ``eval``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, dict):
                return parsed
        raise ValueError("image description is a string that is neither JSON nor a Python dict literal")
    raise ValueError(f"image description must be a dict or a string, not {type(value).__name__}")


def _split(text: Any) -> list[str]:
    if isinstance(text, list):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text or "").split(";") if t.strip()]


def precomputed_clue(clue_type: str, desc: dict) -> Clue:
    """The ``clue_type`` clue read from a precomputed description dict."""
    if clue_type == "ocr":
        text = " ".join(str(desc.get("OCR text") or "").split())
        return Clue("ocr", text, SOURCE, {"field": "OCR text"})
    if clue_type == "objects":
        objects = desc.get("Objects") or []
        names = [str(o.get("object_name", "")).strip() for o in objects if isinstance(o, dict)]
        counts = Counter(n for n in names if n)
        text = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items())
        return Clue("objects", text, SOURCE, {"field": "Objects", "counts": dict(counts)})
    if clue_type == "scene":
        tags = _split(desc.get("Tags"))
        return Clue("scene", ", ".join(tags), SOURCE, {"field": "Tags"})
    if clue_type == "caption":
        caption = str(desc.get("Caption") or "").strip()
        dense = [d for d in dict.fromkeys(_split(desc.get("Dense Captions"))) if d != caption]
        text = "; ".join([caption] * bool(caption) + dense[:4])
        return Clue("caption", text, SOURCE, {"field": "Caption + Dense Captions"})
    return empty_clue(clue_type, f"unknown clue type {clue_type!r}")


def describe_all(desc: dict) -> str:
    """All precomputed clue texts joined: what the image shows, as text."""
    parts = [precomputed_clue(t, desc).text for t in ("caption", "objects", "scene", "ocr")]
    return ". ".join(p for p in parts if p)
