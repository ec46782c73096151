"""Reports a researcher can act on: report.md tables, ``i2cr compare``, and report.html in a real browser.

The fixture runs are built here record by record, in the shape ``evals/runner.py`` writes (the
trace entries copy real fused-linker traces), so every expected figure can be checked by hand.
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from evals import metrics as M
from evals.compare import main as compare_main
from evals.report import error_kind, write_report
from graph.cli import main as cli_main

SETTINGS = {"linker_model": "llamacpp:tiny.gguf", "embedding_model": "bow", "verifier": "table",
            "linker_mode": "fused", "llm_scoring": "auto", "llm_weight": None, "gate_threshold": 0.9,
            "clue_order": ["ocr", "objects", "scene", "caption"], "max_rounds": 4}


def ent(name: str | None) -> dict | None:
    return None if name is None else {"qid": "Q" + str(abs(hash(name)) % 10**6), "name": name}


def link(rnd: int, pick: str | None, conf: float | None, top: list, *, llm: bool = False,
         prior: tuple[str, float] | None = None, clue: str | None = None, weight: float = 1.5) -> dict:
    """A fused link entry as nodes/link_fused.py writes it."""
    t = {"step": "link", "round": rnd, "clue": clue, "attempt": 1, "outcome": "entity" if pick else "nil",
         "mode": "fused", "pick": ent(pick), "confidence": conf, "top": [{"name": n, "p": p} for n, p in top],
         "gated": not llm}
    if llm:
        t["llm"] = {"model": "LlamaCpp", "method": "logits", "raw": None, "round": rnd, "weight": weight}
    else:
        t["note"] = f"text evidence decisive (top p={top[0][1]:.3f} >= gate 0.9): LLM not asked"
    if prior:
        t["prior_top"] = {**ent(prior[0]), "p": prior[1]}
    return t


def verify(rnd: int, pick: str, score: float, clue: str | None = None) -> dict:
    return {"step": "verify", "round": rnd, "clue": clue, "pick": ent(pick), "verification_score": score,
            "verification_passed": score >= 0.5, "verification_threshold": 0.5, "scorer": "table"}


def record(i: str, gold: str | None, pred: str | None, status: str, trace: list, *, stop: int = 1,
           gic: bool | None = True, round1: str | None = "same", calls: int = 0, error: str | None = None) -> dict:
    gold_e = None if gold is None else ({"nil": True} if gold == "nil" else {"name": gold, "qid": None})
    if error:
        return {"id": i, "mention": None, "gold": gold_e, "prediction": None, "correct": False, "error": error,
                "seconds": 0.0}
    trace = [{"round": 1, "step": "retrieve", "note": "3 candidates from input"}, *trace,
             {"step": "final", "round": stop, "status": status, "entity": ent(pred)}]
    rec = {"id": i, "mention": f"mention {i}", "gold": gold_e, "prediction": ent(pred),
           "status": status, "stop_round": stop, "round1": ent(pred if round1 == "same" else round1),
           "llm_calls": calls, "prompt_tokens": 100 * calls, "completion_tokens": calls, "seconds": 0.5,
           "has_image": True, "has_image_desc": False,
           "baselines": {"first": ent("First"), "embedding": ent(gold if gold not in (None, "nil") else "Emb")},
           "warnings": [], "trace": trace}
    if gold is not None:
        rec["gold_in_candidates"] = bool(gic) if gold != "nil" else False
    return rec


def fixture_records() -> list[dict]:
    """Ten mentions: 4 right, 5 wrong (one failed), 1 unlabelled; 2 nil golds; the LLM fixes one and breaks one."""
    return [
        record("m1", "Alpha", "Alpha", "text_verified",
               [link(1, "Alpha", 0.95, [("Alpha", 0.95), ("Beta", 0.03)]), verify(1, "Alpha", 0.8)]),
        # the LLM fixed a wrong text prior (Zeta) into the gold (Beta)
        record("m2", "Beta", "Beta", "text_verified",
               [link(1, "Beta", 0.7, [("Beta", 0.7), ("Zeta", 0.2)], llm=True, prior=("Zeta", 0.6)),
                verify(1, "Beta", 0.9)], calls=1),
        # the LLM broke a right text prior (Alpha) into Omega
        record("m3", "Alpha", "Omega", "text_verified",
               [link(1, "Omega", 0.6, [("Omega", 0.6), ("Alpha", 0.35)], llm=True, prior=("Alpha", 0.55)),
                verify(1, "Omega", 0.7)], calls=1),
        record("m4", "nil", None, "nil", [link(1, None, None, [("Kappa", 0.2), ("Iota", 0.1)])]),
        record("m5", "nil", "Kappa", "text_verified",
               [link(1, "Kappa", 0.9, [("Kappa", 0.9), ("Iota", 0.05)], llm=True, prior=("Kappa", 0.8)),
                verify(1, "Kappa", 0.6)], calls=1),
        # gold missing from the candidates; three rounds, then the text answer as fallback
        record("m6", "Gamma", "Pi", "fallback",
               [link(1, "Pi", 0.55, [("Pi", 0.55), ("Rho", 0.3), ("Sigma", 0.1)]), verify(1, "Pi", 0.1),
                {"step": "clue", "round": 2, "clue": "ocr", "text": "RHO LTD", "source": "precomputed"},
                link(2, "Rho", 0.5, [("Rho", 0.5), ("Pi", 0.4)], clue="ocr"), verify(2, "Rho", 0.2, "ocr"),
                {"step": "clue", "round": 3, "clue": "caption", "text": "a man at a desk", "source": "precomputed"},
                link(3, "Sigma", 0.45, [("Sigma", 0.45), ("Pi", 0.4)], clue="caption"),
                verify(3, "Sigma", 0.3, "caption")], stop=3, gic=False),
        record("m7", "Delta", None, "", [],
               error="linker model 'openai:gpt-4o': connection refused: http://localhost:9/v1: retry later"),
        record("m8", "Epsilon", None, "nil", [link(1, None, None, [("Epsilon", 0.3), ("Tau", 0.25)])]),
        record("m9", "Eta", "Eta", "clue_verified",
               [link(1, "Theta", 0.6, [("Theta", 0.6), ("Eta", 0.35)]), verify(1, "Theta", 0.2),
                {"step": "clue", "round": 2, "clue": "scene", "text": "a stadium", "source": "precomputed"},
                link(2, "Eta", 0.85, [("Eta", 0.85), ("Theta", 0.1)], clue="scene"), verify(2, "Eta", 0.9, "scene")],
               stop=2, round1="Theta"),
        record("m10", None, "Alpha", "text_verified", [link(1, "Alpha", 0.99, [("Alpha", 0.99)])]),
    ]


def write_run(path: Path, records: list[dict], **settings) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"dataset": "fixture.json", "labels": "fixture_label.json",
                                                  "format": "i2cr", "selected": len(records),
                                                  "settings": {**SETTINGS, **settings}}))
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


WRONG = ["m3", "m5", "m6", "m7", "m8"]


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The rows of the first table under a ``## heading`` (cells stripped)."""
    section = md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows[2:]]


