"""Objects clue: what is in the image, with counts.

``ctx.object_model``:

* ``embedded`` (default, offline) — OpenCV Haar cascades count frontal faces
  and people (full/upper body), and the ImageNet EfficientNet-Lite0
  classifier (``tools/clues/imagenet.py``) names the picture's likely main
  subject (top-3). The classifier does *not* detect or count objects; the
  clue's ``source`` says so.
* ``huggingface:<hub id | local dir>`` — a transformers detector. Closed-set
  detectors (DETR, YOLOS, RT-DETR, ...) run as the ``object-detection``
  pipeline; open-vocabulary ones (OWL-ViT, OWLv2) as
  ``zero-shot-object-detection`` over ``tools/clues/data/object_labels.txt``
  (or ``ctx.object_labels`` when the context has it).

Detections below the confidence floor (``ctx.object_min_confidence`` when
present; else 0.5 for detectors, 0.1 for zero-shot, 0.05 for the classifier)
are dropped. ``details`` holds counts, best confidence per name and boxes.
"""

from __future__ import annotations

import threading
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from tools.clues.base import Clue
from tools.clues.image_io import ImageToolError, describe_exc, load_image
from tools.errors import ModelError
from tools.specs import parse_spec

PROVIDERS = ("embedded", "huggingface")
DETECTION_MIN_CONFIDENCE = 0.5
ZERO_SHOT_MIN_CONFIDENCE = 0.1
CLASSIFIER_MIN_PROB = 0.05
EMBEDDED_SOURCE = ("opencv-haar faces/people + imagenet-efficientnet-lite0 top-3 "
                   "(main subject, a classifier, not a detector)")
LABELS_FILE = Path(__file__).parent / "data" / "object_labels.txt"
_lock = threading.Lock()


def extract(image_path: str, ctx: Any, gathered: dict[str, Clue]) -> Clue:
    """Detect or name the objects of ``image_path`` with ``ctx.object_model``."""
    spec = getattr(ctx, "object_model", "embedded")
    parsed = parse_spec(spec, setting="object_model", providers=PROVIDERS)
    img = load_image(image_path)
    if parsed.provider == "huggingface":
        return _huggingface(img, parsed.name, ctx)
    return _embedded(img, image_path, ctx)


def summarize(counts: Counter) -> str:
    """``{'person': 2, 'tie': 1}`` -> ``'2 persons, 1 tie'`` (most frequent first)."""
    parts = []
    for name, n in counts.most_common():
        parts.append(f"{n} {name}" if n == 1 else f"{n} {_plural(name)}")
    return ", ".join(parts)


def _plural(name: str) -> str:
    irregular = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice"}
    if name in irregular:
        return irregular[name]
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


# ---- embedded: Haar cascades + ImageNet classifier --------------------------------

@lru_cache(maxsize=1)
def _cascades() -> dict:
    try:
        import cv2
    except ImportError as exc:
        raise ModelError("object_model 'embedded' needs OpenCV (pip install opencv-python-headless)") from exc
    cascades = {}
    for key, fname in (("face", "haarcascade_frontalface_alt2.xml"), ("fullbody", "haarcascade_fullbody.xml"),
                       ("upperbody", "haarcascade_upperbody.xml")):
        path = str(Path(cv2.data.haarcascades) / fname)
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise ModelError(f"object_model 'embedded': OpenCV cascade not found or unreadable: {path}")
        cascades[key] = cascade
    return cascades


