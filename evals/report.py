"""``report.md`` and ``rounds.png`` of a run folder (``i2cr report run/``).

Everything is computed from ``predictions.jsonl`` (and ``config.json`` for the
settings), so a report can be made of a run in progress or a killed one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from evals import metrics as M
from evals.html_report import write_html
from evals.plot import exit_kind, plot_reliability, plot_rounds, round_labels
from evals.store import PREDICTIONS, read_config, read_predictions
from tools.errors import InputError

PUBLISHED_WIKIMEL = [("UniMEL", 94.1), ("I2CR", 93.0), ("MIMIC", 87.98)]


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _or(value: Any, default: str) -> Any:
    return default if value is None else value


def _ci(row: dict) -> str:
    return "n/a" if math.isnan(row["lo"]) else f"[{100 * row['lo']:.1f}, {100 * row['hi']:.1f}]"


def _num(x: float, digits: int = 1) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:,.{digits}f}" if abs(x) < 1e6 else f"{x:,.0f}"


def summarize(records: list[dict], config: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the report, as data (the markdown and the plot are drawn from this)."""
    settings = config.get("settings") or {}
    clue_order = settings.get("clue_order") or []
    max_rounds = settings.get("max_rounds", len(clue_order))
    n_rounds = 1 + min(int(max_rounds), len(clue_order)) if clue_order else 1
    n_rounds = max([n_rounds, *[r.get("stop_round") or 1 for r in records]])
    scored = [r for r in records if M.is_scored(r)]

    def baseline(key: str) -> tuple[dict, int, str | None]:
        flags, missing, reason = [], 0, None
        for r in scored:
            base = r.get("baselines")
            if base is None:  # malformed record: no input to run any method on
                flags.append(False)
            elif key in base:
                flags.append(M.match(base[key], r["gold"]))
            else:
                missing += 1
                reason = reason or base.get(f"{key}_error")
        return M.accuracy(flags), missing, reason

    first, _, _ = baseline("first")
    emb, emb_missing, emb_reason = baseline("embedding")
    qid_flags = [None if M.match_qid(None, r["gold"]) is None else (False if r.get("error") else
                 M.match_qid(r.get("prediction"), r["gold"])) for r in scored]
    return {
        "n": len(records), "scored": len(scored), "errors": sum(1 for r in records if r.get("error")),
        "selected": config.get("selected"), "n_rounds": n_rounds,
        "top1": M.accuracy(M.rec_correct(r) for r in scored),
        "top1_qid": M.accuracy(qid_flags),
        "round1": M.accuracy(False if r.get("error") else M.match(r.get("round1"), r["gold"]) for r in scored),
        "first": first, "embedding": emb, "embedding_missing": emb_missing, "embedding_reason": emb_reason,
        "per_round": M.cumulative_by_round(records, n_rounds),
        "exits": M.exit_groups(records),
        "clue_use": M.clue_use_by_round(records),
        "cost": M.cost_table(records),
        "gate": M.gate_groups(scored),
        "recall": M.accuracy(r["gold_in_candidates"] for r in scored if "gold_in_candidates" in r),
        "nil_gold": sum(1 for r in scored if r["gold"].get("nil")),
        "with_image": sum(1 for r in records if r.get("has_image")),
        "with_desc": sum(1 for r in records if r.get("has_image_desc")),
        "top1_gic": M.top1_given_gold_in_candidates(records),
        "ceiling": M.accuracy(M.gold_reachable(r) for r in scored),
        "nil": M.nil_scores(records),
        "nil_on_entities": M.nil_on_entities(records),
        "nil_overruled": M.nil_overruled(records),
        "llm_effect": M.llm_effect(records),
        "fallback_effect": M.fallback_effect(records),
        "resolved": M.resolved_scoring(records),
        "reliability": M.reliability(records),
        "wrong": [r for r in scored if not M.rec_correct(r)],
    }


