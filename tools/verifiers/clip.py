"""CLIP verification: cosine of the image and the entity's text in CLIP space.

``verifier='clip:<hub id | local dir>'`` (e.g. ``clip:openai/clip-vit-base-patch32``).
The model and processor load lazily through transformers ``AutoModel`` /
``AutoProcessor`` (``CLIPModel`` / ``CLIPProcessor`` for CLIP checkpoints)
and are cached per name; :func:`load_clip` is shared with the scene tool.
The entity text is "name. description", truncated to the text encoder's
maximum length (77 tokens for CLIP). The reference threshold is tau = 0.31.

CLIP needs an image file (``needs_image``): for a record with only a
precomputed description, the verify node uses the embedded text scorer and
its own threshold instead (CLIP's text-to-text cosines are not comparable with
its image-to-text ones). Called directly without an image, ``score`` does the
same; with neither image nor description it is 0.0. An image it cannot use is
an ``InputError`` naming the file (the verify node notes it and goes on).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np

from tools.clues.image_io import ImageToolError, describe_exc, image_key, load_image
from tools.errors import InputError, ModelError
from tools.texts import entity_text
from tools.verifiers.text import TextEmbeddingScorer

_lock = threading.Lock()


def load_clip(name: str, setting: str = "verifier"):
    """(model, processor) of a CLIP-family checkpoint, in eval mode on CPU (loaded once per name).

    ``setting`` names the context field in error messages (``verifier`` or ``scene_model``).
    """
    with _lock:
        try:
            return _load_clip(name)
        except ModelError as exc:
            raise ModelError(f"{setting} {exc}") from exc.__cause__


@lru_cache(maxsize=4)
def _load_clip(name: str):
    try:
        from transformers import AutoModel, AutoProcessor
    except ImportError as exc:
        raise ModelError(f"'clip:{name}' needs transformers and torch") from exc
    try:
        model = AutoModel.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
    except Exception as exc:
        raise ModelError(f"'clip:{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ModelError(f"'clip:{name}' is a {type(model).__name__}, not an image-text (CLIP-like) model")
    return model.eval(), processor


def _features(output) -> np.ndarray:
    """Unit-normalised embeddings from ``get_*_features`` (a tensor in transformers 4, a model output in 5)."""
    tensor = output if hasattr(output, "detach") else output.pooler_output
    vecs = tensor.detach().float().numpy()
    return vecs / np.linalg.norm(vecs, axis=-1, keepdims=True).clip(min=1e-12)


def max_text_length(model, processor) -> int:
    """Most tokens the text encoder takes (77 for CLIP)."""
    text_config = getattr(model.config, "text_config", None)
    limit = getattr(text_config, "max_position_embeddings", None)
    tokenizer = getattr(processor, "tokenizer", None)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    candidates = [x for x in (limit, tok_limit) if isinstance(x, int) and 0 < x < 100_000]
    return min(candidates) if candidates else 77


def embed_images(model, processor, images: list) -> np.ndarray:
    """Unit image embeddings of RGB ``PIL.Image`` objects."""
    import torch

    inputs = processor(images=images, return_tensors="pt")
    with torch.inference_mode():
        return _features(model.get_image_features(pixel_values=inputs["pixel_values"]))


def embed_texts(model, processor, texts: list[str]) -> np.ndarray:
    """Unit text embeddings, each text truncated to the encoder's maximum length."""
    import torch

    inputs = processor(text=texts, return_tensors="pt", padding="max_length" if _pads_to_max(model) else True,
                       truncation=True, max_length=max_text_length(model, processor))
    keep = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    if getattr(model.config, "model_type", "") in ("siglip", "siglip2"):
        keep.pop("attention_mask", None)
    with torch.inference_mode():
        return _features(model.get_text_features(**keep))


def _pads_to_max(model) -> bool:
    # SigLIP was trained on max-length padded text
    return getattr(model.config, "model_type", "") in ("siglip", "siglip2")


class ClipScorer:
    """``score`` = cosine(CLIP image embedding, CLIP text embedding of the entity)."""

    default_threshold = 0.31
    needs_image = True

    def __init__(self, name: str):
        self.model_name = name
        self.name = f"clip:{name}"
        self._image_cache: dict[tuple, np.ndarray] = {}
        self._text_cache: dict[str, np.ndarray] = {}
        self._cache_lock = threading.Lock()

    def _model(self):
        return load_clip(self.model_name)

    def _cached(self, cache: dict, key: Any, limit: int, compute: Any, image: str | None = None) -> np.ndarray:
        """``cache[key]``, computing it with ``compute()`` on a miss.

        A failure on an ``image`` is an ``ImageToolError`` naming it (the run goes on without
        verification); on a text it is a ``ModelError``.
        """
        with self._cache_lock:
            if key in cache:
                return cache[key]
        try:
            vec = compute()
        except (InputError, ModelError):
            raise
        except Exception as exc:
            if image is not None:
                raise ImageToolError(f"verifier '{self.name}'", describe_exc(exc), image) from exc
            raise ModelError(f"verifier '{self.name}' failed on text: {describe_exc(exc)}") from exc
        with self._cache_lock:
            if len(cache) > limit:
                cache.clear()
            cache[key] = vec
        return vec

    def image_embedding(self, image: str) -> np.ndarray:
        """Unit CLIP embedding of an image file (cached per file version; the file is read on a miss only)."""
        def compute() -> np.ndarray:
            img = load_image(image)
            model, processor = self._model()
            return embed_images(model, processor, [img])[0]

        return self._cached(self._image_cache, image_key(image), 4096, compute, image)

    def text_embedding(self, text: str) -> np.ndarray:
        """Unit CLIP embedding of a text (cached)."""
        def compute() -> np.ndarray:
            model, processor = self._model()
            return embed_texts(model, processor, [text])[0]

        return self._cached(self._text_cache, text, 50_000, compute)

    def score(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> float:
        if not image:
            if image_desc:
                return TextEmbeddingScorer().score(entity, image=None, image_desc=image_desc, ctx=ctx)
            return 0.0
        text = entity_text(entity)
        if not text:
            return 0.0
        return float(np.clip(self.image_embedding(image) @ self.text_embedding(text), -1.0, 1.0))
