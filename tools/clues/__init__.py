"""Visual clues: one tool per clue type behind one small interface.

``extract_clue(clue_type, image=..., image_desc=..., ctx=..., gathered=...)``
returns a :class:`Clue`. When the record carries precomputed image
descriptions (WikiMEL's ``mention_imgdesc_Azure``) and the context allows it,
they are used instead of running a tool, so benchmarks without image files
still exercise the clue rounds. Otherwise the tool for the type runs on the
image file: ``tools/clues/{ocr,objects,scene,caption}.py``, each exposing
``extract(image_path, ctx, gathered) -> Clue``.

A tool that cannot use the image (the file is unreadable, or the tool fails
on it) raises :class:`ImageToolError` naming the tool and the image, with a
message that is never empty; the graph notes it and skips the clue. A model
that cannot be loaded (``ModelError``) or a bad setting (``ConfigError``) is
raised as it is: that stops the run.
"""

from __future__ import annotations

import importlib
from typing import Any

from tools.clues.base import Clue, empty_clue
from tools.clues.image_io import ImageToolError, UnusableImage, describe_exc
from tools.clues.precomputed import precomputed_clue
from tools.errors import ConfigError, ModelError

__all__ = ["Clue", "ImageToolError", "extract_clue", "empty_clue", "tool_name", "failure_note"]

# the Context setting that chooses each clue's tool
TOOL_SETTINGS = {"ocr": "ocr_engine", "objects": "object_model", "scene": "scene_model", "caption": "caption_model"}
TOOL_DEFAULTS = {"ocr": "rapidocr", "objects": "embedded", "scene": "embedded", "caption": "embedded"}


def tool_name(clue_type: str, ctx: Any) -> str:
    """``"ocr tool 'rapidocr'"``: the clue type and the configured tool, for messages."""
    from tools.models import describe

    setting = TOOL_SETTINGS.get(clue_type)
    spec = getattr(ctx, setting, None) if setting else None
    spec = TOOL_DEFAULTS.get(clue_type, "?") if spec is None else spec
    return f"{clue_type} tool '{spec if isinstance(spec, str) else describe(spec)}'"


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
    try:
        return module.extract(image, ctx, gathered)
    except ImageToolError as exc:
        if exc.image:
            raise
        raise exc.with_image(image) from exc
    except UnusableImage as exc:
        raise ImageToolError(tool_name(clue_type, ctx), exc.reason, image) from exc
    except (ConfigError, ModelError):
        raise  # a bad setting or a model that cannot be loaded: not this image's fault
    except Exception as exc:  # anything else the tool tripped on, on this image
        raise ImageToolError(tool_name(clue_type, ctx), describe_exc(exc), image) from exc


def failure_note(clue_type: str, image: str | None, exc: BaseException, ctx: Any = None) -> str:
    """The one-line note of a clue tool that failed on an image: names the tool and the image, never empty."""
    if isinstance(exc, ImageToolError):
        return str(exc.with_image(image))
    return str(ImageToolError(tool_name(clue_type, ctx), describe_exc(exc), image))
