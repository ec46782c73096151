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



# ---- what went wrong, the LLM's part, calibration (report.md, report.html, compare) ------------------

def link_entries(rec: dict) -> list[dict]:
    """The ``link`` steps of a record's trace, in order."""
    return [t for t in rec.get("trace") or [] if t.get("step") == "link"]


def asked_llm(entry: dict) -> bool:
    """Whether a link step asked the linker model (fused: not gated; llm mode: a model answered)."""
    if entry.get("mode") == "fused":
        return entry.get("gated") is False
    return bool(entry.get("model"))


def llm_asked(rec: dict) -> bool:
    """Whether the linker model was asked at any step of the record."""
    return any(asked_llm(t) for t in link_entries(rec))


def same_entity(a: dict | None, b: dict | None) -> bool:
    """Whether two ``{qid, name}`` references name the same entity (QID when both have one, else name)."""
    if a is None or b is None:
        return a is None and b is None
    if a.get("qid") and b.get("qid"):
        return a["qid"] == b["qid"]
    return normalize_name(a.get("name")) == normalize_name(b.get("name"))


def final_link(rec: dict) -> dict | None:
    """The link step that produced the final answer (the last one whose pick it is), else the last link step."""
    links = link_entries(rec)
    pred = rec.get("prediction")
    for entry in reversed(links):
        if pred is not None and same_entity(entry.get("pick"), pred):
            return entry
    return links[-1] if links else None


def final_confidence(rec: dict) -> float | None:
    """The fused probability of the final answer (``None``: nil, failed, or not the fused linker)."""
    if rec.get("error") or rec.get("prediction") is None:
        return None
    entry = final_link(rec)
    if not entry or entry.get("confidence") is None or not same_entity(entry.get("pick"), rec["prediction"]):
        return None
    return float(entry["confidence"])


def gold_reachable(rec: dict) -> bool | None:
    """Whether the linker could answer the gold: it is among the candidates, or it is nil (``None``: unknown)."""
    gold = rec.get("gold")
    if gold is None:
        return None
    if gold.get("nil"):
        return True
    return rec.get("gold_in_candidates")


def top1_given_gold_in_candidates(records: list[dict]) -> dict[str, Any]:
    """Top-1 over the (non-nil) golds that are among the candidates: the linker's own accuracy."""
    return accuracy(rec_correct(r) for r in records if is_scored(r) and r.get("gold_in_candidates") is True)


def nil_scores(records: list[dict]) -> dict[str, Any] | None:
    """Nil precision, recall and F1, and Top-1 on nil and on non-nil golds; ``None`` when no gold is nil.

    A nil prediction is an entity ``null`` from a record that ran; a failed record predicts nothing
    (it misses a nil gold, and is wrong on a non-nil one).
    """
    scored = [r for r in records if is_scored(r)]
    if not any(r["gold"].get("nil") for r in scored):
        return None
    pred_nil = [not r.get("error") and r.get("prediction") is None for r in scored]
    gold_nil = [bool(r["gold"].get("nil")) for r in scored]
    tp = sum(p and g for p, g in zip(pred_nil, gold_nil))
    n_pred, n_gold = sum(pred_nil), sum(gold_nil)
    precision = tp / n_pred if n_pred else math.nan
    recall = tp / n_gold if n_gold else math.nan
    f1 = (2 * precision * recall / (precision + recall) if n_pred and tp else (0.0 if n_pred or n_gold else math.nan))
    return {"tp": tp, "predicted": n_pred, "gold": n_gold, "precision": precision, "recall": recall, "f1": f1,
            "precision_ci": wilson(tp, n_pred), "recall_ci": wilson(tp, n_gold),
            "top1_nil": accuracy(rec_correct(r) for r in scored if r["gold"].get("nil")),
            "top1_non_nil": accuracy(rec_correct(r) for r in scored if not r["gold"].get("nil"))}


