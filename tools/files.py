"""Reading the files a user names (data, labels, candidates, weights): errors name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.errors import InputError


def check_input_file(path: str | Path, what: str, *, regular: bool = False) -> Path:
    """``path`` as a ``Path``, or ``InputError`` naming ``what`` when it is missing or a folder.

    Other files that are not regular (``/dev/stdin``, a pipe such as ``<(cmd)``) are accepted unless
    ``regular`` (a file that is read again later, e.g. hashed so that a run can be resumed).
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what}: {path} is a folder, not a file")
    if not p.exists():
        raise InputError(f"{what}: file not found: {path}")
    if regular and not p.is_file():
        raise InputError(f"{what}: {path} is not a regular file (a pipe or a device); it is read again "
                         "to resume the run: save it to a file first")
    return p


def read_json_file(path: str | Path, what: str, *, regular: bool = False) -> Any:
    """Load a JSON file or raise ``InputError`` naming it (also for JSON nested too deeply to read)."""
    p = check_input_file(path, what, regular=regular)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{what}: {path} is nested too deeply to read as JSON") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
