"""OCR clue: the text written in the image.

``ctx.ocr_engine``:

* ``rapidocr`` (default) — PP-OCR detection + recognition ONNX models shipped
  inside the ``rapidocr`` wheel, run with onnxruntime; offline.
* ``tesseract`` or ``tesseract:<langs>`` (e.g. ``tesseract:eng+deu``) — the
  Tesseract binary through ``pytesseract``, when both are installed.

Lines below ``OCR_MIN_CONFIDENCE`` (or ``ctx.ocr_min_confidence`` when the
context has it) are dropped; the rest are read top-to-bottom, left-to-right.
``Clue.details["lines"]`` holds each line's text, confidence and box
``[x0, y0, x1, y1]`` in pixels.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from tools.clues.base import Clue
from tools.clues.image_io import ImageToolError, describe_exc, load_image
from tools.errors import ConfigError, ModelError

OCR_MIN_CONFIDENCE = 0.7
ENGINES = ("rapidocr", "tesseract")
_lock = threading.Lock()


def parse_engine(spec: Any) -> tuple[str, str]:
    """Split ``ocr_engine`` into (engine, option); ``ConfigError`` naming the setting if unknown."""
    engine, _, option = str(spec or "rapidocr").strip().partition(":")
    engine = engine.lower()
    if engine not in ENGINES:
        raise ConfigError(f"ocr_engine: unknown engine {spec!r}; choose from {list(ENGINES)}")
    return engine, option.strip()


def extract(image_path: str, ctx: Any, gathered: dict[str, Clue]) -> Clue:
    """Run the configured OCR engine on ``image_path`` and return the ``ocr`` clue."""
    engine, option = parse_engine(getattr(ctx, "ocr_engine", "rapidocr"))
    floor = float(getattr(ctx, "ocr_min_confidence", OCR_MIN_CONFIDENCE))
    img = load_image(image_path)
    lines = _rapidocr_lines(img) if engine == "rapidocr" else _tesseract_lines(img, option or "eng")
    kept = reading_order([ln for ln in lines if ln["confidence"] >= floor and _has_word(ln["text"])])
    source = "rapidocr (PP-OCR onnx)" if engine == "rapidocr" else f"tesseract ({option or 'eng'})"
    return Clue("ocr", " ".join(ln["text"] for ln in kept), source,
                {"engine": engine, "min_confidence": floor, "lines": kept, "dropped": len(lines) - len(kept)})


def _has_word(text: str) -> bool:
    """True when at least half of ``text``'s characters are letters or digits (drops '***', '**K', '|||')."""
    chars = [ch for ch in text if not ch.isspace()]
    return bool(chars) and sum(ch.isalnum() for ch in chars) * 2 >= len(chars)


def reading_order(lines: list[dict]) -> list[dict]:
    """Sort lines into rows (vertical centres within half a line height) top to bottom, then left to right."""
    rows: list[list[dict]] = []
    for line in sorted(lines, key=lambda ln: (ln["box"][1] + ln["box"][3]) / 2):
        centre = (line["box"][1] + line["box"][3]) / 2
        height = max(1.0, line["box"][3] - line["box"][1])
        if rows:
            last = rows[-1][-1]
            last_centre = (last["box"][1] + last["box"][3]) / 2
            if abs(centre - last_centre) <= 0.5 * max(height, last["box"][3] - last["box"][1]):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln["box"][0])]


# ---- rapidocr -----------------------------------------------------------------

@lru_cache(maxsize=1)
def _rapidocr_engine():
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise ConfigError("ocr_engine 'rapidocr' needs the package rapidocr and onnxruntime "
                          "(pip install rapidocr onnxruntime)") from exc
    try:
        return RapidOCR(params={"Global.log_level": "error"})
    except Exception as exc:
        raise ModelError(f"ocr_engine 'rapidocr' could not be loaded: {type(exc).__name__}: {exc}") from exc


def _rapidocr_lines(img) -> list[dict]:
    import numpy as np

    with _lock:
        engine = _rapidocr_engine()
    try:
        # BGR array: what rapidocr expects from OpenCV-style inputs
        result = engine(np.ascontiguousarray(np.asarray(img)[:, :, ::-1]))
    except Exception as exc:  # e.g. ResizeImgError (empty message) on a strip of a picture
        raise ImageToolError("ocr tool 'rapidocr'", describe_exc(exc)) from exc
    boxes, texts, scores = getattr(result, "boxes", None), getattr(result, "txts", None), getattr(result, "scores", None)
    if boxes is None or texts is None:
        return []
    lines = []
    for box, text, score in zip(boxes, texts, scores):
        xs, ys = [float(p[0]) for p in box], [float(p[1]) for p in box]
        lines.append({"text": str(text).strip(), "confidence": round(float(score), 4),
                      "box": [min(xs), min(ys), max(xs), max(ys)]})
    return lines


# ---- tesseract ----------------------------------------------------------------

def _tesseract_lines(img, lang: str) -> list[dict]:
    """Words from ``pytesseract.image_to_data`` grouped into lines (confidence = mean word confidence)."""
    try:
        import pytesseract
    except ImportError as exc:
        raise ConfigError("ocr_engine 'tesseract' needs pytesseract and the tesseract binary "
                          "(pip install pytesseract; apt-get install tesseract-ocr)") from exc
    try:
        data = pytesseract.image_to_data(img, lang=lang, output_type=pytesseract.Output.DICT)
    except getattr(pytesseract, "TesseractNotFoundError", ()) as exc:  # no binary: cannot run on any image
        raise ModelError(f"ocr_engine 'tesseract:{lang}' cannot run: {describe_exc(exc)}") from exc
    except Exception as exc:
        if "language" in str(exc).lower() or "traineddata" in str(exc).lower():  # missing language data
            raise ModelError(f"ocr_engine 'tesseract:{lang}' cannot run: {describe_exc(exc)}") from exc
        raise ImageToolError(f"ocr tool 'tesseract:{lang}'", describe_exc(exc)) from exc
    grouped: dict[tuple, list[int]] = {}
    for i, word in enumerate(data.get("text", [])):
        try:
            conf = float(data["conf"][i])
        except (TypeError, ValueError):
            conf = -1.0
        if not str(word).strip() or conf < 0:
            continue
        key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
        grouped.setdefault(key, []).append(i)
    lines = []
    for idx in grouped.values():
        x0 = min(data["left"][i] for i in idx)
        y0 = min(data["top"][i] for i in idx)
        x1 = max(data["left"][i] + data["width"][i] for i in idx)
        y1 = max(data["top"][i] + data["height"][i] for i in idx)
        conf = sum(float(data["conf"][i]) for i in idx) / len(idx) / 100.0
        lines.append({"text": " ".join(str(data["text"][i]).strip() for i in idx),
                      "confidence": round(conf, 4), "box": [float(x0), float(y0), float(x1), float(y1)]})
    return lines
