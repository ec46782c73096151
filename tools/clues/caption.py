"""Caption clue: one sentence saying what the image shows.

``ctx.caption_model``:

* ``openai:<vision model>`` — an OpenAI-compatible vision chat model (through
  ``tools.models.load_chat_model``); the image goes as a base64 ``data:`` URL
  in an ``image_url`` content block. A ``BaseChatModel`` object works too.
* ``huggingface:<hub id | local dir>`` — a transformers captioner (BLIP, GIT,
  ViT-GPT2, Florence-2, small VLMs...) through the ``image-to-text`` pipeline
  (``image-text-to-text`` on transformers 5).
* ``embedded`` (default, offline) — *composed*, not generated: the OCR,
  objects and scene clues (those already gathered for the image, the missing
  ones run now) written as one line, e.g.
  ``a picture with: 1 face; main subject: suit; scene: indoor; text: 'NATO'``.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from tools.clues.base import Clue
from tools.clues.image_io import ImageToolError, describe_exc, image_data_url, load_image
from tools.errors import ModelError
from tools.specs import parse_spec

PROVIDERS = ("embedded", "openai", "huggingface")
PROMPT = ("Describe this image in one short factual sentence for identifying who or what it shows: "
          "people, objects, place, and any visible text.")
MAX_NEW_TOKENS = 60
COMPOSED_FROM = ("objects", "scene", "ocr")
_lock = threading.Lock()


def extract(image_path: str, ctx: Any, gathered: dict[str, Clue]) -> Clue:
    """Caption ``image_path`` with ``ctx.caption_model``."""
    spec = getattr(ctx, "caption_model", "embedded")
    if not isinstance(spec, str):  # a chat model object passed from Python
        return _chat(image_path, spec, ctx)
    parsed = parse_spec(spec, setting="caption_model", providers=PROVIDERS)
    if parsed.provider == "openai":
        return _chat(image_path, spec, ctx)
    if parsed.provider == "huggingface":
        return _huggingface(image_path, parsed.name)
    return compose(image_path, ctx, gathered)


# ---- vision chat model ------------------------------------------------------------

def _chat(image_path: str, spec: Any, ctx: Any) -> Clue:
    from langchain_core.messages import HumanMessage

    from tools.models import describe, invoke_model, load_chat_model

    url = image_data_url(image_path)
    model = load_chat_model(spec, setting="caption_model", base_url=getattr(ctx, "openai_base_url", None),
                            api_key=getattr(ctx, "openai_api_key", None), temperature=0.0,
                            max_tokens=MAX_NEW_TOKENS * 2, timeout=getattr(ctx, "request_timeout", 60.0),
                            max_retries=getattr(ctx, "max_retries", 3))
    message = HumanMessage(content=[{"type": "text", "text": PROMPT},
                                    {"type": "image_url", "image_url": {"url": url}}])
    reply = invoke_model(model, [message], spec=spec, setting="caption_model")
    text = " ".join((reply[0] if isinstance(reply, tuple) else reply).split())  # (text, usage) or text
    return Clue("caption", text, f"caption_model {describe(spec)}", {"prompt": PROMPT})


# ---- transformers captioner -------------------------------------------------------

@lru_cache(maxsize=2)
def load_captioner(name: str):
    """A transformers captioning pipeline for ``name`` (hub id or local dir)."""
    try:
        from transformers import pipeline
        from transformers.pipelines import SUPPORTED_TASKS
    except ImportError as exc:
        raise ModelError("caption_model 'huggingface:...' needs transformers and torch") from exc
    task = "image-to-text" if "image-to-text" in SUPPORTED_TASKS else "image-text-to-text"
    try:
        return pipeline(task, model=name, device="cpu")
    except Exception as exc:
        raise ModelError(f"caption_model 'huggingface:{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc


def _huggingface(image_path: str, name: str) -> Clue:
    img = load_image(image_path)
    with _lock:
        captioner = load_captioner(name)
    try:
        if getattr(getattr(captioner, "processor", None), "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image", "image": img},
                                                     {"type": "text", "text": PROMPT}]}]
            out = captioner(text=messages, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
        elif captioner.task == "image-to-text":
            out = captioner(img, max_new_tokens=MAX_NEW_TOKENS)
        else:
            out = captioner(images=img, text="", max_new_tokens=MAX_NEW_TOKENS)
    except Exception as exc:
        raise ImageToolError(f"caption tool 'huggingface:{name}'", describe_exc(exc), image_path) from exc
    text = _generated_text(out)
    return Clue("caption", text, f"huggingface:{name} ({captioner.task})", {})


def _generated_text(out: Any) -> str:
    """The generated string of a pipeline result (list of dicts, possibly nested or chat-shaped)."""
    while isinstance(out, list) and out:
        out = out[0]
    if isinstance(out, dict):
        out = out.get("generated_text", "")
        if isinstance(out, list):  # chat-shaped: the last message
            out = out[-1].get("content", "") if out and isinstance(out[-1], dict) else ""
    return " ".join(str(out or "").split())


# ---- composed (embedded) ------------------------------------------------------------

def compose(image_path: str, ctx: Any, gathered: dict[str, Clue]) -> Clue:
    """The offline caption: the other clues of the image written as one line."""
    from tools.clues import extract_clue

    if any(t not in gathered for t in COMPOSED_FROM):
        load_image(image_path)  # an unusable image fails the caption itself, not just its parts
    clues = {}
    skipped = []
    for clue_type in COMPOSED_FROM:
        clue = gathered.get(clue_type)
        if clue is None:
            try:
                clue = extract_clue(clue_type, image=image_path, image_desc=None, ctx=ctx, gathered=gathered)
            except ImageToolError as exc:  # one tool defeated by this image: compose from the others
                clue = Clue(clue_type, "", "none", {"reason": str(exc)})
                skipped.append(str(exc))
        clues[clue_type] = clue
    parts = []
    if clues["objects"].text:
        parts.append(clues["objects"].text)
    scene = _without(clues["scene"].text, clues["objects"].text)
    if scene:
        parts.append(f"scene: {scene}")
    if clues["ocr"].text:
        parts.append(f"text: '{_shorten(clues['ocr'].text)}'")
    text = ("a picture with: " + "; ".join(parts)) if parts else ""
    used = ", ".join(f"{t} ({c.source})" for t, c in clues.items() if c.text)
    details = {"composed_from": used or "nothing found"}
    if skipped:
        details["skipped"] = skipped
    return Clue("caption", text, "composed from the other clues (not a captioning model)", details)


def _without(scene: str, objects: str) -> str:
    """``scene`` minus the place names the objects clue already says (both come from one classifier)."""
    kept = []
    for group in scene.split("; "):
        items = [x for x in group.split(", ") if x and x not in objects]
        if items:
            kept.append(", ".join(items))
    return "; ".join(kept)


def _shorten(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