def detect_faces_people(img) -> dict[str, list[list[int]]]:
    """Boxes ``[x0, y0, x1, y1]`` of frontal faces and of people (full or upper bodies) found by Haar cascades."""
    import numpy as np

    with _lock:
        cascades = _cascades()  # ModelError with the install hint when OpenCV is missing
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY))
    side = min(gray.shape)
    small = max(24, side // 15)
    with _lock:  # one CascadeClassifier object is not safe to share between threads
        faces = cascades["face"].detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(small, small))
        full = cascades["fullbody"].detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                                     minSize=(max(24, side // 12), max(48, side // 6)))
        # the upper-body cascade fires on textures: demand many neighbours
        upper = cascades["upperbody"].detectMultiScale(gray, scaleFactor=1.1, minNeighbors=10,
                                                       minSize=(max(32, side // 8), max(32, side // 8)))
    people = _merge([*_boxes(full), *_boxes(upper)])
    return {"faces": _boxes(faces), "people": people}


def _boxes(rects) -> list[list[int]]:
    return [[int(x), int(y), int(x + w), int(y + h)] for (x, y, w, h) in (rects if len(rects) else [])]


def _merge(boxes: list[list[int]], overlap: float = 0.5) -> list[list[int]]:
    """Drop boxes overlapping an earlier (larger) one by more than ``overlap`` of the smaller area."""
    kept: list[list[int]] = []
    for box in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        area = (box[2] - box[0]) * (box[3] - box[1])
        if all(_intersection(box, k) <= overlap * area for k in kept):
            kept.append(box)
    return kept


def _intersection(a: list[int], b: list[int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _embedded(img, image_path: str, ctx: Any) -> Clue:
    from tools.clues.imagenet import classify, top_classes

    found = detect_faces_people(img)
    floor = getattr(ctx, "object_min_confidence", None)
    floor = CLASSIFIER_MIN_PROB if floor is None else float(floor)
    subject = top_classes(classify(image_path), k=3, min_prob=floor)
    counts = Counter({"face": len(found["faces"]), "person": len(found["people"])})
    counts = Counter({k: v for k, v in counts.items() if v})
    parts = [summarize(counts)] if counts else []
    if subject:
        parts.append("main subject: " + ", ".join(label for label, _ in subject))
    details = {"counts": dict(counts), "faces": found["faces"], "people": found["people"],
               "main_subject": [{"label": label, "probability": round(p, 4)} for label, p in subject],
               "classifier": "efficientnet-lite0 (ImageNet-1k)"}
    return Clue("objects", "; ".join(parts), EMBEDDED_SOURCE, details)


# ---- transformers detectors ------------------------------------------------------

def object_labels(ctx: Any) -> list[str]:
    """Labels for open-vocabulary detectors: ``ctx.object_labels`` or the shipped list."""
    labels = getattr(ctx, "object_labels", None)
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")]
    if labels:
        return [str(x).strip() for x in labels if str(x).strip()]
    return [x.strip() for x in LABELS_FILE.read_text(encoding="utf-8").splitlines() if x.strip()]


@lru_cache(maxsize=4)
def load_detector(name: str):
    """A transformers detection pipeline for ``name`` (hub id or local dir); returns (pipeline, zero_shot)."""
    try:
        from transformers import AutoConfig, pipeline
        from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES
    except ImportError as exc:
        raise ModelError("object_model 'huggingface:...' needs transformers and torch") from exc
    try:
        config = AutoConfig.from_pretrained(name)
        zero_shot = config.model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES
        task = "zero-shot-object-detection" if zero_shot else "object-detection"
        return pipeline(task, model=name, device="cpu"), zero_shot
    except Exception as exc:
        raise ModelError(f"object_model 'huggingface:{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc


def _huggingface(img, name: str, ctx: Any) -> Clue:
    with _lock:
        detector, zero_shot = load_detector(name)
    default_floor = ZERO_SHOT_MIN_CONFIDENCE if zero_shot else DETECTION_MIN_CONFIDENCE
    floor = getattr(ctx, "object_min_confidence", None)
    floor = default_floor if floor is None else float(floor)
    try:
        if zero_shot:
            raw = detector(img, candidate_labels=object_labels(ctx), threshold=floor)
        else:
            raw = detector(img, threshold=floor)
    except Exception as exc:
        raise ImageToolError(f"objects tool 'huggingface:{name}'", describe_exc(exc)) from exc
    detections = [{"label": str(d["label"]), "confidence": round(float(d["score"]), 4),
                   "box": [float(d["box"][k]) for k in ("xmin", "ymin", "xmax", "ymax")]}
                  for d in raw if float(d["score"]) >= floor]
    counts = Counter(d["label"] for d in detections)
    best: dict[str, float] = {}
    for d in detections:
        best[d["label"]] = max(best.get(d["label"], 0.0), d["confidence"])
    task = "zero-shot-object-detection" if zero_shot else "object-detection"
    return Clue("objects", summarize(counts), f"huggingface:{name} ({task})",
                {"counts": dict(counts), "confidence": best, "detections": detections, "min_confidence": floor})
