"""Reading the files a user names (data, labels, candidates, weights): errors name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.errors import InputError


def read_json_file(path: str | Path, what: str) -> Any:
    """Load a JSON file or raise ``InputError`` naming it (also for JSON nested too deeply to read)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {path}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{what}: {path} is nested too deeply to read as JSON") from None