def nil_on_entities(records: list[dict]) -> dict[str, Any]:
    """Nil answers on entity (non-nil) golds, and which of them passed over the gold.

    A nil answer passed over the gold when the gold (by name) was the best candidate of the link step that
    answered nil: answering that candidate instead would have been right. ``set_has_nil_gold``: whether any
    scored gold of the run is nil (without one, every nil answer is wrong).
    """
    scored = [r for r in records if is_scored(r)]
    out: dict[str, Any] = {"answers": 0, "passed_over": [],
                           "set_has_nil_gold": any(r["gold"].get("nil") for r in scored)}
    for r in scored:
        if r.get("error") or r.get("prediction") is not None or r["gold"].get("nil"):
            continue
        out["answers"] += 1
        step = next((t for t in link_entries(r) if t.get("outcome") == "nil"), None)
        top = (step or {}).get("top") or []
        gold = r["gold"].get("name")
        if gold and top and normalize_name(top[0].get("name")) == normalize_name(gold):
            out["passed_over"].append(r["id"])
    return out


def nil_overruled(records: list[dict]) -> dict[str, Any]:
    """Mentions where ``nil_needs_text`` kept a text answer the combined evidence (text + LLM) would have
    made nil (a link step carrying ``nil_overruled``): how many, how many ended right, how many had a nil
    gold (there, the overruled nil would have been right)."""
    out: dict[str, Any] = {"n": 0, "right": 0, "nil_gold": 0, "ids": []}
    for r in records:
        if not is_scored(r) or r.get("error") or not any(t.get("nil_overruled") for t in link_entries(r)):
            continue
        out["n"] += 1
        out["right"] += bool(rec_correct(r))
        out["nil_gold"] += bool(r["gold"].get("nil"))
        out["ids"].append(r["id"])
    return out


def change(before_ok: bool, after_ok: bool) -> str:
    """An answer against the one it replaced: ``fixed``, ``broken``, ``both right`` or ``both wrong``."""
    return {(False, True): "fixed", (True, False): "broken", (True, True): "both right",
            (False, False): "both wrong"}[(before_ok, after_ok)]


def llm_effect(records: list[dict]) -> dict[str, Any]:
    """Among the mentions whose linker model was asked: did the answer fix a wrong text prior or break a right one?

    The text prior is ``prior_top`` of the first link step that asked the model (the top candidate
    of the fused evidence before the model's scores were added; nil when it carries ``"nil": true``).
    Two answers are compared with it: that step's own pick (the model's effect alone) and the final
    answer (after the clue rounds).
    """
    out: dict[str, Any] = {"asked": 0, "no_prior": 0,
                           "pick": Counter(), "final": Counter(), "fixed": [], "broken": []}
    for r in records:
        if not is_scored(r) or r.get("error"):
            continue
        asked = next((t for t in link_entries(r) if asked_llm(t)), None)
        if asked is None:
            continue
        out["asked"] += 1
        prior = asked.get("prior_top")
        if asked.get("mode") != "fused" or not prior:
            out["no_prior"] += 1
            continue
        p_ok = bool(match(None if prior.get("nil") else {"qid": prior.get("qid"), "name": prior.get("name")},
                          r["gold"]))  # the prior's answer: its top candidate, or nil when its nil decision holds
        for key, ok in (("pick", match(asked.get("pick"), r["gold"])), ("final", rec_correct(r))):
            label = change(p_ok, bool(ok))
            out[key][label] += 1
            if key == "final" and label in ("fixed", "broken"):
                out[label].append(r["id"])
    return out


def fallback_effect(records: list[dict]) -> dict[str, Any]:
    """When no round verified, two round-1 answers may give way to a clue round's: one the image refuted
    (``refute_contradictions``) and a nil (``nil_fallback``). Per kind, mentions whose final answer
    replaced the round-1 one and mentions that kept it, each split by whether that fixed a wrong round-1
    answer or broke a right one (a nil answer is right on a nil gold)."""
    out: dict[str, Any] = {"refuted": {"replaced": Counter(), "kept": Counter()},
                           "nil": {"replaced": Counter(), "kept": Counter()}, "fixed": [], "broken": []}
    for r in records:
        if not is_scored(r) or r.get("error"):
            continue
        first = next((t for t in r.get("trace") or [] if t.get("step") == "verify" and t.get("round") == 1), None)
        if first and first.get("refuted"):
            kind = "refuted"
        elif r.get("round1") is None and (r.get("stop_round") or 1) > 1 and r.get("status") in ("fallback", "nil"):
            kind = "nil"
        else:
            continue
        r1_ok, ok = bool(match(r.get("round1"), r["gold"])), bool(rec_correct(r))
        group = "kept" if same_entity(r.get("round1"), r.get("prediction")) else "replaced"
        label = change(r1_ok, ok)
        out[kind][group][label] += 1
        if label in ("fixed", "broken"):
            out[label].append(r["id"])
    return out


