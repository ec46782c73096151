"""Scoring of predictions: name matching, Top-1 with Wilson intervals, per-round accuracy, exits, cost.

A prediction is ``{"qid", "name"}`` or ``None`` (nil). Gold answers are those of
``evals/datasets.py``: ``{"name", "qid"}``, ``{"nil": True}`` or ``None``
(unlabelled, left out of every accuracy).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import numpy as np

_WIKI_URL = re.compile(r"^https?://[a-z\-]+\.(?:m\.)?wikipedia\.org/wiki/", re.I)


def normalize_name(name: str | None) -> str:
    """An entity name as the benchmarks compare it: case, underscores and whitespace ignored.

    A Wikipedia URL (WikiDiverse gold) is reduced to its title.
    """
    text = str(name or "").strip()
    if _WIKI_URL.match(text):
        text = unquote(_WIKI_URL.sub("", text))
    return " ".join(text.replace("_", " ").lower().split())


def match(pred: dict | None, gold: dict | None) -> bool | None:
    """Whether ``pred`` is the gold entity: by name when the gold has one, else by QID.

    ``None`` when there is no gold answer. Nil gold is matched by a nil prediction.
    """
    if gold is None:
        return None
    if gold.get("nil"):
        return pred is None
    if pred is None:
        return False
    if gold.get("name"):
        return normalize_name(pred.get("name")) == normalize_name(gold["name"])
    return bool(gold.get("qid")) and pred.get("qid") == gold["qid"]


def match_qid(pred: dict | None, gold: dict | None) -> bool | None:
    """Whether ``pred`` has the gold QID; ``None`` when the gold has no QID (nil gold included)."""
    if gold is None or gold.get("nil") or not gold.get("qid"):
        return None
    return pred is not None and pred.get("qid") == gold["qid"]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% by default); ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(flags: Iterable[bool | None]) -> dict[str, Any]:
    """``{"correct", "n", "acc", "lo", "hi"}`` over the non-``None`` flags (Wilson 95% interval)."""
    vals = [bool(f) for f in flags if f is not None]
    k, n = sum(vals), len(vals)
    lo, hi = wilson(k, n)
    return {"correct": k, "n": n, "acc": k / n if n else math.nan, "lo": lo, "hi": hi}


def answer_after_round(rec: dict, k: int) -> dict | None:
    """What the graph answers when stopped after round ``k``.

    The final entity if the run stopped at round ``k`` or earlier, else the
    round-1 (text) answer — the reference fallback when no later round verifies.
    """
    stop = rec.get("stop_round") or 1
    return rec.get("prediction") if stop <= k else rec.get("round1")


def is_scored(rec: dict) -> bool:
    """Whether a prediction line counts in the accuracy (it has a gold answer)."""
    return rec.get("gold") is not None


def rec_correct(rec: dict, pred: dict | None | str = "final") -> bool | None:
    """Correctness of a line's prediction (or of ``pred``); a failed record is always wrong."""
    if rec.get("gold") is None:
        return None
    if rec.get("error"):
        return False
    return match(rec.get("prediction") if pred == "final" else pred, rec["gold"])


def cumulative_by_round(records: list[dict], n_rounds: int) -> list[dict[str, Any]]:
    """Accuracy after each round ``1..n_rounds`` (round 1 = text), errors counted wrong."""
    rows = []
    for k in range(1, n_rounds + 1):
        flags = [False if r.get("error") else match(answer_after_round(r, k), r["gold"])
                 for r in records if is_scored(r)]
        rows.append({"round": k, **accuracy(flags)})
    return rows


def exit_groups(records: list[dict]) -> list[dict[str, Any]]:
    """Share of mentions per exit (status and stop round), with the accuracy of each group."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        key = ("error", None) if r.get("error") else (r.get("status") or "?", r.get("stop_round"))
        groups[key].append(r)
    total = len(records)
    out = []
    for (status, stop), recs in sorted(groups.items(), key=lambda kv: (kv[0][1] or 99, kv[0][0])):
        out.append({"status": status, "stop_round": stop, "count": len(recs),
                    "share": len(recs) / total if total else math.nan,
                    **accuracy(rec_correct(r) for r in recs)})
    return out


def clue_use_by_round(records: list[dict]) -> dict[int, Counter]:
    """For each round > 1, how often each clue type was the round's clue (from the traces)."""
    use: dict[int, Counter] = defaultdict(Counter)
    for r in records:
        seen = set()
        for step in r.get("trace") or []:
            if step.get("step") == "link" and step.get("clue") and step.get("round", 1) > 1:
                if step["round"] not in seen:
                    seen.add(step["round"])
                    use[step["round"]][step["clue"]] += 1
    return dict(use)


def describe(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "p50", "p95", "total", "n"}`` of ``values`` (``nan`` when there are none)."""
    arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    if not arr.size:
        return {"mean": math.nan, "p50": math.nan, "p95": math.nan, "total": 0.0, "n": 0}
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)), "total": float(arr.sum()), "n": int(arr.size)}


COST_FIELDS = ("llm_calls", "prompt_tokens", "completion_tokens", "seconds")


def cost_table(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per-mention cost statistics over the records that ran without error."""
    ok = [r for r in records if not r.get("error")]
    return {f: describe(r.get(f) for r in ok) for f in COST_FIELDS}


def gate_groups(records: list[dict]) -> list[dict[str, Any]]:
    """Fused-linker runs: mentions whose round 1 was decided without the LLM vs with it (empty otherwise)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        first = next((t for t in r.get("trace") or [] if t.get("step") == "link" and t.get("round") == 1), None)
        if not first or "gated" not in first:
            continue
        groups.setdefault("decided without the LLM" if first["gated"] else "LLM asked", []).append(r)
    total = sum(len(v) for v in groups.values())
    return [{"group": name, "count": len(rs), "share": len(rs) / total,
             "acc": accuracy(rec_correct(r) for r in rs)["acc"],
             "round1_acc": accuracy(None if r.get("error") else match(r.get("round1"), r["gold"]) for r in rs)["acc"]}
            for name, rs in sorted(groups.items())]

