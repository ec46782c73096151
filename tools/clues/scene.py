"""Scene clue: where the picture was taken (indoor/outdoor, kind of place).

``ctx.scene_model``:

* ``clip:<hub id | local dir>`` — zero-shot classification with a CLIP-family
  model over the place labels in ``tools/clues/data/place_labels.tsv`` (a
  short Places365-like list, each tagged indoor/outdoor); indoor/outdoor is
  the summed probability of each group.
* ``embedded`` (default, offline) — a *heuristic*: the place-like classes of
  the ImageNet EfficientNet-Lite0 classifier
  (``tools/clues/data/imagenet_places.tsv``) plus simple colour statistics
  (sky-blue and vegetation-green fractions, a plain light background). It is
  labelled as such in ``source``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tools.clues.base import Clue
from tools.clues.image_io import load_image
from tools.specs import parse_spec

PROVIDERS = ("embedded", "clip")
DATA_DIR = Path(__file__).parent / "data"
PROMPT = "a photo of a {}."
EMBEDDED_SOURCE = "heuristic: imagenet-efficientnet-lite0 place-like classes + colour statistics"
PLACE_MIN_PROB = 0.05  # embedded: summed place-class probability needed to name a place


def extract(image_path: str, ctx: Any, gathered: dict[str, Clue]) -> Clue:
    """The ``scene`` clue of ``image_path`` with ``ctx.scene_model``."""
    parsed = parse_spec(getattr(ctx, "scene_model", "embedded"), setting="scene_model", providers=PROVIDERS)
    img = load_image(image_path)
    if parsed.provider == "clip":
        return _clip(img, parsed.name)
    return _embedded(img, image_path)


def _read_tsv(name: str) -> tuple[tuple[str, str], ...]:
    rows = []
    for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, _, where = line.partition("\t")
            rows.append((label.strip(), where.strip() or "unknown"))
    return tuple(rows)


@lru_cache(maxsize=1)
def place_labels() -> tuple[tuple[str, str], ...]:
    """(label, 'indoor' | 'outdoor') pairs for zero-shot scene recognition."""
    return _read_tsv("place_labels.tsv")


# ---- clip zero-shot ----------------------------------------------------------------

@lru_cache(maxsize=4)
def _label_embeddings(name: str) -> np.ndarray:
    from tools.verifiers.clip import embed_texts, load_clip

    model, processor = load_clip(name, setting="scene_model")
    return embed_texts(model, processor, [PROMPT.format(label) for label, _ in place_labels()])


def _clip(img, name: str) -> Clue:
    from tools.verifiers.clip import embed_images, load_clip

    model, processor = load_clip(name, setting="scene_model")
    image_vec = embed_images(model, processor, [img])[0]
    sims = _label_embeddings(name) @ image_vec
    logit_scale = getattr(model, "logit_scale", None)
    logits = (float(logit_scale.detach().exp()) if logit_scale is not None else 100.0) * sims
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    labels = place_labels()
    groups = {"indoor": 0.0, "outdoor": 0.0}
    for (_, where), p in zip(labels, probs):
        groups[where] = groups.get(where, 0.0) + float(p)
    setting = max(groups, key=groups.get)
    top = [(labels[i][0], float(probs[i])) for i in np.argsort(-probs)[:3]]
    text = f"{setting}; " + ", ".join(label for label, _ in top)
    return Clue("scene", text, f"clip:{name} zero-shot over {len(labels)} place labels",
                {"setting": setting, "setting_probability": {k: round(v, 4) for k, v in groups.items()},
                 "places": [{"label": label, "probability": round(p, 4)} for label, p in top]})


# ---- embedded heuristic ------------------------------------------------------------

def image_statistics(img) -> dict[str, float]:
    """Colour statistics of an RGB image (fractions in [0, 1], on a 128-px thumbnail)."""
    small = img.copy()
    small.thumbnail((128, 128))
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    top = slice(0, max(1, rgb.shape[0] // 3))
    sky = ((hue >= 185) & (hue <= 240) & (sat > 0.15) & (sat < 0.85) & (val > 0.6)) | ((sat < 0.08) & (val > 0.85))
    green = (hue >= 70) & (hue <= 170) & (sat > 0.2) & (val > 0.2)
    light_plain = (sat < 0.08) & (val > 0.9)
    return {
        "brightness": float(val.mean()),
        "saturation": float(sat.mean()),
        "sky_in_upper_third": float(sky[top].mean()),
        "vegetation": float(green.mean()),
        "plain_light_background": float(light_plain.mean()),
    }


@lru_cache(maxsize=1)
def _imagenet_places() -> dict[int, str]:
    from tools.clues.imagenet import imagenet_labels

    index = {label: i for i, label in enumerate(imagenet_labels())}
    return {index[label]: where for label, where in _read_tsv("imagenet_places.tsv") if label in index}


def _embedded(img, image_path: str) -> Clue:
    from tools.clues.imagenet import classify, imagenet_labels

    stats = image_statistics(img)
    probs = classify(image_path)
    places = _imagenet_places()
    labels = imagenet_labels()
    ranked = sorted(places, key=lambda i: -probs[i])
    found = [(labels[i], float(probs[i]), places[i]) for i in ranked[:3] if probs[i] >= PLACE_MIN_PROB]
    votes = {"indoor": sum(float(probs[i]) for i, w in places.items() if w == "indoor"),
             "outdoor": sum(float(probs[i]) for i, w in places.items() if w == "outdoor")}
    cues = []
    if stats["plain_light_background"] > 0.6:
        setting, cues = "graphic or document (plain light background)", ["plain light background"]
    else:
        colour = {"indoor": 0.0, "outdoor": 0.0}
        if stats["sky_in_upper_third"] > 0.3:
            colour["outdoor"] += 0.3
            cues.append("sky-like colours in upper third")
        if stats["vegetation"] > 0.25:
            colour["outdoor"] += 0.2
            cues.append("vegetation colours")
        total = {k: votes[k] + colour[k] for k in votes}
        best = max(total, key=total.get)
        if votes[best] >= 0.15:
            setting = best
        elif total[best] >= 0.15:
            setting = f"probably {best}"  # colour statistics only
        else:
            setting = "indoor or outdoor unclear"
    parts = [setting]
    if found:
        parts.append(", ".join(label for label, _, _ in found))
    if stats["brightness"] < 0.25:
        parts.append("dark")
    return Clue("scene", "; ".join(parts), EMBEDDED_SOURCE,
                {"setting": setting, "evidence": {k: round(v, 4) for k, v in votes.items()}, "cues": cues,
                 "places": [{"label": label, "probability": round(p, 4), "setting": w} for label, p, w in found],
                 "statistics": {k: round(v, 4) for k, v in stats.items()}})