def error_kind(rec: dict) -> str:
    """A short class of a failed record's error, for counting (malformed record, input field, model).

    The text up to its first ``": "`` outside quotes (a colon inside a quoted model name or path
    does not cut it), on one line, at most 80 characters.
    """
    if rec.get("where"):
        return "malformed record"
    text = " ".join(re.sub(r"^input '[^']*': ", "", str(rec.get("error") or "")).split())
    quote, cut = None, len(text)
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and (i == 0 or not text[i - 1].isalnum()):
            quote = ch
        elif ch == ":" and text[i + 1:i + 2] in (" ", "") and not re.fullmatch(r"\w+(Error|Exception)", text[:i]):
            cut = i  # an exception's class alone says too little: its message's first part is kept
            break
    kind = text[:cut].strip()
    return (kind if len(kind) <= 80 else kind[:77] + "...") or "?"


def _cell(value: Any, limit: int = 60) -> str:
    """A markdown table cell: one line, pipes escaped, cut to ``limit`` characters."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("|", "\\|") or "—"


def top3(rec: dict) -> str:
    """The top-3 candidates of the step that gave the final answer, with their fused probabilities."""
    entry = M.final_link(rec)
    if not entry or not entry.get("top"):
        return "—"
    return ", ".join(f"{t['name']} {t['p']:.2f}" for t in entry["top"][:3])


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``rounds.png`` into ``run_dir``; return the path of the report."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"report: no run folder at {run}")
    if not (run / PREDICTIONS).is_file():
        raise InputError(f"report: {run} has no {PREDICTIONS}; run `i2cr eval ... --out {run}` first")
    config = read_config(run) or {}
    records, notes = read_predictions(run)
    if not records:
        raise InputError(f"report: {run / PREDICTIONS} holds no prediction yet")
    s = summarize(records, config)
    settings = config.get("settings") or {}
    labels = round_labels(s["n_rounds"], s["clue_use"])
    exits_by_round: dict[Any, dict[str, float]] = {}
    for g in s["exits"]:
        key = None if g["status"] == "error" else g["stop_round"]
        kinds = exits_by_round.setdefault(key, {})
        kind = exit_kind(g["status"])
        kinds[kind] = kinds.get(kind, 0.0) + g["share"]
    dataset_name = Path(config.get("dataset") or "dataset").name
    plot_rounds(run / "rounds.png", s["per_round"],
                {"first candidate": s["first"]["acc"], "embedding": s["embedding"]["acc"]},
                labels, exits_by_round,
                f"{dataset_name}: {s['scored']} mentions, linker {settings.get('linker_model', '?')}",
                ceiling=s["ceiling"]["acc"] if s["ceiling"]["n"] else None,
                ceiling_label="ceiling: gold among the candidates" + (" or nil" if s["nil_gold"] else ""))
    if s["reliability"]["n"]:
        plot_reliability(run / "reliability.png", s["reliability"], f"{dataset_name}: fused confidence")
    elif (run / "reliability.png").exists():
        (run / "reliability.png").unlink()  # a stale figure of an earlier report
    path = run / "report.md"
    path.write_text(render(s, config, notes, records), encoding="utf-8")
    write_html(run, s, config, records, notes)
    return path


def render(s: dict[str, Any], config: dict[str, Any], notes: list[str], records: list[dict]) -> str:
    """The markdown of the report: one section after the other."""
    st = config.get("settings") or {}
    L: list[str] = []
    _header(L, s, config, st)
    _accuracy(L, s, st, str(config.get("dataset", "?")))
    if s["nil"]:
        render_nil(L, s["nil"])
    render_nil_on_entities(L, s.get("nil_on_entities"))
    render_nil_overruled(L, s.get("nil_overruled"))
    _rounds(L, s, st)
    _exits(L, s)
    render_llm_effect(L, s["llm_effect"])
    render_fallback_effect(L, s.get("fallback_effect"))
    render_reliability(L, s["reliability"])
    _cost(L, s, config)
    render_wrong(L, s["wrong"])
    _errors(L, records)
    if notes:
        L.append("\n## Notes\n")
        L.extend(f"- {n}" for n in notes)
    return "\n".join(L) + "\n"


def _header(L: list[str], s: dict[str, Any], config: dict[str, Any], st: dict[str, Any]) -> None:
    """Title, dataset, mentions, images, the main settings and the scoring the traces show."""
    dataset = config.get("dataset", "?")
    L.append(f"# I2CR evaluation: {Path(dataset).name}\n")
    sel = s["selected"]
    status = "complete" if sel is None or s["n"] >= sel else f"**incomplete: {s['n']} of {sel} mentions done**"
    sample = (f"random sample of {config['sample']} (seed {config['seed']})" if config.get("sample")
              else "all records") + (f", first {config['limit']}" if config.get("limit") is not None else "")
    L.append(f"- Dataset: `{dataset}` ({config.get('format', '?')}), labels: `{config.get('labels')}`")
    nil = f" ({s['nil_gold']} of them nil)" if s["nil_gold"] else ""
    L.append(f"- Mentions: {s['n']} ({sample}); run {status}; {s['scored']} with a gold answer{nil}; "
             f"{s['errors']} failed (counted wrong)")
    L.append(f"- Images found: {s['with_image']}; precomputed image descriptions: {s['with_desc']}")
    L.append(f"- Linker `{st.get('linker_model')}`, embedder `{st.get('embedding_model')}`, verifier "
             f"`{st.get('verifier')}`; clue order {st.get('clue_order')}, max_rounds {st.get('max_rounds')}, "
             f"alpha {st.get('reflection_threshold')}, tau {_or(st.get('verification_threshold'), 'scorer default')}, "
             f"fallback {st.get('fallback')}; linker_mode {st.get('linker_mode', 'llm')}, gate "
             f"{st.get('gate_threshold')}, llm_scoring {st.get('llm_scoring', 'choice')}, llm_in_clue_rounds "
             f"{st.get('llm_in_clue_rounds', True)} (all settings: `config.json`)\n")
    L.insert(-1, "- " + M.resolved_line(s["resolved"], st))
    if config.get("note"):
        L.insert(-1, f"- {config['note']}")


def _accuracy(L: list[str], s: dict[str, Any], st: dict[str, Any], dataset: str) -> None:
    """Top-1 of the run beside the baselines and the ceilings."""
    L.append("## Top-1 accuracy\n")
    L.append("Names compared as the benchmarks do (case, underscores and whitespace ignored); "
             "95% Wilson intervals; all on the same mentions.\n")
    L.append("| Method | Top-1 | 95% CI | correct / n |")
    L.append("|---|---:|---:|---:|")

    def row(name: str, a: dict) -> None:
        L.append(f"| {name} | {_pct(a['acc'])} | {_ci(a)} | {a['correct']} / {a['n']} |")

    row("**I2CR (this run)**", s["top1"])
    if s["top1_qid"]["n"]:
        row(f"I2CR, by QID ({s['top1_qid']['n']} gold QIDs)", s["top1_qid"])
    row("text round alone (round 1)", s["round1"])
    row("first candidate", s["first"])
    row(f"embedding similarity (`{st.get('embedding_model')}`)", s["embedding"])
    if s["top1_gic"]["n"]:
        row("I2CR, given the gold is among the candidates", s["top1_gic"])
    if s["recall"]["n"]:
        row("*gold among the candidates (upper bound)*", s["recall"])
    if s["nil"]:
        row("*gold among the candidates or nil (upper bound)*", s["ceiling"])
    if s["embedding_missing"]:
        L.append(f"\nEmbedding baseline unavailable on {s['embedding_missing']} mention(s): {s['embedding_reason']}")
    if "wikimel" in str(dataset).lower():
        L.append("\nPublished Top-1 on the full WikiMEL test set, for orientation (not the same mentions): "
                 + ", ".join(f"{n} {v}" for n, v in PUBLISHED_WIKIMEL) + ".")


def _rounds(L: list[str], s: dict[str, Any], st: dict[str, Any]) -> None:
    """Accuracy after each round, with the clue each round used."""
    L.append("\n## Accuracy after each round\n")
    L.append("The answer after round k is the final entity if the graph stopped at round k or earlier, "
             "else the round-1 answer (what the graph returns when stopped there, reference fallback). "
             "Round 1 is the text round; an empty clue costs no round, so round k uses the (k-1)-th "
             f"non-empty clue of the order {st.get('clue_order')}.\n")
    L.append("![accuracy per round](rounds.png)\n")
    L.append("| After round | Clue used (share) | Top-1 | 95% CI | Δ |")
    L.append("|---|---|---:|---:|---:|")
    prev = None
    for r in s["per_round"]:
        k = r["round"]
        use = s["clue_use"].get(k)
        clue = "text" if k == 1 else (", ".join(f"{c} {n / sum(use.values()):.0%}" for c, n in use.most_common())
                                      if use else "—")
        delta = "" if prev is None or math.isnan(prev) else f"{100 * (r['acc'] - prev):+.1f}"
        L.append(f"| {k} | {clue} | {_pct(r['acc'])} | {_ci(r)} | {delta} |")
        prev = r["acc"]


def _exits(L: list[str], s: dict[str, Any]) -> None:
    """Where the graph stopped, and the fused linker's text-first gate."""
    L.append("\n## Where the graph stopped\n")
    L.append("| Exit (status) | Stop round | Mentions | Share | Top-1 of group |")
    L.append("|---|---:|---:|---:|---:|")
    for g in s["exits"]:
        L.append(f"| {g['status']} | {g['stop_round'] if g['stop_round'] is not None else '—'} | {g['count']} | "
                 f"{_pct(g['share'])} | {_pct(g['acc'])} |")

    if s.get("gate"):
        L.append("\n## Text-first gate (fused linker, round 1)\n")
        L.append("| Round 1 | Mentions | Share | Top-1 of group (final answer) | Top-1 of group (round 1) |")
        L.append("|---|---:|---:|---:|---:|")
        for g in s["gate"]:
            L.append(f"| {g['group']} | {g['count']} | {_pct(g['share'])} | {_pct(g['acc'])} | {_pct(g['round1_acc'])} |")


