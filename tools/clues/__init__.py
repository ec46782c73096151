"""Visual clues: one tool per clue type behind one small interface.

``extract_clue(clue_type, image=..., image_desc=..., ctx=..., gathered=...)``
returns a :class:`Clue`. When the record carries precomputed image
descriptions (WikiMEL's ``mention_imgdesc_Azure``) and the context allows it,
they are used instead of running a tool, so benchmarks without image files
still exercise the clue rounds. Otherwise the tool for the type runs on the
image file: ``tools/clues/{ocr,objects,scene,caption}.py``, each exposing
``extract(image_path, ctx, gathered) -> Clue``.
"""

from __future__ import annotations

import importlib
from typing import Any

from tools.clues.base import Clue, empty_clue
from tools.clues.precomputed import precomputed_clue

__all__ = ["Clue", "extract_clue", "empty_clue"]


def extract_clue(clue_type: str, *, image: str | None, image_desc: dict | None, ctx: Any,
                 gathered: dict[str, Clue] | None = None) -> Clue:
    """Return the ``clue_type`` clue of an image (precomputed descriptions first, then the tool)."""
    gathered = gathered or {}
    if image_desc and getattr(ctx, "use_precomputed_clues", True):
        clue = precomputed_clue(clue_type, image_desc)
        if clue.text or not image:
            return clue
    if not image:
        return empty_clue(clue_type, "no image")
    module = importlib.import_module(f"tools.clues.{clue_type}")
    return module.extract(image, ctx, gathered)
