"""``report.html``: one self-contained page of a run (summary, plots, every mention and its trace).

The page needs no server and no network: the figures are embedded as ``data:`` URLs, the
mentions and their traces as one compact JSON block (gzip, base64; the page inflates it with the
browser's ``DecompressionStream``), the script and the style inline, and a
Content-Security-Policy meta tag forbids every other source (``default-src 'none'``).

Open ``report.html?selftest=1`` to run the page's self-test (filters, sorting, opening a
trace); its results are written as JSON into ``<pre id="selftest">`` (``tests/test_report.py``
reads them with ``chromium --headless --dump-dom``). ``report.html#m=ID`` opens mention ``ID``.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from pathlib import Path
from typing import Any

from evals import metrics as M

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


def _r(x: Any, digits: int = 3) -> Any:
    """A probability or score rounded for the page (``None`` kept, NaN dropped)."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return x
    return None if math.isnan(x) else round(float(x), digits)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and v != "" and v != []}


def compact_step(t: dict) -> dict:
    """One trace entry in the page's short form (``k``: L link, R reflect, V verify, C clue, F final, O other)."""
    step = t.get("step")
    base = {"r": t.get("round")}
    if step == "link":
        prior = t.get("prior_top")
        llm = t.get("llm") if isinstance(t.get("llm"), dict) else {}
        return _drop_none({**base, "k": "L", "cl": t.get("clue"), "pk": M.entity_label(t.get("pick"), None),
                           "o": t.get("outcome") if t.get("outcome") != "entity" else None,
                           "cf": _r(t.get("confidence")),
                           "top": [[x.get("name"), _r(x.get("p"))] for x in t.get("top") or []],
                           "ga": t.get("gated"), "lm": llm.get("method"), "w": llm.get("weight"),
                           "md": t.get("model") or llm.get("model"),
                           "pr": [("nil, over " if prior.get("nil") else "") + str(prior.get("name")),
                                  _r(prior.get("p"))] if prior else None,
                           "raw": str(t["raw"])[:120] if t.get("raw") is not None else None,
                           "n": t.get("note"), "pn": _r(t.get("p_nil")), "nn": t.get("nil_note")})
    if step == "reflect":
        return _drop_none({**base, "k": "R", "sc": _r(t.get("reflection_score")),
                           "th": _r(t.get("reflection_threshold")), "ok": t.get("reflection_passed"),
                           "pk": M.entity_label(t.get("pick"), None), "n": t.get("note")})
    if step == "verify":
        return _drop_none({**base, "k": "V", "sc": _r(t.get("verification_score")),
                           "th": _r(t.get("verification_threshold")), "ok": t.get("verification_passed"),
                           "pk": M.entity_label(t.get("pick"), None), "by": t.get("scorer"), "n": t.get("note")})
    if step == "clue":
        return _drop_none({**base, "k": "C", "cl": t.get("clue"), "tx": str(t.get("text") or "")[:300],
                           "src": t.get("source"), "n": t.get("note")})
    if step == "final":
        return _drop_none({**base, "k": "F", "st": t.get("status"),
                           "pk": M.entity_label(t.get("entity"), None) if t.get("entity") is not None else "nil",
                           "n": t.get("note")})
    return _drop_none({**base, "k": "O", "s": step, "n": str(t.get("note") or "")[:300]})


def compact_record(r: dict) -> dict:
    """One mention for the page: the table's columns and its compact trace."""
    gold = r.get("gold")
    failed = bool(r.get("error"))
    return _drop_none({
        "i": str(r.get("id")), "m": r.get("mention"),
        "g": M.entity_label(gold, None), "gn": 1 if gold and gold.get("nil") else None,
        "p": "(failed)" if failed else (M.entity_label(r.get("prediction"), None) or "nil"),
        "ok": None if gold is None else int(bool(M.rec_correct(r))),
        "st": "error" if failed else r.get("status"), "sr": r.get("stop_round"),
        "gic": None if r.get("gold_in_candidates") is None else int(bool(r["gold_in_candidates"])),
        "llm": int(M.llm_asked(r)), "cf": _r(M.final_confidence(r)),
        "e": str(r["error"])[:300] if failed else None,
        "w": [str(w)[:200] for w in r.get("warnings") or []],
        "cost": [r.get("llm_calls"), (r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0),
                 _r(r.get("seconds"), 2)] if not failed else None,
        "t": [compact_step(t) for t in r.get("trace") or []],
    })