def _cost(L: list[str], s: dict[str, Any], config: dict[str, Any]) -> None:
    """LLM calls, tokens and seconds per mention."""
    L.append("\n## Cost per mention\n")
    ok = s["cost"]["seconds"]["n"]
    L.append(f"Over the {ok} mention(s) that ran without error. Seconds are wall-clock per mention "
             f"(concurrency {config.get('concurrency', 1)}); the first mention of each process also loads the models, "
             "which p50 ignores.\n")
    for note in config.get("machine_busy") or []:
        L.append(f"**Not this machine's own speed:** {note}.\n")
    L.append("| | mean | p50 | p95 | total |")
    L.append("|---|---:|---:|---:|---:|")
    names = {"llm_calls": "LLM calls", "prompt_tokens": "prompt tokens", "completion_tokens": "completion tokens",
             "seconds": "seconds"}
    for key, label in names.items():
        c = s["cost"][key]
        d = 2 if key == "seconds" else 1
        L.append(f"| {label} | {_num(c['mean'], d)} | {_num(c['p50'], d)} | {_num(c['p95'], d)} | "
                 f"{_num(c['total'], d)} |")


def _errors(L: list[str], records: list[dict]) -> None:
    """The failed mentions, most common kinds first."""
    errors = [r for r in records if r.get("error")]
    if errors:
        L.append(f"\n## Errors ({len(errors)})\n")
        kinds = Counter(error_kind(r) for r in errors)
        L.append("Most common: " + "; ".join(f"{k} ×{n}" for k, n in kinds.most_common(5)) + "\n")
        for r in errors[:10]:
            L.append(f"- `{r['id']}`: {str(r['error'])[:300]}")
        if len(errors) > 10:
            L.append(f"- ... {len(errors) - 10} more in predictions.jsonl")


