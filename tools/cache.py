"""Where i2cr keeps the model files it builds (assembled GGUFs, converted weights, llama.cpp probe records)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Folder of assembled / converted model files (``$I2CR_CACHE_DIR`` or the user cache)."""
    root = os.environ.get("I2CR_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("i2cr")
    return Path(root).expanduser() / "models"