def resolved_scoring(records: list[dict]) -> dict[str, Counter]:
    """The LLM scoring methods and weights the fused linker actually used, from the traces."""
    methods: Counter = Counter()
    weights: Counter = Counter()
    gates: Counter = Counter()
    for r in records:
        seen_m, seen_w = set(), set()
        for t in link_entries(r):
            llm = t.get("llm")
            if asked_llm(t) and isinstance(llm, dict):
                seen_m.add(llm.get("method"))
                if llm.get("weight") is not None:
                    seen_w.add(llm.get("weight"))
            note = str(t.get("note") or "")
            m = re.search(r">= gate ([0-9.]+)", note)
            if m:
                gates[float(m.group(1))] += 1
        methods.update(seen_m)
        weights.update(seen_w)
    return {"methods": methods, "weights": weights, "gates": gates}


def reliability(records: list[dict], bins: int = 10) -> dict[str, Any]:
    """Reliability of the fused confidence of the final answer: per-bin confidence vs accuracy, and the ECE.

    Equal-width bins over [0, 1]; ECE = sum over bins of (bin size / n) * |accuracy - mean confidence|.
    """
    pairs = [(c, bool(rec_correct(r))) for r in records if is_scored(r)
             for c in [final_confidence(r)] if c is not None]
    rows = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c, ok) for c, ok in pairs if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if inside:
            rows.append({"lo": lo, "hi": hi, "n": len(inside), "conf": float(np.mean([c for c, _ in inside])),
                         "acc": float(np.mean([ok for _, ok in inside]))})
    n = len(pairs)
    ece = sum(r["n"] / n * abs(r["acc"] - r["conf"]) for r in rows) if n else math.nan
    return {"n": n, "bins": rows, "ece": ece}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``b`` vs ``c`` discordant pairs at 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    try:
        from scipy.stats import binomtest

        return float(binomtest(min(b, c), n, 0.5).pvalue)
    except ImportError:  # the same figure, computed exactly
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
        return min(1.0, 2 * tail)


METHOD_NAMES = {"likelihood": "names' likelihood", "logits": "letters (logits)", "logprobs": "letters (API logprobs)",
                "sampled": "letters (sampled answer)"}


def resolved_line(resolved: dict[str, Counter], st: dict[str, Any]) -> str:
    """The scoring the fused linker actually used (from the traces), beside the configured setting."""
    methods, weights, gates = resolved["methods"], resolved["weights"], resolved["gates"]
    if not methods:
        return (f"Resolved from the traces: the linker model was never asked to score candidates "
                f"(llm_scoring {st.get('llm_scoring', 'choice')} not exercised)")
    used = ", ".join(f"{METHOD_NAMES.get(m, m)} on {n} mention(s)" for m, n in methods.most_common())
    w = ", ".join(f"{w:g}" + (f" ({n})" if len(weights) > 1 else "") for w, n in weights.most_common()) or "n/a"
    gate = f"; text-first gate {', '.join(f'{g:g}' for g in gates)}" if gates else ""
    return f"Resolved from the traces: LLM scoring {used}; LLM weight {w}{gate}"


def entity_label(entity: dict | None, nil: str | None = "nil") -> str | None:
    """How a report names an answer: its name (else its qid), ``"nil"`` for a nil pick, ``nil`` for none."""
    if entity is None:
        return nil
    if entity.get("nil"):
        return "nil"
    return entity.get("name") or entity.get("qid") or "?"