def render_nil(L: list[str], nil: dict[str, Any]) -> None:
    """Nil answers: precision, recall, F1 and Top-1 on nil and non-nil golds apart."""
    L.append("\n## Nil answers\n")
    L.append(f"{nil['gold']} gold answer(s) are nil (no entity of the list); the run answered nil "
             f"{nil['predicted']} time(s), {nil['tp']} of them rightly. A failed mention answers nothing.\n")
    L.append("| | value | 95% CI | count |")
    L.append("|---|---:|---:|---:|")
    for name, key, ci, count in (("nil precision", "precision", "precision_ci", f"{nil['tp']} / {nil['predicted']}"),
                                 ("nil recall", "recall", "recall_ci", f"{nil['tp']} / {nil['gold']}")):
        lo, hi = nil[ci]
        interval = "n/a" if math.isnan(lo) else f"[{100 * lo:.1f}, {100 * hi:.1f}]"
        L.append(f"| {name} | {_pct(nil[key])} | {interval} | {count} |")
    L.append(f"| nil F1 | {_pct(nil['f1'])} | | |")
    for name, key in (("Top-1 on nil golds", "top1_nil"), ("Top-1 on non-nil golds", "top1_non_nil")):
        a = nil[key]
        L.append(f"| {name} | {_pct(a['acc'])} | {_ci(a)} | {a['correct']} / {a['n']} |")


