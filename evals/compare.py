"""``i2cr compare RUN_A RUN_B``: two eval runs on the mentions they share.

Both Top-1s with 95% Wilson intervals, the paired difference with McNemar's exact test
(two-sided binomial test on the discordant pairs), the mentions that changed (fixed or
broken by B) with the key steps of their traces in both runs, the settings that differ,
and the cost side by side. Printed to the terminal and written as markdown to
``RUN_B/compare_<name of A>.md`` (or ``--out``).

A mention is shared when both runs have it with the same gold answer; a mention whose
gold differs between the runs is left out and counted.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

from evals import metrics as M
from evals.store import PREDICTIONS, read_config, read_predictions
from tools.errors import I2CRError, InputError


def load_run(path: str | Path) -> tuple[dict[str, dict], dict[str, Any], list[str]]:
    """A run's records by id (the last line of an id wins), its config and the notes of reading it."""
    run = Path(path)
    if not run.is_dir():
        raise InputError(f"compare: no run folder at {run}")
    if not (run / PREDICTIONS).is_file():
        raise InputError(f"compare: {run} has no {PREDICTIONS}; run `i2cr eval ... --out {run}` first")
    records, notes = read_predictions(run)
    if not records:
        raise InputError(f"compare: {run / PREDICTIONS} holds no prediction yet")
    return {str(r["id"]): r for r in records}, read_config(run) or {}, notes


def _name(entity: dict | None) -> str:
    if entity is None:
        return "nil"
    return "nil" if entity.get("nil") else (entity.get("name") or entity.get("qid") or "?")


def key_steps(rec: dict) -> str:
    """The trace of one mention in one line: each round's clue, pick (fused p, LLM), verifier score vs tau, final."""
    if rec.get("error"):
        return "failed: " + " ".join(str(rec["error"]).split())[:160]
    parts: list[str] = []
    for t in rec.get("trace") or []:
        step = t.get("step")
        if step == "clue" and t.get("text"):
            parts.append(f"r{t.get('round')} clue {t.get('clue')} \"{' '.join(str(t['text']).split())[:60]}\"")
        elif step == "link":
            p = f" p={t['confidence']:.2f}" if isinstance(t.get("confidence"), (int, float)) else ""
            extra = []
            if M.asked_llm(t):
                llm = t.get("llm") if isinstance(t.get("llm"), dict) else {}
                extra.append(f"LLM {llm.get('method') or t.get('model') or 'asked'}")
            if t.get("prior_top"):
                nil = "nil, over " if t["prior_top"].get("nil") else ""
                extra.append(f"prior {nil}{t['prior_top'].get('name')} {t['prior_top'].get('p', 0):.2f}")
            pick = _name(t.get("pick")) if t.get("pick") is not None else (t.get("outcome") or "none")
            parts.append(f"r{t.get('round')} link {pick}{p}" + (f" ({', '.join(extra)})" if extra else ""))
        elif step == "verify" and t.get("verification_score") is not None:
            ok = ">=" if t.get("verification_passed") else "<"
            parts.append(f"verify {t['verification_score']:.2f} {ok} tau {t.get('verification_threshold')}")
        elif step == "final":
            parts.append(f"final {t.get('status')} {_name(t.get('entity'))}")
    return " → ".join(parts) or "no trace"


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict[str, Any]:
    """Paired figures of two runs (records by id) on their shared, labelled mentions."""
    shared, gold_differs = [], 0
    for i, ra in a.items():
        rb = b.get(i)
        if rb is None or not M.is_scored(ra) or not M.is_scored(rb):
            continue
        if ra["gold"] != rb["gold"]:
            gold_differs += 1
            continue
        shared.append(i)
    flags_a = [bool(M.rec_correct(a[i])) for i in shared]
    flags_b = [bool(M.rec_correct(b[i])) for i in shared]
    fixed = [i for i, x, y in zip(shared, flags_a, flags_b) if not x and y]
    broken = [i for i, x, y in zip(shared, flags_a, flags_b) if x and not y]
    n = len(shared)
    return {"n": n, "only_a": sum(1 for i in a if i not in b), "only_b": sum(1 for i in b if i not in a),
            "gold_differs": gold_differs,
            "top1_a": M.accuracy(flags_a), "top1_b": M.accuracy(flags_b),
            "fixed": fixed, "broken": broken,
            "diff": (len(fixed) - len(broken)) / n if n else math.nan,
            "p_value": M.mcnemar_exact(len(broken), len(fixed)),
            "cost_a": M.cost_table([a[i] for i in shared]), "cost_b": M.cost_table([b[i] for i in shared])}


