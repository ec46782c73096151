"""The run folder: ``config.json`` and the append-only ``predictions.jsonl``.

Every prediction line is appended, flushed and fsync'd before the next record
counts as done, so a run killed at any point (Ctrl-C, ``kill -9``, a crash)
loses at most the line being written. On resume, :func:`read_predictions`
drops a truncated last line and :class:`PredictionWriter` cuts it off the file
before appending, so the file stays one JSON object per line.

A run holds :class:`RunLock` (an ``fcntl`` lock on ``.lock`` in the folder)
while it uses the folder, so a second run on the same folder is refused
instead of linking every mention again and writing every id twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tools.errors import ConfigError, InputError

PREDICTIONS = "predictions.jsonl"
CONFIG = "config.json"
LOCK = ".lock"
# settings that may change between the runs of one folder without changing the results
RESUMABLE_KEYS = ("limit", "concurrency", "created", "machine_busy")


def read_predictions(run_dir: str | Path, *, repair: bool = False) -> tuple[list[dict], list[str]]:
    """The prediction lines of a run folder (the last line per id wins) and notes on skipped lines.

    A truncated last line (a kill mid-write) is skipped; with ``repair`` it is also cut off the file.
    """
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return [], []
    data = path.read_bytes()
    notes: list[str] = []
    end = data.rfind(b"\n") + 1
    if end < len(data):
        notes.append(f"{path}: dropped a truncated last line ({len(data) - end} bytes, an interrupted write)")
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
    by_id: dict[str, dict] = {}
    for lineno, line in enumerate(data[:end].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            notes.append(f"{path}: line {lineno} is not valid JSON; ignored")
            continue
        if not isinstance(rec, dict) or "id" not in rec:
            notes.append(f"{path}: line {lineno} has no 'id'; ignored")
            continue
        problem = record_problem(rec)
        if problem:
            notes.append(f"{path}: line {lineno} is not a prediction line ({problem}); ignored")
            continue
        by_id.pop(str(rec["id"]), None)  # re-insert so the order is that of the last write
        by_id[str(rec["id"])] = rec
    return list(by_id.values()), notes


_NUMBER = (int, float)
# the fields a prediction line may carry and the types they may have (None is always allowed)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "gold": (dict,), "prediction": (dict,), "round1": (dict,), "baselines": (dict,), "correct": (bool,),
    "round1_correct": (bool,), "error": (str,), "status": (str,), "stop_round": (int,), "seconds": _NUMBER,
    "llm_calls": _NUMBER, "prompt_tokens": _NUMBER, "completion_tokens": _NUMBER, "trace": (list,),
    "warnings": (list,), "mention": (str,),
}

# the same for the trace entries (nodes/*.py write them; the report, the page and compare read these keys)
_TRACE_TYPES: dict[str, tuple[type, ...]] = {
    "step": (str,), "round": (int,), "clue": (str,), "text": (str,), "note": (str,), "outcome": (str,),
    "status": (str,), "mode": (str,), "pick": (dict,), "entity": (dict,), "llm": (dict,), "prior_top": (dict,),
    "top": (list,), "confidence": _NUMBER, "verification_score": _NUMBER, "verification_threshold": _NUMBER,
    "reflection_score": _NUMBER, "reflection_threshold": _NUMBER, "verification_passed": (bool,),
    "reflection_passed": (bool,), "gated": (bool,),
}


def record_problem(rec: dict) -> str | None:
    """Why ``rec`` is not a prediction line as :mod:`evals.predict` writes it (a hand-edited or foreign
    file), or None. Only the shape is checked: the types of the fields the report and compare read."""
    if isinstance(rec["id"], bool) or not isinstance(rec["id"], (str, int)):
        return f"'id' is a {type(rec['id']).__name__}"
    for key, types in _FIELD_TYPES.items():
        value = rec.get(key)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            return f"'{key}' is a {type(value).__name__}"
    for i, t in enumerate(rec.get("trace") or []):
        if not isinstance(t, dict):
            return f"trace[{i}] is a {type(t).__name__}"
        for key, types in _TRACE_TYPES.items():
            value = t.get(key)
            if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                return f"trace[{i}].{key} is a {type(value).__name__}"
        if any(not isinstance(x, dict) for x in t.get("top") or []):
            return f"trace[{i}].top holds an entry that is not an object"
    return None


class PredictionWriter:
    """Appends one JSON line per record, durably (flush + fsync each line)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / PREDICTIONS
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and make it durable before returning."""
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a run folder, or ``None`` when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); delete it or use another --out folder") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to read as JSON; delete it or use another --out folder") from None
    problem = (f"it holds a JSON {type(config).__name__}, not an object" if not isinstance(config, dict) else
               next((f"'{k}' is a {type(config[k]).__name__}" for k, t in _CONFIG_TYPES.items()
                     if config.get(k) is not None and not isinstance(config[k], t)), None))
    if problem:
        raise InputError(f"{path} is not a run configuration ({problem}); delete it or use another --out folder")
    return config


_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {"settings": dict, "dataset": str, "labels": str, "images": str,
                                                     "format": str, "dataset_sha256": str, "created": str}


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` atomically (temporary file + rename)."""
    path = Path(run_dir) / CONFIG
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_resume(run_dir: str | Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to resume when the run's configuration differs (a mix of two runs would be meaningless)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"setting {k}: was {a.get(k)!r}, now {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: was {a!r}, now {b!r}")
    if diffs:
        listed = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
        raise ConfigError(f"{Path(run_dir)} holds a run with a different configuration ({listed}). "
                          "Re-run with the same options to resume it, or choose another --out folder.")


class RunLock:
    """An exclusive lock on a run folder for the duration of a run (``with RunLock(run_dir): ...``).

    The lock is ``flock`` on ``run_dir/.lock``: the system releases it when the
    process ends, however it ends (``kill -9`` included), so a stale lock file
    never blocks a later run. The file holds the pid of the run that has it,
    for the error message.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        path = self.run_dir / LOCK
        try:
            fh = open(path, "a+", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"--out {self.run_dir}: cannot write in the run folder ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise ConfigError(f"{self.run_dir} is in use by another i2cr eval run"
                              f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end or "
                              "choose another --out folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the lock
            self._fh = None