def render_nil_on_entities(L: list[str], noe: dict[str, Any] | None) -> None:
    """Nil answers on entity golds: what the nil decision cost, and the ids where it passed over the gold.
    Under the nil section when the set has nil golds; a section of its own when it has none."""
    if not noe or not noe["answers"]:
        return
    n, k = noe["answers"], len(noe["passed_over"])
    over = (f"{k} of them passed over the gold: it was the best candidate of the step that answered nil, so "
            f"answering that candidate would have been right")
    if noe["set_has_nil_gold"]:
        L.append(f"\n{n} nil answer(s) fell on entity golds; {over}.")
    else:
        L.append("\n## Nil answers\n")
        L.append(f"This set has no nil gold, so each of the {n} nil answer(s) is wrong. {over}; for the other "
                 f"{n - k}, the best candidate was not the gold either. A set whose golds are all entities can be "
                 f"run as one with `--set nil_threshold=off` (the fused and the llm linker then never answer nil).")
    if k:
        L.append(f"\nPassed over the gold: {_id_list(noe['passed_over'])}")


def render_nil_overruled(L: list[str], ov: dict[str, Any] | None) -> None:
    """The text answers ``nil_needs_text`` kept where the LLM's evidence would have answered nil."""
    if not ov or not ov["n"]:
        return
    L.append(f"\n`nil_needs_text` kept the text answer of {ov['n']} mention(s) where the LLM's evidence would "
             f"have made it nil: {ov['right']} of them ended right, {ov['nil_gold']} had a nil gold (there the nil "
             f"would have been right). Ids: {_id_list(ov['ids'])}")


