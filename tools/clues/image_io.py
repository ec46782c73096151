"""Reading image files for the clue tools and verifiers.

Every visual stage opens images through :func:`load_image`, so a missing,
corrupt or unreadable file fails the same way: an ``InputError`` naming the
path. :func:`image_data_url` turns an image into the ``data:`` URL that
vision chat models (OpenAI-compatible ``image_url`` content blocks) accept.
"""

from __future__ import annotations

import base64
import io
import os

from PIL import Image, UnidentifiedImageError

from tools.errors import InputError

# images larger than this (pixels) are refused rather than decoded (PIL's bomb guard is 89M)
MAX_PIXELS = 80_000_000


def load_image(path: str) -> Image.Image:
    """Open ``path`` fully decoded as an RGB ``PIL.Image``; ``InputError`` naming the path otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"image: file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"image: {path} is too large ({img.width}x{img.height} pixels)")
            img.load()
            return _to_rgb(img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"image: not a readable image: {path} ({type(exc).__name__}: {exc})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``; transparent areas become white (logos, PNG graphics)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_key(path: str) -> tuple[str, int, int]:
    """Cache key of an image file: absolute path, size and modification time (``InputError`` if missing)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(f"image: file not found: {path} ({exc.strerror})") from None
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def image_data_url(path: str, *, max_side: int = 1024, quality: int = 90) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URL, downscaled so its longer side is at most ``max_side``."""
    img = load_image(path)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