INTERNED = ("g", "p", "st", "n", "pk", "cl", "s", "md", "by", "src", "lm")
# the fields of each kind of step, in the order they are stored (an array per step; trailing nulls cut)
FIELDS = {"L": ["cl", "pk", "cf", "top", "ga", "n", "lm", "w", "pr", "md", "raw", "o", "pn", "nn"],
          "R": ["sc", "th", "ok", "pk", "n"], "V": ["sc", "th", "ok", "pk", "by", "n"],
          "C": ["cl", "tx", "src", "n"], "F": ["st", "pk", "n"], "O": ["s", "n"]}


def _num(v: Any) -> Any:
    """Booleans as 0/1 and whole floats as ints (``1`` is shorter than ``1.0``)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def pack(records: list[dict]) -> dict[str, Any]:
    """The page's data, compact: ``{"s": strings, "r": records}``.

    Repeated strings (names, statuses, notes) are stored once in ``s`` and referred to by index;
    a record's trace ``t`` is a list of rounds ``[round, step, step, ...]``, each step an array
    ``[kind, *FIELDS[kind]]``; a reflect or verify step leaves out a pick equal to the link step's
    before it; ``top`` and ``pr`` are flat ``[name, p, name, p, ...]``. ``unpack`` in the page's
    script turns it back into :func:`compact_record`'s shape.
    """
    strings: list[str] = []
    index: dict[str, int] = {}

    def intern(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value not in index:
            index[value] = len(strings)
            strings.append(value)
        return index[value]

    def step_array(t: dict, last_pick: Any) -> list:
        values = []
        for f in FIELDS[t["k"]]:
            v = t.get(f)
            if f in ("top", "pr") and v:
                v = [x for name, p in (v if f == "top" else [v]) for x in (intern(name), _num(p))]
            elif f == "pk" and t["k"] in "RV" and v == last_pick:
                v = None
            elif f in INTERNED:
                v = intern(v)
            values.append(_num(v))
        while values and values[-1] is None:
            values.pop()
        return [t["k"], *values]

    rows = []
    for r in records:
        c = compact_record(r)
        out = {k: _num(intern(v) if k in INTERNED else v) for k, v in c.items() if k != "t"}
        groups: list[list] = []
        last_pick = None
        for t in c.get("t", []):
            if not groups or groups[-1][0] != t.get("r"):
                groups.append([t.get("r")])
            groups[-1].append(step_array(t, last_pick))
            if t["k"] == "L":
                last_pick = t.get("pk")
        if groups:
            out["t"] = groups
        rows.append(out)
    return {"s": strings, "r": rows}


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _acc_row(name: str, a: dict) -> str:
    ci = "n/a" if math.isnan(a["lo"]) else f"[{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]"
    return (f"<tr><td>{html.escape(name)}</td><td class=n>{_pct(a['acc'])}</td><td class=n>{ci}</td>"
            f"<td class=n>{a['correct']} / {a['n']}</td></tr>")


def summary_html(s: dict[str, Any], config: dict[str, Any], notes: list[str]) -> str:
    """The summary block: what was run, Top-1 with its bounds, nil, the LLM's effect, calibration, cost."""

    st = config.get("settings") or {}
    e = html.escape
    out = [(f"<p>Dataset <code>{e(str(config.get('dataset', '?')))}</code>: {s['n']} mentions, {s['scored']} with a "
            f"gold answer ({s['nil_gold']} nil), {s['errors']} failed (counted wrong). Linker "
            f"<code>{e(str(st.get('linker_model')))}</code> ({e(str(st.get('linker_mode', 'llm')))} mode), verifier "
            f"<code>{e(str(st.get('verifier')))}</code>, clue order {e(str(st.get('clue_order')))}.</p>"),
           f"<p>{e(M.resolved_line(s['resolved'], st))}.</p>",
           "<table class=sum><tr><th>Method</th><th>Top-1</th><th>95% CI</th><th>correct / n</th></tr>",
           _acc_row("I2CR (this run)", s["top1"]), _acc_row("text round alone (round 1)", s["round1"]),
           _acc_row("first candidate", s["first"]), _acc_row("embedding similarity", s["embedding"])]
    if s["top1_gic"]["n"]:
        out.append(_acc_row("I2CR, given the gold is among the candidates", s["top1_gic"]))
    if s["recall"]["n"]:
        out.append(_acc_row("gold among the candidates (upper bound)", s["recall"]))
    out.append("</table>")
    nil = s.get("nil")
    if nil:
        out.append(f"<p>Nil: precision {_pct(nil['precision'])} ({nil['tp']} / {nil['predicted']}), recall "
                   f"{_pct(nil['recall'])} ({nil['tp']} / {nil['gold']}), F1 {_pct(nil['f1'])}; Top-1 on nil golds "
                   f"{_pct(nil['top1_nil']['acc'])}, on non-nil golds {_pct(nil['top1_non_nil']['acc'])}.</p>")
    noe = s.get("nil_on_entities")
    if noe and noe["answers"]:
        out.append(f"<p>Nil answers on entity golds: {noe['answers']}"
                   + ("" if noe["set_has_nil_gold"] else " (the set has no nil gold: all of them wrong)")
                   + f"; {len(noe['passed_over'])} of them passed over the gold (it was the best candidate).</p>")
    ov = s.get("nil_overruled")
    if ov and ov["n"]:
        out.append(f"<p>nil_needs_text kept the text answer of {ov['n']} mention(s) the LLM's evidence would have "
                   f"made nil: {ov['right']} ended right, {ov['nil_gold']} had a nil gold.</p>")
    eff = s["llm_effect"]
    if eff["asked"]:
        c = eff["final"]
        known = eff["asked"] - eff["no_prior"]
        out.append(f"<p>LLM asked on {eff['asked']} mention(s)" + (
            f"; against the text prior, the final answer fixed {c['fixed']} and broke {c['broken']} "
            f"(net {c['fixed'] - c['broken']:+d}; {c['both right']} both right, {c['both wrong']} both wrong)"
            if known else "; no text prior recorded in the traces") + ".</p>")
    rel = s["reliability"]
    if rel["n"]:
        out.append(f"<p>Calibration of the fused confidence: ECE {100 * rel['ece']:.1f} points over {rel['n']} "
                   "answers (reliability diagram below).</p>")
    cost = s["cost"]
    out.append(f"<p>Cost per mention (mean): {cost['llm_calls']['mean']:.2f} LLM calls, "
               f"{cost['prompt_tokens']['mean'] + cost['completion_tokens']['mean']:.0f} tokens, "
               f"{cost['seconds']['mean']:.2f} s; totals {cost['llm_calls']['total']:.0f} calls, "
               f"{cost['prompt_tokens']['total'] + cost['completion_tokens']['total']:.0f} tokens, "
               f"{cost['seconds']['total']:.1f} s.</p>" if cost["seconds"]["n"] else "<p>No mention ran.</p>")
    if notes:
        out.append("<ul>" + "".join(f"<li>{e(str(n))}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def _img(path: Path, alt: str, cls: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class={cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(s: dict[str, Any], config: dict[str, Any], records: list[dict], notes: list[str],
         figures: list[tuple[Path, str, str]]) -> str:
    """The whole page as one string."""
    raw = json.dumps(pack(records), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    data = base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")  # no "<" can occur
    title = f"I2CR evaluation: {Path(str(config.get('dataset') or 'dataset')).name}"
    imgs = "".join(_img(p, alt, cls) for p, alt, cls in figures)
    return (TEMPLATE.replace("%CSP%", CSP).replace("%TITLE%", html.escape(title))
            .replace("%SUMMARY%", summary_html(s, config, notes)).replace("%FIGURES%", imgs)
            .replace("%INTERNED%", json.dumps(list(INTERNED))).replace("%FIELDS%", json.dumps(FIELDS)).replace("%DATA%", data))


def write_html(run: str | Path, s: dict[str, Any], config: dict[str, Any], records: list[dict],
               notes: list[str]) -> Path:
    """Write ``report.html`` into the run folder (after the figures, which it embeds); return its path."""
    run = Path(run)
    figures = [(run / "rounds.png", "accuracy per round and exits", "wide"),
               (run / "reliability.png", "reliability diagram of the fused confidence", "square")]
    path = run / "report.html"
    path.write_text(page(s, config, records, notes, figures), encoding="utf-8")
    return path


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 18px;background:#243447;color:#fff}header h1{font-size:18px;margin:0}
main{padding:10px 18px}section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:10px 0}
h2{font-size:15px;margin:4px 0 8px}code{background:#f0f0f0;padding:0 3px;border-radius:3px}
table{border-collapse:collapse}td,th{padding:3px 7px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.n,th.n{text-align:right}table.sum td{padding:2px 10px}
#figs div.row{display:flex;gap:10px;align-items:flex-start}#figs img{height:auto;border:1px solid #eee;min-width:0}
#figs img.wide{flex:0 1 62%;max-width:62%}#figs img.square{flex:0 1 34%;max-width:34%}
#controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-bottom:6px}
#wrap{display:flex;gap:12px;align-items:flex-start}#tablebox{flex:1 1 62%;max-height:75vh;overflow:auto}
#mentions td{padding:2px 5px;font-size:12.5px;max-width:125px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
#mentions th{padding:3px 5px;font-size:12.5px;cursor:pointer;position:sticky;top:0;background:#e9eef3;user-select:none;white-space:nowrap}
#mentions th.asc:after{content:" \25B2"}#mentions th.desc:after{content:" \25BC"}
#mentions tbody tr{cursor:pointer}#mentions tbody tr:hover{background:#eef5ff}
#mentions tr.wrong td:first-child{border-left:4px solid #d33}#mentions tr.right td:first-child{border-left:4px solid #3a3}
#mentions tr.sel{background:#dde9ff}
#trace{flex:1 1 36%;max-height:75vh;overflow:auto;background:#fff;border:1px solid #ccc;border-radius:6px;padding:8px 12px}
.round{border-left:3px solid #8aa;margin:8px 0;padding:2px 10px}.round h3{font-size:13px;margin:2px 0}
.bar{display:flex;align-items:center;gap:6px;font-size:12px;margin:1px 0}
.bar .lab{width:190px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{width:160px;height:11px;background:#eee;position:relative}
.bar .fill{height:11px;background:#4a7fc1}.bar.pick .fill{background:#e08a1e}
.bar .tau{position:absolute;top:-2px;width:2px;height:15px;background:#c00}
.ok{color:#276b27;font-weight:600}.bad{color:#b22;font-weight:600}.muted{color:#777;font-size:12px}
.cluetext{background:#f6f3e8;padding:2px 6px;border-radius:3px}
</style></head>
<body><header><h1>%TITLE%</h1></header><main>
<section id=summary><h2>Summary</h2>%SUMMARY%</section>
<section id=figs><h2>Figures</h2><div class=row>%FIGURES%</div></section>
<section id=mentions-section><h2>Mentions</h2>
<div id=controls>
<label><input type=checkbox id=f-wrong> wrong only</label>
<label><input type=checkbox id=f-llm> LLM asked</label>
<label>status <select id=f-status><option value="">any</option></select></label>
<label>nil <select id=f-nil><option value="">any</option><option value="gold">nil gold</option>
<option value="nongold">non-nil gold</option><option value="pred">nil answer</option></select></label>
<label>search <input id=f-q size=18></label>
<span id=count class=muted></span></div>
<div id=wrap><div id=tablebox><table id=mentions><thead><tr>
<th data-k="i">id</th><th data-k="m">mention</th><th data-k="g">gold</th><th data-k="p">prediction</th>
<th data-k="st">status</th><th data-k="sr" class=n>stop</th><th data-k="gic" title="gold among the candidates">in cands</th>
<th data-k="llm">LLM</th><th data-k="cf" class=n>p</th></tr></thead><tbody></tbody></table></div>
<div id=trace><p class=muted>Click a mention to see its trace: each round's candidates with their fused
probabilities, the clue, the verifier's score against &tau;, the final decision.</p></div></div>
</section>
<pre id=selftest hidden></pre>
</main>
<script id=data type="application/octet-stream">%DATA%</script>
<script>
"use strict";
const INTERNED = %INTERNED%, FIELDS = %FIELDS%;
function unpack(packed) {  // see pack() in evals/html_report.py
  const S = packed.s, str = (v) => (typeof v === "number" ? S[v] : v);
  const pairs = (flat) => { const out = []; for (let i = 0; i < flat.length; i += 2) out.push([str(flat[i]), flat[i + 1]]); return out; };
  return packed.r.map((r) => {
    for (const k of INTERNED) if (k in r) r[k] = str(r[k]);
    const steps = [];
    let lastPick = null;
    for (const [round, ...group] of r.t || []) for (const [k, ...values] of group) {
      const t = {k: k, r: round};
      FIELDS[k].forEach((f, i) => { if (values[i] != null) t[f] = values[i]; });
      for (const f of INTERNED) if (f in t) t[f] = str(t[f]);
      if (t.top) t.top = pairs(t.top);
      if (t.pr) t.pr = pairs(t.pr)[0];
      if (k === "L") lastPick = t.pk == null ? null : t.pk;
      else if ((k === "R" || k === "V") && t.pk == null) t.pk = lastPick;
      steps.push(t);
    }
    r.t = steps;
    return r;
  });
}
let DATA = [], statuses = [];
async function loadData() {  // the data block is gzip-compressed JSON in base64 (see write_html)
  const bin = atob(document.getElementById("data").textContent.trim());
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const reader = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip")).getReader();
  const chunks = [];
  for (;;) { const {done, value} = await reader.read(); if (done) break; chunks.push(value); }
  return unpack(JSON.parse(new TextDecoder().decode(await new Blob(chunks).arrayBuffer())));
}
const $ = (id) => document.getElementById(id);
const tbody = document.querySelector("#mentions tbody");
let sortKey = null, sortDir = 1, current = null;
function esc(s) { return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c])); }
function yn(v) { return v == null ? "?" : (v ? "yes" : "no"); }
function visible(r) {
  if ($("f-wrong").checked && r.ok !== 0) return false;
  if ($("f-llm").checked && !r.llm) return false;
  const st = $("f-status").value; if (st && (r.st || "?") !== st) return false;
  const nil = $("f-nil").value;
  if (nil === "gold" && !r.gn) return false;
  if (nil === "nongold" && (r.gn || r.g == null)) return false;
  if (nil === "pred" && r.p !== "nil") return false;
  const q = $("f-q").value.trim().toLowerCase();
  if (q && ![r.i, r.m, r.g, r.p].some((x) => String(x || "").toLowerCase().includes(q))) return false;
  return true;
}
function cmp(a, b) {
  const x = a[sortKey], y = b[sortKey];
  if (x == null && y == null) return 0; if (x == null) return 1; if (y == null) return -1;
  if (typeof x === "number" && typeof y === "number") return (x - y) * sortDir;
  return String(x).localeCompare(String(y), undefined, {numeric: true}) * sortDir;
}
function render() {
  let rows = DATA.filter(visible);
  if (sortKey) rows = rows.slice().sort(cmp);
  const html = [];
  for (const r of rows) {
    const cls = (r.ok === 0 ? "wrong" : r.ok === 1 ? "right" : "") + (current === r.i ? " sel" : "");
    html.push(`<tr class="${cls}" data-id="${esc(r.i)}"><td>${esc(r.i)}</td><td title="${esc(r.m)}">${esc(r.m)}</td>` +
      `<td title="${esc(r.g)}">${esc(r.g == null ? "—" : r.g)}</td><td title="${esc(r.p)}">${esc(r.p)}</td><td>${esc(r.st)}</td><td class=n>${r.sr == null ? "—" : r.sr}</td><td>${r.gn ? "nil gold" : yn(r.gic)}</td>` +
      `<td>${r.llm ? "yes" : "no"}</td><td class=n>${r.cf == null ? "" : r.cf.toFixed(2)}</td></tr>`);
  }
  tbody.innerHTML = html.join("");
  $("count").textContent = `${rows.length} of ${DATA.length} mentions`;
  return rows.length;
}
function bar(name, p, isPick, tau) {
  const w = Math.max(0, Math.min(1, p || 0)) * 100;
  const t = tau == null ? "" : `<span class=tau style="left:${Math.min(1, tau) * 100}%" title="threshold ${tau}"></span>`;
  return `<div class="bar${isPick ? " pick" : ""}"><span class=lab title="${esc(name)}">${esc(name)}</span>` +
    `<span class=track><span class=fill style="width:${w}%;display:block"></span>${t}</span><span>${p == null ? "?" : p.toFixed(3)}</span></div>`;
}
function open(id) {
  const r = DATA.find((x) => x.i === id); if (!r) return false;
  current = id;
  for (const tr of tbody.children) tr.classList.toggle("sel", tr.dataset.id === id);
  const h = [`<h2>Mention <code>${esc(r.i)}</code>: ${esc(r.m)}</h2>`,
    `<p>gold <b>${esc(r.g == null ? "—" : r.g)}</b>, answer <b>${esc(r.p)}</b> ` +
    (r.ok === 1 ? "<span class=ok>right</span>" : r.ok === 0 ? "<span class=bad>wrong</span>" : "") +
    `; gold among the candidates: ${r.gn ? "nil gold" : yn(r.gic)}; LLM asked: ${r.llm ? "yes" : "no"}` +
    (r.cost ? `; cost ${r.cost[0]} LLM call(s), ${r.cost[1]} tokens, ${r.cost[2]} s` : "") + "</p>"];
  if (r.e) h.push(`<p class=bad>failed: ${esc(r.e)}</p>`);
  for (const w of r.w || []) h.push(`<p class=muted>warning: ${esc(w)}</p>`);
  const rounds = new Map();
  for (const t of r.t || []) { const k = t.r == null ? 0 : t.r; if (!rounds.has(k)) rounds.set(k, []); rounds.get(k).push(t); }
  for (const [k, steps] of rounds) {
    const clue = steps.find((t) => t.k === "L" && t.cl);
    h.push(`<div class=round data-round="${k}"><h3>Round ${k}${k === 1 ? " (text)" : clue ? " (clue: " + esc(clue.cl) + ")" : ""}</h3>`);
    for (const t of steps) {
      if (t.k === "C") h.push(`<div>clue <b>${esc(t.cl)}</b>${t.src ? " (" + esc(t.src) + ")" : ""}: ` +
        (t.tx ? `<span class=cluetext>${esc(t.tx)}</span>` : t.n ? "" : "<i>empty</i>") + (t.n ? ` <span class=muted>${esc(t.n)}</span>` : "") + "</div>");
      else if (t.k === "L") {
        h.push(`<div>link${t.md ? " (" + esc(t.md) + ")" : ""}: pick <b>${esc(t.pk || t.o || "none")}</b>` +
          (t.cf != null ? `, ${t.pk ? "fused" : "best candidate's"} p=${t.cf.toFixed(3)}` : "") + (t.pn != null ? `, nil p=${t.pn.toFixed(3)}` : "") +
          (t.lm ? `, LLM scored by ${esc(t.lm)} (weight ${t.w})` : t.ga ? ", LLM not asked" : "") +
          (t.pr ? `; text prior's top: ${esc(t.pr[0])} ${t.pr[1] == null ? "" : t.pr[1].toFixed(3)}` : "") +
          (t.raw ? `; model said <code>${esc(t.raw)}</code>` : "") + "</div>");
        for (const [name, p] of t.top || []) h.push(bar(name, p, name === t.pk, null));
        if (t.nn) h.push(`<div>${esc(t.nn)}</div>`);
        if (t.n) h.push(`<div class=muted>${esc(t.n)}</div>`);
      } else if ((t.k === "R" || t.k === "V") && t.sc == null) {
        h.push(`<div>${t.k === "R" ? "reflection" : "verify"}: <span class=muted>${esc(t.n || "no score")}</span></div>`);
      } else if (t.k === "R") h.push(`<div>reflection (&alpha;) on ${esc(t.pk)}:</div>` + bar(`score vs α=${t.th}`, t.sc, false, t.th) +
        `<div class="${t.ok ? "ok" : "bad"}">${t.ok ? "passed" : "below α"}</div>` + (t.n ? `<div class=muted>${esc(t.n)}</div>` : ""));
      else if (t.k === "V") h.push(`<div>verify ${esc(t.pk)}${t.by ? " (" + esc(t.by) + ")" : ""}:</div>` +
        bar(`score vs τ=${t.th}`, t.sc, false, t.th) + `<div class="${t.ok ? "ok" : "bad"}">${t.ok ? "verified" : "not verified"}</div>` +
        (t.n ? `<div class=muted>${esc(t.n)}</div>` : ""));
      else if (t.k === "F") h.push(`<div class=final>final decision: <b>${esc(t.st)}</b> &rarr; <b>${esc(t.pk)}</b>` +
        (t.n ? ` <span class=muted>${esc(t.n)}</span>` : "") + "</div>");
      else h.push(`<div class=muted>${esc(t.s)}: ${esc(t.n)}</div>`);
    }
    h.push("</div>");
  }
  if (!(r.t || []).length && !r.e) h.push("<p class=muted>No trace recorded.</p>");
  $("trace").innerHTML = h.join("");
  if (location.hash !== "#m=" + encodeURIComponent(id)) history.replaceState(null, "", "#m=" + encodeURIComponent(id));
  return true;
}
tbody.addEventListener("click", (ev) => { const tr = ev.target.closest("tr"); if (tr) open(tr.dataset.id); });
for (const id of ["f-wrong", "f-llm", "f-status", "f-nil", "f-q"]) $(id).addEventListener("input", render);
for (const th of document.querySelectorAll("#mentions th")) th.addEventListener("click", () => {
  const k = th.dataset.k; sortDir = sortKey === k ? -sortDir : 1; sortKey = k;
  for (const o of document.querySelectorAll("#mentions th")) o.classList.remove("asc", "desc");
  th.classList.add(sortDir > 0 ? "asc" : "desc"); render();
});
const violations = [];
document.addEventListener("securitypolicyviolation", (ev) => violations.push(ev.blockedURI || "?"));
function ids() { return [...tbody.children].map((tr) => tr.dataset.id); }
function selftest() {
  const out = {all: render()};
  const set = (id, v) => { const el = $(id); if (el.type === "checkbox") el.checked = v; else el.value = v; el.dispatchEvent(new Event("input")); };
  set("f-wrong", true); out.wrong = ids();
  set("f-wrong", false); set("f-llm", true); out.llm = ids();
  set("f-llm", false); set("f-nil", "gold"); out.nil_gold = ids();
  set("f-nil", "pred"); out.nil_pred = ids();
  set("f-nil", ""); out.status = {};
  for (const s of statuses) { set("f-status", s); out.status[s] = ids(); }
  set("f-status", "");
  const th = document.querySelector('#mentions th[data-k="i"]'); th.click(); out.sorted_asc = ids(); th.click(); out.sorted_desc = ids();
  const wrong = DATA.find((r) => r.ok === 0 && (r.t || []).length) || DATA[0];
  const row = tbody.querySelector(`tr[data-id="${CSS.escape(wrong.i)}"]`); row.click();
  out.opened = current; out.trace_text = $("trace").innerText;
  out.trace_rounds = $("trace").querySelectorAll(".round").length; out.trace_bars = $("trace").querySelectorAll(".bar").length;
  out.resources = performance.getEntriesByType("resource").map((e) => e.name);
  out.images = [...document.images].map((i) => ({src: i.src.slice(0, 22), ok: i.complete && i.naturalWidth > 0}));
  out.violations = violations;
  $("selftest").textContent = JSON.stringify(out); $("selftest").hidden = false;
  document.body.dataset.selftest = "done";
}
async function main() {
  if (typeof DecompressionStream === "undefined") {
    $("count").textContent = "This browser cannot read the page's compressed data (it needs DecompressionStream: " +
      "Chrome 80+, Firefox 113+, Safari 16.4+).";
    return;
  }
  DATA = await loadData();
  statuses = [...new Set(DATA.map((r) => r.st || "?"))].sort();
  for (const s of statuses) { const o = document.createElement("option"); o.value = s; o.textContent = s; $("f-status").appendChild(o); }
  render();
  if (location.hash.startsWith("#m=") && open(decodeURIComponent(location.hash.slice(3)))) $("mentions-section").scrollIntoView();
  document.body.dataset.ready = "1";
  if (new URLSearchParams(location.search).get("selftest") === "1") selftest();
}
main().catch((err) => { $("count").textContent = "could not read the page's data: " + err; });
</script></body></html>
"""