def settings_diff(ca: dict[str, Any], cb: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The settings (and run options) that differ between two configs."""
    sa, sb = ca.get("settings") or {}, cb.get("settings") or {}
    out = [(k, sa.get(k), sb.get(k)) for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    for k in ("dataset", "labels", "sample", "seed", "limit"):
        if ca.get(k) != cb.get(k):
            out.append((k, ca.get(k), cb.get(k)))
    return out


def run_notes(ca: dict[str, Any], cb: dict[str, Any], path_a: str, path_b: str) -> list[str]:
    """What to tell the user before trusting the comparison: the same folder twice, different datasets."""
    notes = []
    if Path(path_a).resolve() == Path(path_b).resolve():
        notes.append(f"{path_a} is compared with itself")
    ha, hb = ca.get("dataset_sha256"), cb.get("dataset_sha256")
    if ha and hb and ha != hb:
        notes.append(f"the runs are on different datasets (A: {ca.get('dataset')}, B: {cb.get('dataset')}); "
                     "only the ids both hold, with the same gold answer, are compared")
    return notes


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _ci(a: dict) -> str:
    return "n/a" if math.isnan(a["lo"]) else f"[{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]"


def _num(x: float, d: int = 1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.{d}f}"


def _cell(x: Any, limit: int = 400) -> str:
    text = " ".join(str(x).split())
    return (text[:limit - 1] + "…" if len(text) > limit else text).replace("|", "\\|") or "—"


def render(c: dict[str, Any], name_a: str, name_b: str, a: dict[str, dict], b: dict[str, dict],
           diff: list[tuple[str, Any, Any]]) -> str:
    """The comparison as markdown."""
    L = [f"# Compare: A = `{name_a}`, B = `{name_b}`\n"]
    left = []
    if c["only_a"] or c["only_b"]:
        left.append(f"{c['only_a']} only in A, {c['only_b']} only in B")
    if c["gold_differs"]:
        left.append(f"{c['gold_differs']} whose gold answer differs between the runs")
    L.append(f"{c['n']} shared mentions with a gold answer" + (f" (left out: {'; '.join(left)})" if left else "")
             + ". Failed mentions count wrong.\n")
    L.append("| Run | Top-1 | 95% CI | correct / n |")
    L.append("|---|---:|---:|---:|")
    for label, key in (("A", "top1_a"), ("B", "top1_b")):
        t = c[key]
        L.append(f"| {label} `{name_a if label == 'A' else name_b}` | {_pct(t['acc'])} | {_ci(t)} | "
                 f"{t['correct']} / {t['n']} |")
    fixed, broken = len(c["fixed"]), len(c["broken"])
    diff_pts = "n/a" if math.isnan(c["diff"]) else f"{100 * c['diff']:+.1f} points"
    L.append(f"\n**B − A: {diff_pts}** ({fixed} fixed by B, {broken} broken by B). McNemar's exact test "
             f"(two-sided binomial on the {fixed + broken} discordant pairs): **p = {c['p_value']:.4g}**"
             + (" — not significant at 0.05." if c["p_value"] >= 0.05 else " — significant at 0.05.") + "\n")
    if diff:
        L.append("## Settings that differ\n")
        L.append("| Setting | A | B |")
        L.append("|---|---|---|")
        L.extend(f"| {k} | {_cell(va, 80)} | {_cell(vb, 80)} |" for k, va, vb in diff)
        L.append("")
    L.append("## Cost on the shared mentions\n")
    L.append("Over the mentions that ran without error in each run; seconds are wall-clock per mention.\n")
    L.append("| | A mean | B mean | A total | B total |")
    L.append("|---|---:|---:|---:|---:|")
    names = {"llm_calls": "LLM calls", "prompt_tokens": "prompt tokens", "completion_tokens": "completion tokens",
             "seconds": "seconds"}
    for key, label in names.items():
        x, y = c["cost_a"][key], c["cost_b"][key]
        d = 2 if key == "seconds" else 1
        L.append(f"| {label} | {_num(x['mean'], d)} | {_num(y['mean'], d)} | {_num(x['total'], d)} | "
                 f"{_num(y['total'], d)} |")
    for title, ids in (("Fixed by B (wrong in A, right in B)", c["fixed"]),
                       ("Broken by B (right in A, wrong in B)", c["broken"])):
        L.append(f"\n## {title}: {len(ids)}\n")
        if not ids:
            L.append("None.")
            continue
        L.append("| id | mention | gold | A answer | B answer | A trace | B trace |")
        L.append("|---|---|---|---|---|---|---|")
        for i in ids:
            ra, rb = a[i], b[i]
            pa = "(failed)" if ra.get("error") else _name(ra.get("prediction"))
            pb = "(failed)" if rb.get("error") else _name(rb.get("prediction"))
            L.append(f"| `{_cell(i, 40)}` | {_cell(ra.get('mention') or rb.get('mention') or '', 40)} | "
                     f"{_cell(_name(ra['gold']), 50)} | {_cell(pa, 50)} | {_cell(pb, 50)} | "
                     f"{_cell(key_steps(ra))} | {_cell(key_steps(rb))} |")
    return "\n".join(L) + "\n"


def terminal(c: dict[str, Any], name_a: str, name_b: str, out: Path) -> str:
    """The short form printed to the terminal."""
    t_a, t_b = c["top1_a"], c["top1_b"]
    diff = "n/a" if math.isnan(c["diff"]) else f"{100 * c['diff']:+.1f} points"
    lines = [f"{c['n']} shared mentions" + (f" ({c['only_a']} only in A, {c['only_b']} only in B)"
                                            if c["only_a"] or c["only_b"] else ""),
             f"A {name_a}: Top-1 {_pct(t_a['acc'])} {_ci(t_a)} ({t_a['correct']}/{t_a['n']})",
             f"B {name_b}: Top-1 {_pct(t_b['acc'])} {_ci(t_b)} ({t_b['correct']}/{t_b['n']})",
             (f"B - A: {diff}; fixed {len(c['fixed'])}, broken {len(c['broken'])}; "
              f"McNemar exact p = {c['p_value']:.4g}")]
    for key, label in (("llm_calls", "LLM calls"), ("seconds", "seconds")):
        x, y = c["cost_a"][key]["mean"], c["cost_b"][key]["mean"]
        lines.append(f"{label} per mention: A {_num(x, 2)}, B {_num(y, 2)}")
    lines.append(f"changed mentions and their traces: {out}")
    return "\n".join(lines)


def _label(path: str) -> str:
    return Path(path).resolve().name or str(path)


def main(argv: list[str]) -> int:
    """Entry point of ``i2cr compare``; returns the exit code."""
    p = argparse.ArgumentParser(prog="i2cr compare", description="Compare two eval runs on their shared mentions.")
    p.add_argument("run_a", help="run folder A (the reference)")
    p.add_argument("run_b", help="run folder B (the change being judged)")
    p.add_argument("--out", help="markdown file to write (default: RUN_B/compare_<name of A>.md)")
    args = p.parse_args(argv)
    try:
        a, config_a, notes_a = load_run(args.run_a)
        b, config_b, notes_b = load_run(args.run_b)
        name_a, name_b = _label(args.run_a), _label(args.run_b)
        for note in notes_a + notes_b + run_notes(config_a, config_b, args.run_a, args.run_b):
            print(f"note: {note}", file=sys.stderr)
        c = compare(a, b)
        if not c["n"]:
            raise InputError(f"compare: {args.run_a} and {args.run_b} share no mention with a gold answer")
        safe = re.sub(r"[^\w.-]+", "_", name_a)
        out = Path(args.out) if args.out else Path(args.run_b) / f"compare_{safe}.md"
        try:
            out.write_text(render(c, name_a, name_b, a, b, settings_diff(config_a, config_b)), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"compare: cannot write {out}: {exc.strerror or exc}") from None
    except I2CRError as exc:
        print(f"i2cr compare: error: {exc}", file=sys.stderr)
        return 2
    print(terminal(c, name_a, name_b, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