# ---- report.md --------------------------------------------------------------------------------------

def test_report_lists_every_wrong_answer_with_the_facts_to_act_on(tmp_path):
    run = write_run(tmp_path / "run", fixture_records())
    md = write_report(run).read_text()
    rows = {r[0].strip("`"): r for r in table_rows(md, "Wrong answers")}
    assert sorted(rows) == WRONG
    assert "## Wrong answers (5)" in md
    # id, mention, gold, prediction, status, stop round, gold in cands, LLM asked, top-3
    assert rows["m3"][1:] == ["mention m3", "Alpha", "Omega", "text_verified", "1", "yes", "yes",
                              "Omega 0.60, Alpha 0.35"]
    assert rows["m6"][2:8] == ["Gamma", "Pi", "fallback", "3", "**no**", "no"]
    assert rows["m6"][8] == "Pi 0.55, Rho 0.30, Sigma 0.10"  # the top-3 of the step that gave the answer
    assert rows["m5"][2:7] == ["nil", "Kappa", "text_verified", "1", "nil gold"]
    assert rows["m7"][3:5] == ["(failed)", "error"]
    assert rows["m8"][3] == "nil"
    assert "1 of the 5 had their gold missing from the candidates" in md


def test_report_top1_given_gold_in_candidates_nil_scores_and_llm_effect(tmp_path):
    run = write_run(tmp_path / "run", fixture_records())
    md = write_report(run).read_text()
    top = {r[0]: r for r in table_rows(md, "Top-1 accuracy")}
    assert top["**I2CR (this run)**"][3] == "4 / 9"  # m10 has no gold
    assert top["I2CR, given the gold is among the candidates"][1:] == ["60.0%", "[23.1, 88.2]", "3 / 5"]
    nil = {r[0]: r for r in table_rows(md, "Nil answers")}
    assert nil["nil precision"][1] == "50.0%" and nil["nil precision"][3] == "1 / 2"  # m4 right, m8 wrong
    assert nil["nil recall"][1] == "50.0%" and nil["nil recall"][3] == "1 / 2"  # m4 found, m5 missed
    assert nil["nil F1"][1] == "50.0%"
    assert nil["Top-1 on nil golds"][3] == "1 / 2" and nil["Top-1 on non-nil golds"][3] == "3 / 7"
    effect = {r[0]: r[1:] for r in table_rows(md, "Where the LLM helped or hurt")}
    assert effect["the final answer"] == ["1", "1", "0", "1", "+0"]  # fixed m2, broke m3, m5 both wrong
    assert "Fixed by the final answer: `m2`" in md and "Broken by the final answer: `m3`" in md
    # the resolved settings, read from the traces (the header only says llm_scoring auto)
    assert "Resolved from the traces: LLM scoring letters (logits) on 3 mention(s); LLM weight 1.5; " \
           "text-first gate 0.9" in md