def render_llm_effect(L: list[str], eff: dict[str, Any]) -> None:
    """Where the linker model helped or hurt, against the text prior of the step that asked it."""
    if not eff["asked"]:
        return
    L.append("\n## Where the LLM helped or hurt\n")
    known = eff["asked"] - eff["no_prior"]
    L.append(f"The linker model was asked on {eff['asked']} mention(s) (that ran, with a gold answer). The text "
             "prior is the top candidate of the fused evidence before the model's scores were added (`prior_top` "
             "of the first link step that asked it); *fixed* = the prior was wrong and the answer right, *broken* = "
             "the reverse.\n")
    if eff["no_prior"]:
        L.append(f"No text prior in the trace of {eff['no_prior']} of them (the `llm` linker mode, or a run made "
                 "before link steps recorded `prior_top`): left out below.\n")
    if not known:
        return
    L.append("| Against the text prior | fixed | broken | both right | both wrong | net |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for key, label in (("pick", "the model's round (its pick)"), ("final", "the final answer")):
        c = eff[key]
        L.append(f"| {label} | {c['fixed']} | {c['broken']} | {c['both right']} | {c['both wrong']} | "
                 f"{c['fixed'] - c['broken']:+d} |")
    _changed_ids(L, eff, " by the final answer")


def render_fallback_effect(L: list[str], eff: dict[str, Any] | None) -> None:
    """Round-1 answers that may give way when no round verified: refuted by the image, or nil."""
    if not eff:
        return
    rows = [(kind, group, eff[kind][group]) for kind in ("refuted", "nil") for group in ("replaced", "kept")]
    if not any(sum(c.values()) for _, _, c in rows):
        return
    L.append("\n## When no round verified: round-1 answers replaced\n")
    L.append("Two round-1 answers may give way to a clue round's when no round verified: one the image *refuted* "
             "(its person words against the entity's recorded sex; `refute_contradictions`), replaced by the "
             "unrefuted clue-round answer the image agreed with most; and a *nil*, which the image cannot verify, "
             "replaced by the last clue round's answer (`nil_fallback`). *Kept*: the final answer is still the "
             "round-1 one. Fixed / broken: against the round-1 answer.\n")
    L.append("| Round-1 answer | final | mentions | fixed | broken | both right | both wrong | net |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, group, c in rows:
        L.append(f"| {kind} | {group} | {sum(c.values())} | {c['fixed']} | {c['broken']} | {c['both right']} | "
                 f"{c['both wrong']} | {c['fixed'] - c['broken']:+d} |")
    _changed_ids(L, eff)


def _changed_ids(L: list[str], eff: dict[str, Any], by: str = "") -> None:
    """The ids of the mentions an effect fixed and broke (the first 20 of each)."""
    for label in ("fixed", "broken"):
        if eff[label]:
            L.append(f"\n{label.capitalize()}{by}: {_id_list(eff[label])}")


def _id_list(ids: list[str]) -> str:
    """The first 20 mention ids as code, `` ...`` when there are more."""
    return ", ".join(f"`{i}`" for i in ids[:20]) + (" ..." if len(ids) > 20 else "")


def render_reliability(L: list[str], rel: dict[str, Any]) -> None:
    """Calibration of the fused confidence of the final answer."""
    if not rel["n"]:
        return
    L.append("\n## Calibration of the fused confidence\n")
    L.append(f"Over the {rel['n']} final answers with a fused probability (not nil, not failed): does p=0.9 mean "
             f"90% right? Expected calibration error (10 equal-width bins): **{100 * rel['ece']:.1f} points**.\n")
    L.append("![reliability diagram](reliability.png)\n")
    L.append("| Confidence | Mentions | Mean confidence | Top-1 |")
    L.append("|---|---:|---:|---:|")
    for b in rel["bins"]:
        L.append(f"| {b['lo']:.1f}–{b['hi']:.1f} | {b['n']} | {_pct(b['conf'])} | {_pct(b['acc'])} |")


def render_wrong(L: list[str], wrong: list[dict]) -> None:
    """Every wrong answer, one row each."""
    L.append(f"\n## Wrong answers ({len(wrong)})\n")
    if not wrong:
        L.append("None.")
        return
    missing = sum(1 for r in wrong if r.get("gold_in_candidates") is False and not r["gold"].get("nil"))
    failed = sum(1 for r in wrong if r.get("error"))
    L.append(f"{missing} of the {len(wrong)} had their gold missing from the candidates (no linker could answer "
             f"them); {failed} failed (see Errors). Top-3: the fused probabilities of the step that gave the "
             "answer. All traces: `report.html`.\n")
    L.append("| id | mention | gold | prediction | status | stop round | gold in cands | LLM asked | top-3 (p) |")
    L.append("|---|---|---|---|---|---:|:---:|:---:|---|")
    for r in wrong:
        gic = r.get("gold_in_candidates")
        gic = "nil gold" if r["gold"].get("nil") else ("?" if gic is None else "yes" if gic else "**no**")
        status = "error" if r.get("error") else r.get("status")
        L.append(f"| `{_cell(r['id'], 30)}` | {_cell(r.get('mention') or '', 30)} | {_cell(M.entity_label(r['gold']), 40)} | "
                 f"{_cell(M.entity_label(r.get('prediction'), 'nil' if not r.get('error') else '(failed)'), 40)} | "
                 f"{_cell(status)} | {r.get('stop_round') or '—'} | {gic} | {'yes' if M.llm_asked(r) else 'no'} | "
                 f"{_cell(top3(r), 90)} |")
