"""Reading image files for the clue tools and verifiers.

Every visual stage opens images through :func:`load_image`, so a missing,
corrupt or unusable file fails the same way: an :class:`UnusableImage` (an
``InputError``) whose message says what is wrong and names the path. The
graph calls it once at its entry (``graph/inputs.py``): an image that fails
there is dropped and the mention is linked on its text (or, with
``strict_image``, the input is refused), so later stages only see images
that load.

What is checked, before anything is decoded: the path is a regular, readable,
non-empty file; the format is one Pillow reads (SVG is named as such); the
size from the header is at most :data:`MAX_PIXELS` pixels, no side is longer
than :data:`MAX_SIDE` and the aspect ratio is at most :data:`MAX_ASPECT`:1.
These limits are this module's own: they do not depend on Pillow's
decompression-bomb limit (a Pillow bomb error is reported the same way). Then
the image is decoded in full (a truncated or corrupt body fails here), turned
upright by its EXIF orientation, and converted to RGB: transparency onto
white, 16-bit and 32-bit integer and float greyscale (``I;16``, ``I``, ``F``)
scaled to 0..255 by their range rather than clipped to white or black.

:class:`ImageToolError` is what a tool raises when it ran and could not use
an image (OCR on an extreme strip, say): the graph notes it and goes on.
:func:`image_data_url` turns an image into the ``data:`` URL that vision chat
models (OpenAI-compatible ``image_url`` content blocks) accept.
"""

from __future__ import annotations

import base64
import io
import os
import re
import stat
import threading
import warnings
from collections import OrderedDict

from PIL import Image, ImageOps, UnidentifiedImageError

from tools.errors import InputError

# images larger than this (pixels) are refused rather than decoded (Pillow's own bomb warning is at 89M)
MAX_PIXELS = 80_000_000
# no side may be longer than this (a 60,000,000x1 strip has few pixels but defeats every tool)
MAX_SIDE = 20_000
# longer side / shorter side: beyond this the picture is a line (rapidocr fails from about 150:1)
MAX_ASPECT = 100
# decoded images up to this many pixels are kept (a few of them) so the entry check and the tools share one decode
CACHE_MAX_PIXELS = 12_000_000
CACHE_SIZE = 4


class UnusableImage(InputError):
    """An image file that cannot be used; ``reason`` says why, ``path`` names it."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"image: {reason}: {path}")


class ImageToolError(InputError):
    """A tool (clue tool or verifier) ran and could not use this image; never a reason to stop a run.

    ``tool`` names the tool, ``image`` the file (filled in by the caller that knows it), ``cause`` what
    went wrong (never empty: the exception type stands in for an empty message).
    """

    def __init__(self, tool: str, cause: str, image: str | None = None):
        self.tool, self.cause, self.image = tool, cause or "failed", image
        where = f" on image {image}" if image else ""
        super().__init__(f"{tool} failed{where}: {self.cause}")

    def with_image(self, image: str | None) -> ImageToolError:
        """The same error naming ``image`` (unchanged when it already names one)."""
        if self.image or not image:
            return self
        return ImageToolError(self.tool, self.cause, image)


def describe_exc(exc: BaseException) -> str:
    """``'Type: message'``, or just ``'Type'`` when the message is empty (never an empty string)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_file(path: str) -> None:
    """Raise :class:`UnusableImage` unless ``path`` is a readable, non-empty regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnusableImage(path, f"file not found (dangling symbolic link to {os.readlink(path)})") from None
        raise UnusableImage(path, "file not found") from None
    except OSError as exc:
        raise UnusableImage(path, f"cannot be read ({exc.strerror or describe_exc(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnusableImage(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise UnusableImage(path, "not a regular file")
    if st.st_size == 0:
        raise UnusableImage(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise UnusableImage(path, "cannot be read (permission denied)")


def check_size(path: str, width: int, height: int) -> None:
    """Raise :class:`UnusableImage` when the image is too large or too elongated to be worth decoding."""
    if width < 1 or height < 1:
        raise UnusableImage(path, f"has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise UnusableImage(path, f"too large ({width}x{height} = {width * height:,} pixels; "
                                  f"the limit is {MAX_PIXELS:,})")
    if max(width, height) > MAX_SIDE:
        raise UnusableImage(path, f"too large ({width}x{height}; a side is over {MAX_SIDE:,} pixels)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UnusableImage(path, f"too elongated to be a picture ({width}x{height}; "
                                  f"aspect ratio over {MAX_ASPECT}:1)")


def _sniff(path: str) -> str:
    """A name for a format Pillow does not read, from the file's first bytes ('' when unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        return ""
    if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in head):
        return "an SVG (vector) file, not a raster image"
    if head.startswith(b"%pdf"):
        return "a PDF file, not an image"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not an image"
    return ""


_cache: OrderedDict[tuple, Image.Image] = OrderedDict()
_cache_lock = threading.Lock()


def load_image(path: str) -> Image.Image:
    """Open ``path`` fully decoded as an upright RGB ``PIL.Image``; :class:`UnusableImage` naming the path otherwise.

    The caller owns the returned image (it may modify it).
    """
    path = os.fspath(path)
    check_file(path)
    key = image_key(path)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key].copy()
    img = _decode(path)
    if img.width * img.height <= CACHE_MAX_PIXELS:
        with _cache_lock:
            _cache[key] = img.copy()
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return img


def _decode(path: str) -> Image.Image:
    try:
        with warnings.catch_warnings():  # our own limits decide; Pillow's bomb warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as exc:  # far over our own limit too: say it in our words
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else describe_exc(exc)
        raise UnusableImage(path, f"too large ({size}; the limit is {MAX_PIXELS:,})") from None
    except UnidentifiedImageError:
        raise UnusableImage(path, _sniff(path) or "not an image format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnusableImage(path, f"not a readable image ({describe_exc(exc)})") from None
    try:
        with opened as img:
            check_size(path, img.width, img.height)
            img.load()
            return to_rgb(upright(img))
    except UnusableImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as exc:
        raise UnusableImage(path, f"not a readable image ({describe_exc(exc)})") from None


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned by its EXIF orientation tag (unchanged when it has none or the tag is unreadable)."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # a damaged EXIF block must not cost the picture
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``: transparent areas become white; wide greyscale is scaled to 0..255 by its range."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _scaled_grey(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")



def _scaled_grey(img: Image.Image) -> Image.Image:
    """An 8-bit 'L' image from a 16/32-bit integer or float one, its value range stretched to 0..255."""
    import numpy as np

    try:
        arr = np.asarray(img)
    except Exception:
        arr = np.asarray(img.convert("I"))
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.any():
        return Image.new("L", img.size, 0)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi > lo:
        out = (arr - lo) * (255.0 / (hi - lo))
    else:  # one value: keep it where it is when it already fits 0..255
        out = np.full(arr.shape, min(max(lo, 0.0), 255.0), dtype=np.float32)
    out[~finite] = 0.0
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def image_key(path: str) -> tuple[str, int, int]:
    """Cache key of an image file: absolute path, size and modification time (``InputError`` if missing)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnusableImage(path, f"file not found ({exc.strerror})") from None
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def image_data_url(path: str, *, max_side: int = 1024, quality: int = 90) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URL, downscaled so its longer side is at most ``max_side``."""
    img = load_image(path)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