def test_report_says_which_nil_answers_passed_over_the_gold(tmp_path):
    """Nil answers on entity golds: those whose best candidate was the gold are named; a set without nil golds
    gets a section of its own saying every nil answer is wrong there and how to run it without nil."""
    md = write_report(write_run(tmp_path / "with-nil", fixture_records())).read_text()
    nil_section = md.split("## Nil answers", 1)[1].split("\n## ", 1)[0]
    assert "1 nil answer(s) fell on entity golds; 1 of them passed over the gold" in nil_section
    assert "Passed over the gold: `m8`" in nil_section  # Epsilon was m8's best candidate; m4's gold is nil
    records = [
        record("w1", "Levy", None, "nil", [link(1, None, None, [("Levy", 0.4), ("Lev", 0.1)])]),  # passed over
        record("w2", "Day", None, "nil", [link(1, None, None, [("Stockwell Day", 0.2), ("Day", 0.1)])]),  # not best
        record("w3", "Early", None, "nil", [link(1, None, None, [("Other", 0.3)])], gic=False),  # not listed
        record("w4", "Weiller", "Weiller", "text_verified", [link(1, "Weiller", 0.9, [("Weiller", 0.9)])]),
    ]
    md = write_report(write_run(tmp_path / "no-nil", records)).read_text()
    section = md.split("## Nil answers", 1)[1].split("\n## ", 1)[0]
    assert "This set has no nil gold, so each of the 3 nil answer(s) is wrong. 1 of them passed over the gold" in section
    assert "for the other 2, the best candidate was not the gold either" in section
    assert "`--set nil_threshold=off`" in section and "Passed over the gold: `w1`" in section
    assert "nil precision" not in md  # no nil gold: no precision/recall table
    assert "Nil answers on entity golds: 3 (the set has no nil gold: all of them wrong); 1 of them passed over" in \
        (tmp_path / "no-nil" / "report.html").read_text()
    clean = write_report(write_run(tmp_path / "no-nil-answer", records[3:])).read_text()
    assert "## Nil answers" not in clean


def test_llm_effect_counts_a_nil_text_prior_as_a_nil_answer():
    nil_prior = link(1, None, 0.3, [("Kappa", 0.3)], llm=True, prior=("Kappa", 0.25))
    nil_prior["prior_top"]["nil"] = True  # the prior alone answered nil (its nil decision held)
    records = [record("n1", "nil", None, "nil", [nil_prior]),  # nil before and after the LLM: both right
               record("n2", "nil", "Kappa", "text_verified",  # the LLM turned a right nil into Kappa: broken
                      [link(1, "Kappa", 0.6, [("Kappa", 0.6)], llm=True, prior=("Kappa", 0.25)) | {
                          "prior_top": {**ent("Kappa"), "p": 0.25, "nil": True}}])]
    eff = M.llm_effect(records)
    assert eff["final"]["both right"] == 1 and eff["final"]["broken"] == 1 and eff["broken"] == ["n2"]


def test_report_counts_round1_answers_replaced_when_no_round_verified(tmp_path):
    """Refuted round-1 answers and round-1 nils: replaced by a clue round's answer (fixed or broken) or kept."""
    def refuted(pick: str) -> dict:
        return verify(1, pick, 0.1) | {"refuted": f"the image shows a woman or girl; {pick} is recorded as male"}

    nil_round = [link(1, None, 0.3, [("Kappa", 0.3)]), link(2, "Kappa", 0.8, [("Kappa", 0.8)], clue="ocr")]
    records = [
        record("r1", "Emma", "Emma", "fallback", [refuted("Fred"), verify(2, "Emma", 0.2, "scene")], stop=3,
               round1="Fred"),  # refuted, replaced: fixed
        record("r2", "Fred", "Emma", "fallback", [refuted("Fred"), verify(2, "Emma", 0.2, "scene")], stop=3,
               round1="Fred"),  # refuted, replaced: broken (the cue was wrong)
        record("r3", "Emma", "Fred", "fallback", [refuted("Fred")], stop=5, round1="Fred"),  # refuted, kept
        record("n1", "Kappa", "Kappa", "fallback", nil_round, stop=2, round1=None),  # nil replaced: fixed
        record("n2", "nil", "Kappa", "fallback", nil_round, stop=2, round1=None),  # nil replaced: broken
        record("n3", "nil", None, "nil", nil_round[:1], stop=2, round1=None),  # nil kept: both right
        record("t1", "nil", None, "nil", nil_round[:1], stop=1, round1=None),  # no clue round: not counted
        record("v1", "Emma", "Emma", "text_verified", [verify(1, "Emma", 0.9)]),  # nothing replaced
    ]
    md = write_report(write_run(tmp_path / "run", records)).read_text()
    rows = {(r[0], r[1]): r[2:] for r in table_rows(md, "When no round verified: round-1 answers replaced")}
    assert rows[("refuted", "replaced")] == ["2", "1", "1", "0", "0", "+0"]
    assert rows[("refuted", "kept")] == ["1", "0", "0", "0", "1", "+0"]
    assert rows[("nil", "replaced")] == ["2", "1", "1", "0", "0", "+0"]
    assert rows[("nil", "kept")] == ["1", "0", "0", "1", "0", "+0"]
    assert "Fixed: `r1`, `n1`" in md and "Broken: `r2`, `n2`" in md
    assert "round-1 answers replaced" not in write_report(write_run(tmp_path / "plain", records[-2:])).read_text()


def test_report_calibration_and_figures(tmp_path):
    run = write_run(tmp_path / "run", fixture_records())
    md = write_report(run).read_text()
    # final answers with a fused p: m1 .95 right, m2 .7 right, m3 .6 wrong, m5 .9 wrong, m6 .55 wrong, m9 .85 right
    # ECE = (|1-.95| + |.5-.925|*2 + |1-.85| + |1-.7| + |0-.6| + |0-.55|) / 6 = 2.45 / 6
    rel = M.reliability(fixture_records())
    assert rel["n"] == 6 and rel["ece"] == pytest.approx(2.45 / 6)
    assert "Expected calibration error (10 equal-width bins): **40.8 points**" in md
    for name in ("rounds.png", "reliability.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "report.html").is_file()


def test_error_kind_is_not_cut_inside_quotes():
    rec = {"error": "linker model 'openai:gpt-4o': connection refused: retry"}
    assert error_kind(rec) == "linker model 'openai:gpt-4o'"
    assert error_kind({"error": 'cannot load "C:/models/x: y.gguf": no such file'}) == 'cannot load "C:/models/x: y.gguf"'
    assert error_kind({"error": "ValueError: bad value: 3"}) == "ValueError: bad value"


def test_most_common_failure_line_keeps_the_quoted_model_name(tmp_path):
    md = write_report(write_run(tmp_path / "run", fixture_records())).read_text()
    assert "Most common: linker model 'openai:gpt-4o' ×1" in md


# ---- i2cr compare -----------------------------------------------------------------------------------

def paired_runs(tmp_path: Path) -> tuple[Path, Path]:
    """20 shared mentions: A right on 12; B fixes 6 of A's errors and breaks 1 of its right answers."""
    a, b = [], []
    for k in range(20):
        gold = f"E{k}"
        right_a = k < 12
        right_b = (right_a and k != 0) or (not right_a and k < 18)
        for recs, right, calls in ((a, right_a, 1), (b, right_b, 2)):
            pred = gold if right else f"W{k}"
            recs.append(record(f"x{k}", gold, pred, "text_verified",
                               [link(1, pred, 0.8, [(pred, 0.8)], llm=True, prior=(gold, 0.5)), verify(1, pred, 0.9)],
                               calls=calls))
    a.append(record("only-a", "Z", "Z", "text_verified", [link(1, "Z", 0.9, [("Z", 0.9)])]))
    return (write_run(tmp_path / "runA", a), write_run(tmp_path / "runB", b, gate_threshold=0.5))


def test_mcnemar_exact_known_values(monkeypatch):
    # b=1, c=6: two-sided binomial P = 2 * (C(7,0) + C(7,1)) / 2**7 = 0.125
    assert M.mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert M.mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert M.mcnemar_exact(0, 0) == 1.0
    assert M.mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert M.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the exact computation without scipy
    assert M.mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert M.mcnemar_exact(2, 9) == pytest.approx(2 * (1 + 11 + 55) / 2048)


def test_compare_two_runs(tmp_path, capsys):
    run_a, run_b = paired_runs(tmp_path)
    assert cli_main(["compare", str(run_a), str(run_b)]) == 0
    out = capsys.readouterr().out
    assert "20 shared mentions (1 only in A, 0 only in B)" in out
    assert "A runA: Top-1 60.0% [38.7, 78.1] (12/20)" in out
    assert "B runB: Top-1 85.0% [64.0, 94.8] (17/20)" in out
    assert "B - A: +25.0 points; fixed 6, broken 1; McNemar exact p = 0.125" in out
    assert "LLM calls per mention: A 1.00, B 2.00" in out
    md = (run_b / "compare_runA.md").read_text()
    assert "McNemar's exact test (two-sided binomial on the 7 discordant pairs): **p = 0.125**" in md
    fixed = table_rows(md, "Fixed by B")
    broken = table_rows(md, "Broken by B")
    assert sorted(r[0].strip("`") for r in fixed) == [f"x{k}" for k in range(12, 18)]
    assert [r[0].strip("`") for r in broken] == ["x0"]
    # the traces' key steps of both runs
    assert broken[0][5] == "r1 link E0 p=0.80 (LLM logits, prior E0 0.50) → verify 0.90 >= tau 0.5 → final " \
                           "text_verified E0"
    assert broken[0][6].startswith("r1 link W0 p=0.80")
    assert table_rows(md, "Settings that differ") == [["gate_threshold", "0.9", "0.5"]]
    cost = {r[0]: r[1:] for r in table_rows(md, "Cost on the shared mentions")}
    assert cost["LLM calls"] == ["1.0", "2.0", "20.0", "40.0"]


def test_compare_out_file_and_errors(tmp_path, capsys):
    run_a, run_b = paired_runs(tmp_path)
    out = tmp_path / "cmp.md"
    assert compare_main([str(run_a), str(run_b), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Compare: A = `runA`, B = `runB`")
    assert cli_main(["compare", str(run_a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("i2cr compare: error: compare: no run folder at") and "\n" not in err
    other = write_run(tmp_path / "other", [record("y1", "Q", "Q", "text_verified", [])])
    assert compare_main([str(run_a), str(other)]) == 2
    assert "share no mention with a gold answer" in capsys.readouterr().err


# ---- report.html in a real headless browser ---------------------------------------------------------

def find_chromium() -> str | None:
    for name in (os.environ.get("I2CR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture
def chromium():
    path = find_chromium()
    if path is None:
        msg = ("CHROMIUM NOT FOUND: the report.html browser test is SKIPPED. Install it with "
               "`apt-get install -y chromium` (or set I2CR_CHROMIUM to a Chrome/Chromium binary).")
        warnings.warn(msg)
        print(f"\n*** {msg} ***", file=sys.stderr)
        pytest.skip(msg)
    return path


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port,
    no websocket library). Records every network request of the page's own target."""

    def __init__(self, chromium: str, tmp_path: Path):
        to_r, self._to = os.pipe()  # the browser reads commands on its fd 3
        self._from, from_w = os.pipe()  # and writes answers and events on its fd 4

        def fds():
            a, b = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        # outside traffic goes to a closed port and no name resolves: nothing can leave even if asked to
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=http://127.0.0.1:9",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False,  # noqa: PLW1509 (fds() only duplicates two descriptors)
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(to_r)
        os.close(from_w)
        self.next_id, self.events, self.buffer = 0, [], b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Network.enable", "Page.enable", "Runtime.enable"):
            self.call(method, session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe: " + (self.log.name))
            self.buffer += chunk
        msg, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._read(deadline))

    def js(self, expression: str, wait_for: str | None = None) -> object:
        """The value of a JS expression in the page (after ``wait_for`` is truthy, if given)."""
        deadline = time.monotonic() + 15
        while wait_for and not self.call("Runtime.evaluate", session=True, expression=wait_for,
                                         returnByValue=True)["result"].get("value"):
            assert time.monotonic() < deadline, f"timed out waiting for {wait_for}"
            time.sleep(0.1)
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get(
            "value")

    def requests(self) -> list[str]:
        """URLs the page asked the network for (its own file and data: URLs left out)."""
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == self.session
                and not e["params"]["request"]["url"].startswith(("data:", "file:"))]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass  # the browser is gone already: wait() below reaps it
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)
        self.log.close()


@pytest.fixture
def browser(chromium, tmp_path):
    b = Browser(chromium, tmp_path)
    yield b
    b.close()


HOSTILE = "</script><img src=x onerror=\"document.title='pwned'\"> & <!-- Jordan"


def test_report_page_in_a_headless_browser(tmp_path, browser):
    records = fixture_records()
    records[0]["mention"] = HOSTILE  # text from the data is shown as text, never run as markup
    run = write_run(tmp_path / "run", records)
    write_report(run)
    page = (run / "report.html").read_text()
    # self-contained: a CSP that forbids every outside source, and no outside reference at all
    assert re.search(r'<meta http-equiv="Content-Security-Policy" content="default-src \'none\';', page)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", page)
    assert page.count('src="data:image/png;base64,') == 2

    browser.open((run / "report.html").as_uri() + "?selftest=1")
    st = json.loads(browser.js("document.getElementById('selftest').textContent",
                               wait_for="document.body.dataset.selftest === 'done'"))
    assert st["all"] == 10  # it renders: one row per mention
    assert browser.js("document.querySelectorAll('#mentions tbody tr').length") == 10
    assert browser.js("document.querySelector('#mentions tbody tr[data-id=\"m1\"] td:nth-child(2)').textContent") \
        == HOSTILE
    assert browser.js("document.title") == "I2CR evaluation: fixture.json"
    assert sorted(st["wrong"]) == WRONG
    assert sorted(st["llm"]) == ["m2", "m3", "m5"]
    assert sorted(st["nil_gold"]) == ["m4", "m5"]
    assert sorted(st["nil_pred"]) == ["m4", "m8"]
    assert sorted(st["status"]["fallback"]) == ["m6"] and sorted(st["status"]["error"]) == ["m7"]
    assert st["sorted_asc"] == [f"m{k}" for k in range(1, 11)] and st["sorted_desc"] == st["sorted_asc"][::-1]
    # opening a mention (the first wrong one with a trace: m3 in file order) shows its trace
    assert st["opened"] == "m3"
    assert "Round 1 (text)" in st["trace_text"] and "text prior's top: Alpha 0.550" in st["trace_text"]
    assert "score vs τ=0.5" in st["trace_text"] and "final decision: text_verified → Omega" in st["trace_text"]
    assert st["trace_bars"] == 3  # two candidates with their fused p, the verifier score against tau
    assert all(img["ok"] for img in st["images"]) and len(st["images"]) == 2
    assert st["resources"] == [] and st["violations"] == []
    assert browser.requests() == []


def test_report_page_opens_a_mention_by_click_and_from_the_address(tmp_path, browser):
    run = write_run(tmp_path / "run", fixture_records())
    write_report(run)
    browser.open((run / "report.html").as_uri() + "#m=m6")
    trace = browser.js("document.getElementById('trace').innerHTML", wait_for="document.body.dataset.ready === '1'")
    assert "Mention <code>m6</code>" in trace
    assert trace.count('class="round"') == 3  # text round and two clue rounds
    assert "RHO LTD" in trace and "a man at a desk" in trace  # the clue texts
    assert "final decision: <b>fallback</b>" in trace
    # a real click on a row of the table, after filtering to the LLM-asked mentions
    browser.js("const f = document.getElementById('f-llm'); f.click();")
    assert browser.js("[...document.querySelectorAll('#mentions tbody tr')].map(r => r.dataset.id)") == \
        ["m2", "m3", "m5"]
    browser.js("document.querySelector('#mentions tbody tr[data-id=\"m2\"] td').click()")
    text = browser.js("document.getElementById('trace').innerText")
    assert text.startswith("Mention m2") and "LLM scored by logits (weight 1.5)" in text and "Zeta" in text
    assert browser.requests() == []


def test_the_request_check_catches_an_outside_request(tmp_path, browser):
    """Control of the no-network check: a page that loads an outside image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"></body></html>')
    browser.open(page.as_uri())
    assert browser.requests() == ["http://example.invalid/x.png"]


def test_report_of_a_real_fused_run_with_nil_gold(tmp_path):
    """The report and the page read real traces: a fused run with fake models on WikiDiverse-style data."""
    from test_fused import letter_model

    from evals.runner import run_eval
    from graph import Context

    from fakes import BagOfWordsEmbeddings, TableScorer

    data = Path(__file__).parent / "data"
    ctx = Context(linker_model=letter_model(A=-0.1, B=-2.0), embedding_model=BagOfWordsEmbeddings(),
                  verifier=TableScorer({"Detroit_Lions": 0.9}, default=0.1), gate_threshold=0.99)
    run = tmp_path / "run"
    run_eval(data / "wikidiverse_small.json", data / "wikidiverse_small_label.json", run, context=ctx,
             progress=False, report=False, isolation="inline")
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    asked = [t for r in records for t in r.get("trace") or [] if t.get("step") == "link" and t.get("gated") is False]
    assert asked and all("prior_top" in t for t in asked)  # the text prior is recorded where the LLM was asked
    md = write_report(run).read_text()
    assert "## Nil answers" in md and "## Where the LLM helped or hurt" in md
    n_asked = sum(1 for r in records if M.llm_asked(r))
    assert f"Resolved from the traces: LLM scoring letters (logits) on {n_asked} mention(s); LLM weight 1" in md
    wrong = {r[0].strip("`") for r in table_rows(md, "Wrong answers")}
    assert wrong == {r["id"] for r in records if not M.rec_correct(r)}
    page = (run / "report.html").read_text()
    block = re.search(r'<script id=data type="application/octet-stream">(.*?)</script>', page, re.DOTALL).group(1)
    packed = json.loads(gzip.decompress(base64.b64decode(block)))
    assert sorted(r["i"] for r in packed["r"]) == sorted(r["id"] for r in records)


def screenshot(run: Path, mention: str, out: Path, width: int = 1400, height: int = 1900) -> Path:
    """A picture of ``run``'s report.html with ``mention``'s trace open (how docs/report.png is made)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        b = Browser(find_chromium() or "chromium", Path(tmp))
        try:
            b.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                   deviceScaleFactor=1, mobile=False)
            b.open((Path(run) / "report.html").resolve().as_uri())
            b.js("1", wait_for="document.body.dataset.ready === '1'")
            b.js(f"document.querySelector('#mentions tbody tr[data-id=\"{mention}\"]').click(); window.scrollTo(0, 0)")
            shot = b.call("Page.captureScreenshot", session=True, format="png")
            Path(out).write_bytes(base64.b64decode(shot["data"]))
        finally:
            b.close()
    return Path(out)


if __name__ == "__main__":  # python tests/test_report.py RUN MENTION_ID OUT.png
    print(screenshot(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))


def test_a_run_loads_its_report_code_when_it_starts():
    """The report is written at the end of a run with the code loaded at its start: a checkout changed during
    a long run (evals/metrics.py and evals/report.py edited together) cannot break the run's report."""
    code = ("import sys, evals.runner; "
            "print(all(m in sys.modules for m in ('evals.report', 'evals.html_report', 'evals.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_report_counts_the_nils_nil_needs_text_overruled(tmp_path):
    """A link step with ``nil_overruled`` (nil_needs_text kept the text answer): counted, with how many ended right
    and how many had a nil gold; no such step, no line."""
    kept = link(1, "Weiller", 0.45, [("Weiller", 0.45)], llm=True, prior=("Weiller", 0.7))
    kept["nil_overruled"] = "the combined evidence favours nil (p=0.520) but the text evidence alone does not"
    missed = {**kept, "pick": ent("Berg")}
    records = [
        record("k1", "Weiller", "Weiller", "fallback", [kept], calls=1),
        record("k2", "nil", "Berg", "fallback", [missed], calls=1, gic=False),
        record("k3", "Alpha", "Alpha", "text_verified", [link(1, "Alpha", 0.99, [("Alpha", 0.99)])]),
    ]
    md = write_report(write_run(tmp_path / "run", records)).read_text()
    assert ("`nil_needs_text` kept the text answer of 2 mention(s) where the LLM's evidence would have made it nil: "
            "1 of them ended right, 1 had a nil gold") in md
    assert "`k1`" in md.split("nil_needs_text", 1)[1] and "`k2`" in md.split("nil_needs_text", 1)[1]
    assert "nil_needs_text kept the text answer of 2 mention(s)" in (tmp_path / "run" / "report.html").read_text()
    clean = write_report(write_run(tmp_path / "clean", records[2:])).read_text()
    assert "nil_needs_text" not in clean
