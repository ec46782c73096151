"""The evaluation harness: loaders, metrics, resumable runs, reports (fake models, offline)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals import metrics as M
from evals.cli import eval_main, report_main
from evals.datasets import load_dataset, parse_gold
from evals.runner import run_eval, select
from evals.store import read_predictions
from graph import Context
from graph import graph as real_graph
from tools.errors import ConfigError, InputError

from fakes import BagOfWordsEmbeddings, ScriptedChatModel, TableScorer, scripted

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
WIKIMEL, WIKIMEL_LABELS = DATA / "wikimel_small.json", DATA / "wikimel_small_label.json"


def fake_context(model=None, **settings) -> Context:
    return Context(linker_mode="llm", linker_model=model or scripted("1"), embedding_model=BagOfWordsEmbeddings(),
                   verifier=TableScorer({"Michael Jordan": 0.9, "George Washington": 0.9}),
                   reflection_threshold=0.0, **settings)


def lines(run: Path) -> list[dict]:
    """Every line of predictions.jsonl (duplicates kept), each checked to be whole JSON."""
    text = (run / "predictions.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class CountingGraph:
    """The real graph, logging each invocation's id and process to a file (it runs in the eval worker)."""

    def __init__(self, log: Path):
        self.log = Path(log)

    def invoke(self, inputs, context=None):
        with open(self.log, "a") as fh:
            fh.write(f"{inputs['id']} {os.getpid()}\n")
        return real_graph.invoke(inputs, context=context)

    def calls(self) -> list[tuple[str, int]]:
        """(id, pid) of every invocation so far."""
        if not self.log.is_file():
            return []
        return [(i, int(p)) for i, p in (line.split() for line in self.log.read_text().splitlines())]

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.calls()]


class Slow(ScriptedChatModel):
    """A scripted model that takes its time (the kill -9 test's subprocess and its eval worker import it)."""

    def _call(self, *args, **kwargs):
        time.sleep(0.1)
        return super()._call(*args, **kwargs)


class FailsOnMercury(ScriptedChatModel):
    """Raises when asked about Mercury, answers "1" otherwise."""

    def _call(self, messages, *args, **kwargs):
        if any("Mercury" in str(m.content) for m in messages):
            raise RuntimeError("server said 500")
        return super()._call(messages, *args, **kwargs)


# ---- loaders ---------------------------------------------------------------------------

def test_wikimel_records_become_graph_inputs(tmp_path):
    (tmp_path / "101.jpg").write_bytes(b"")  # only its existence matters to the loader
    ds = load_dataset(WIKIMEL, WIKIMEL_LABELS, images=tmp_path)
    assert ds.format == "i2cr" and [ex.id for ex in ds.examples] == ["101", "102", "103", "104", "105", "106"]
    ex = ds.examples[0]
    assert ex.inputs["mention"] == "Jordan" and ex.inputs["context"].startswith("Jordan scored")
    assert [c["name"] for c in ex.inputs["candidates"]] == ["Michael Jordan", "Jordan", "Jordan River"]
    assert ex.inputs["image_desc"]["OCR text"] == "BULLS 23"
    assert ex.inputs["image"] == str(tmp_path / "101.jpg") and ex.inputs["id"] == "101"
    assert "image" not in ds.examples[1].inputs  # 102.jpg is not in the folder
    assert ex.gold == {"name": "Michael Jordan", "qid": None}
    bad = ds.examples[3]
    assert bad.inputs is None and "record '104'" in bad.error and "no name" in bad.error
    assert bad.gold == {"name": "John Smith", "qid": None}


def test_wikidiverse_string_literal_descriptions_nil_gold_and_underscores():
    ds = load_dataset(DATA / "wikidiverse_small.json", DATA / "wikidiverse_small_label.json")
    lions, fair, packers = ds.examples
    assert lions.inputs["image_desc"]["OCR text"] == "LIONS"  # Python dict literal read safely
    assert lions.inputs["image_desc"]["Objects"][0]["object_name"] == "person"
    assert fair.gold == {"nil": True}
    assert packers.inputs is None and "record 'wd-3'" in packers.error and "image description" in packers.error
    assert M.match({"qid": "Q271880", "name": "Detroit Lions"}, lions.gold)


def test_plain_jsonl_with_malformed_lines():
    ds = load_dataset(DATA / "plain.jsonl")
    by_id = {ex.id: ex for ex in ds.examples}
    assert list(by_id) == ["j1", "line2", "line3", "j4", "j5"]
    assert by_id["j1"].gold == {"name": "Michael Jordan", "qid": "Q41421"}
    assert by_id["j1"].inputs["context"].startswith("Jordan scored")
    assert by_id["line2"].gold == {"nil": True} and by_id["line2"].inputs["mention"] == "Mercury"
    assert by_id["line3"].inputs is None and by_id["line3"].error.startswith("line 3: not valid JSON")
    assert by_id["j4"].inputs is None and "line 4 (id 'j4')" in by_id["j4"].error and "mention" in by_id["j4"].error
    assert by_id["j5"].gold == {"name": None, "qid": "Q76"} and by_id["j5"].inputs["image_desc"]
    assert any("without a gold answer" in w for w in ds.warnings)


def test_jsonl_duplicate_ids_and_missing_image(tmp_path):
    path = tmp_path / "d.jsonl"
    rec = {"id": "a", "mention": "X", "context": "", "candidates": ["X"], "gold": "X"}
    path.write_text("\n".join(json.dumps(r) for r in [rec, rec, {**rec, "id": "b", "image": "nope.png"}]) + "\n")
    ex = load_dataset(path).examples
    assert [e.id for e in ex] == ["a", "a@1", "b"]
    assert "duplicate id 'a'" in ex[1].error and ex[1].inputs is None
    # a missing image is not a record error: the graph links on text and records why (tests/test_hostile_images.py)
    assert ex[2].error is None and ex[2].inputs["image"] == str(tmp_path / "nope.png")


@pytest.mark.parametrize("content,fragment", [
    (None, "file not found"), ("{not json", "not valid JSON"), ("42", "holds a JSON int"),
])
def test_unusable_dataset_files_raise_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "data.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=fragment) as err:
        load_dataset(path)
    assert str(path) in str(err.value)


def test_labels_must_be_an_object(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text("[1, 2]")
    with pytest.raises(InputError, match="--labels: .*labels.json must hold an object"):
        load_dataset(WIKIMEL, labels)


def test_parse_gold_forms():
    assert parse_gold("NIL", where="x") == {"nil": True}
    assert parse_gold("Q42", where="x") == {"name": None, "qid": "Q42"}
    assert parse_gold({"qid": "Q1", "name": "A"}, where="x") == {"name": "A", "qid": "Q1"}
    assert parse_gold(None, where="x") is None
    with pytest.raises(InputError, match="labels\\['7'\\]"):
        parse_gold(3, where="labels['7']")


def test_sample_is_seeded_and_keeps_file_order():
    examples = load_dataset(WIKIMEL, WIKIMEL_LABELS).examples
    a = [e.id for e in select(examples, sample=3, seed=1)]
    assert a == [e.id for e in select(examples, sample=3, seed=1)] and len(a) == 3
    assert a == sorted(a)
    assert [e.id for e in select(examples, sample=3, seed=1, limit=2)] == a[:2]


# ---- metrics ---------------------------------------------------------------------------

def test_name_normalisation_as_the_benchmarks_score():
    assert M.normalize_name("  Barack_Obama ") == M.normalize_name("barack  obama") == "barack obama"
    assert M.normalize_name("https://en.wikipedia.org/wiki/Green_Bay_Packers") == "green bay packers"
    assert M.match({"name": "Paris"}, {"name": "Paris Hilton", "qid": None}) is False
    assert M.match(None, {"nil": True}) and not M.match({"name": "X"}, {"nil": True})
    assert M.match({"name": "X", "qid": "Q1"}, {"name": None, "qid": "Q1"})
    assert M.match(None, None) is None
    assert M.match_qid({"qid": "Q2"}, {"name": "A", "qid": "Q1"}) is False
    assert M.match_qid({"qid": "Q1"}, {"name": "A", "qid": None}) is None


def test_wilson_interval_known_values():
    lo, hi = M.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = M.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = M.wilson(930, 1000)
    assert lo == pytest.approx(0.9125, abs=1e-4) and hi == pytest.approx(0.9442, abs=1e-4)
    assert all(math.isnan(x) for x in M.wilson(0, 0))


G = {"name": "Gold", "qid": "Q1"}
W = {"name": "Wrong", "qid": "Q2"}
HAND_BUILT = [
    {"id": "a", "gold": G, "prediction": G, "round1": G, "stop_round": 1, "status": "text_verified"},
    {"id": "b", "gold": G, "prediction": G, "round1": W, "stop_round": 3, "status": "clue_verified:objects"},
    {"id": "c", "gold": G, "prediction": W, "round1": G, "stop_round": 2, "status": "clue_verified:ocr"},
    {"id": "d", "gold": G, "prediction": W, "round1": W, "stop_round": 4, "status": "fallback"},
    {"id": "e", "gold": G, "prediction": None, "error": "ModelError: down"},
    {"id": "f", "gold": None, "prediction": G, "round1": G, "stop_round": 1, "status": "text_only"},
]


def test_cumulative_accuracy_per_round_from_outputs():
    rows = M.cumulative_by_round(HAND_BUILT, 4)
    assert [(r["correct"], r["n"]) for r in rows] == [(2, 5), (1, 5), (2, 5), (2, 5)]
    assert M.answer_after_round(HAND_BUILT[1], 2) == W and M.answer_after_round(HAND_BUILT[1], 3) == G


def test_exit_groups_shares_and_accuracy():
    groups = {(g["status"], g["stop_round"]): g for g in M.exit_groups(HAND_BUILT)}
    assert groups[("text_verified", 1)]["share"] == pytest.approx(1 / 6)
    assert groups[("clue_verified:objects", 3)]["acc"] == 1.0
    assert groups[("error", None)]["acc"] == 0.0 and groups[("text_only", 1)]["n"] == 0
    assert sum(g["count"] for g in groups.values()) == 6


def test_cost_statistics():
    d = M.describe([1, 2, 3, 4, 100])
    assert d["mean"] == 22 and d["p50"] == 3 and d["total"] == 110 and d["p95"] == pytest.approx(80.8)
    assert math.isnan(M.describe([])["mean"])


# ---- runs ---------------------------------------------------------------------------------

def test_run_writes_one_line_per_mention(tmp_path):
    run = tmp_path / "run"
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False)
    recs = {r["id"]: r for r in lines(run)}
    assert sorted(recs) == ["101", "102", "103", "104", "105", "106"] and summary["written"] == 6
    jordan = recs["101"]
    assert jordan["prediction"] == {"qid": "Q41421", "name": "Michael Jordan"} and jordan["correct"] is True
    assert jordan["status"] == "text_verified" and jordan["stop_round"] == 1
    assert jordan["round1"]["name"] == "Michael Jordan"
    assert jordan["llm_calls"] == 1 and jordan["seconds"] > 0 and jordan["trace"][-1]["step"] == "final"
    assert {"prompt_tokens", "completion_tokens", "gold"} <= set(jordan)
    assert jordan["baselines"]["first"]["name"] == "Michael Jordan" and "embedding" in jordan["baselines"]
    assert recs["103"]["correct"] is True  # gold "barack_obama" normalised
    assert jordan["gold_in_candidates"] is True
    assert recs["104"]["correct"] is False and "record '104'" in recs["104"]["error"]
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == str(WIKIMEL.resolve()) and config["settings"]["max_rounds"] == 4
    assert (run / "report.md").is_file() and (run / "rounds.png").is_file()


def test_model_error_is_recorded_and_the_run_goes_on(tmp_path):
    run = tmp_path / "run"
    model = FailsOnMercury(responses=["1"], prompts=[])
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(model), progress=False, report=False)
    recs = {r["id"]: r for r in lines(run)}
    assert len(recs) == 6 and summary["errors"] == 2
    assert "server said 500" in recs["105"]["error"] and recs["105"]["correct"] is False
    assert recs["106"]["correct"] is True


def test_resume_after_a_crash_and_a_truncated_line(tmp_path):
    run = tmp_path / "run"

    def crash_after_three(rec, seen=[]):
        seen.append(rec["id"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False, on_record=crash_after_three)
    assert len(lines(run)) == 3
    before = {r["id"] for r in lines(run)}
    assert "104" in before  # the malformed record is written first, without a model
    with open(run / "predictions.jsonl", "a") as fh:  # a kill in the middle of a write
        fh.write('{"id": "105", "prediction": {"qi')
    graph = CountingGraph(tmp_path / "calls.log")
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False, graph=graph)
    ids = [r["id"] for r in lines(run)]
    assert sorted(ids) == ["101", "102", "103", "104", "105", "106"]  # none lost, none twice
    assert summary["resumed_from"] == 3 and summary["written"] == 3
    assert "105" in graph.ids and sorted(graph.ids) == sorted({"101", "102", "103", "105", "106"} - before)
    assert "truncated" in " ".join(summary["notes"])


def test_resume_with_more_mentions_and_retry_of_errors(tmp_path):
    run = tmp_path / "run"
    run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), limit=2, progress=False, report=False)
    assert [r["id"] for r in lines(run)] == ["101", "102"]
    run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False, report=False)
    assert sorted(r["id"] for r in lines(run)) == ["101", "102", "103", "104", "105", "106"]
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False, report=False,
                       retry_errors=True)
    assert summary["written"] == 1  # record 104 again; the report keeps its last line
    assert len(read_predictions(run)[0]) == 6


def test_resume_refuses_a_different_configuration(tmp_path):
    run = tmp_path / "run"
    run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), limit=1, progress=False, report=False)
    with pytest.raises(ConfigError, match="different configuration.*setting max_rounds: was 4, now 2"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(max_rounds=2), progress=False, report=False)
    with pytest.raises(ConfigError, match="sample"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), sample=3, progress=False, report=False)


def test_concurrent_run_has_every_mention_once(tmp_path):
    run = tmp_path / "run"
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), concurrency=3, progress=False,
                       report=False)
    ids = [r["id"] for r in lines(run)]
    assert sorted(ids) == ["101", "102", "103", "104", "105", "106"] and summary["done"] == 6


KILL_SCRIPT = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from fakes import BagOfWordsEmbeddings, TableScorer
from graph import Context
from evals.runner import run_eval
from test_evals import Slow  # the eval worker process imports it from there (a class of __main__ could not be)

ctx = Context(linker_mode="llm", linker_model=Slow(responses=["1"], prompts=[]), embedding_model=BagOfWordsEmbeddings(),
              verifier=TableScorer({{"Michael Jordan": 0.9, "George Washington": 0.9}}), reflection_threshold=0.0)
run_eval(sys.argv[1], None, sys.argv[2], context=ctx, progress=False, report=False)
"""


def test_kill_minus_nine_then_resume(tmp_path):
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "mention": "Jordan", "context": f"Jordan game {i} Bulls",
                                        "candidates": ["Michael Jordan", "Jordan"], "gold": "Michael Jordan"}) + "\n"
                            for i in range(40)))
    script = tmp_path / "run_slow.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests")))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(run)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    preds = run / "predictions.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if preds.is_file() and preds.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    with pytest.raises(ConfigError, match=f"{run} is in use by another i2cr eval run \\(pid {proc.pid}\\)"):
        run_eval(data, None, run, context=fake_context(), progress=False, report=False)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_with = len(read_predictions(run)[0])
    assert 5 <= killed_with < 40
    ctx = Context(linker_mode="llm", linker_model=Slow(responses=["1"], prompts=[]), embedding_model=BagOfWordsEmbeddings(),
                  verifier=TableScorer({"Michael Jordan": 0.9, "George Washington": 0.9}), reflection_threshold=0.0)
    summary = run_eval(data, None, run, context=ctx, progress=False, report=False)
    ids = [r["id"] for r in lines(run)]
    assert sorted(ids) == sorted(f"m{i}" for i in range(40)) and len(ids) == len(set(ids))
    assert summary["written"] == 40 - killed_with and summary["accuracy"] == 1.0


# ---- report and command line ------------------------------------------------------------------

def test_report_from_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False, report=False)
    assert not (run / "report.md").exists()
    assert report_main([str(run)]) == 0
    report = (run / "report.md").read_text()
    for part in ("Top-1", "95% CI", "first candidate", "embedding similarity", "text round alone",
                 "Accuracy after each round", "Where the graph stopped", "Cost per mention", "LLM calls",
                 "record '104'", "I2CR 93.0", "gold among the candidates"):
        assert part in report, part
    assert "| **I2CR (this run)** | 50.0% | [18.8, 81.2] | 3 / 6 |" in report
    assert (run / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report.md" in capsys.readouterr().out


def test_report_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv,fragment", [
    (["missing.json", "--out", "{out}"], "dataset: file not found: missing.json"),
    ([str(WIKIMEL), "--set", "max_rounds=two", "--out", "{out}"], "--set max_rounds"),
    ([str(WIKIMEL), "--set", "nonsense=1", "--out", "{out}"], "unknown setting"),
])
def test_eval_command_errors_are_one_line(tmp_path, capsys, argv, fragment):
    argv = [a.replace("{out}", str(tmp_path / "run")) for a in argv]
    assert eval_main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_llm_benchmark_times_each_scoring_method_and_skips_what_the_model_cannot_do(tmp_path, monkeypatch, capsys):
    from evals import bench_llm

    from providers_helpers import FakeOpenAI

    data = Path(__file__).parent / "data" / "wikimel_small.json"
    out = tmp_path / "bench.json"
    with FakeOpenAI(reply="A", top_logprobs={"A": -0.1, "B": -2.5}) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert bench_llm.main([str(data), "--model", "openai:fake", "--sample", "3", "--repeat", "2",
                               "--out", str(out)]) == 0
        paths = [r["path"] for r in server.requests]
        assert paths.count("/v1/chat/completions") == 6  # 3 mentions, each asked twice, letters only
        assert paths.count("/v1/completions") == 1  # the server was probed once for echoed logprobs
    printed = capsys.readouterr().out
    assert "likelihood not available" in printed and "choice" in printed
    figures = json.loads(out.read_text())
    assert "error" in figures["scoring"]["likelihood"]
    choice = figures["scoring"]["choice"]
    assert choice["method"] == "logprobs" and choice["mean_s"] > 0 and choice["tokens"] > 0
    assert figures["mentions"] == 3 and figures["peak_rss_gib"] > 0


# ---- what the eval scripts share (evals/common.py) --------------------------------------------------

def test_data_dir_flag_then_environment_then_shared_beside_the_repo(tmp_path, monkeypatch):
    from evals import common

    monkeypatch.delenv(common.DATA_ENV, raising=False)
    assert common.data_dir() == Path(common.__file__).resolve().parents[2] / "shared" / "data"
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    assert common.data_dir() == tmp_path and common.wikimel_dev() == tmp_path / "wikimel" / "WikiMEL_dev.json"
    assert common.data_dir(tmp_path / "x") == tmp_path / "x"
    assert common.default_labels(WIKIMEL) == str(WIKIMEL_LABELS)
    assert common.default_labels(tmp_path / "nothing.json") is None


def test_run_main_prints_one_line_and_exits_2(capsys):
    from evals.common import run_main

    def bad() -> int:
        raise InputError("--data: file not found: x.json")

    assert run_main("a_script", bad) == 2
    assert capsys.readouterr().err == "a_script: error: --data: file not found: x.json\n"
    assert run_main("a_script", lambda n: n, 3) == 3 and run_main("a_script", lambda: None) == 0


def test_fit_llm_weight_defaults_come_from_the_settings(monkeypatch, tmp_path):
    from evals import fit_llm_weight

    monkeypatch.setenv("I2CR_DATA_DIR", str(tmp_path))
    a = fit_llm_weight.parse_args([])
    assert a.gate == Context().gate_threshold == 0.95 and a.linker_model == Context().linker_model
    assert a.data == str(tmp_path / "wikimel" / "WikiMEL_dev.json") and a.labels is None
    monkeypatch.setenv("I2CR_GATE_THRESHOLD", "0.8")
    assert fit_llm_weight.parse_args([str(WIKIMEL)]).gate == 0.8
    assert fit_llm_weight.parse_args([str(WIKIMEL)]).labels == str(WIKIMEL_LABELS)
    assert fit_llm_weight.parse_args([str(WIKIMEL), "--gate", "0.5"]).gate == 0.5


def test_bench_retrieval_has_no_absolute_data_path():
    source = (Path(__file__).resolve().parents[1] / "evals" / "bench_retrieval.py").read_text()
    assert "/work/" not in source and "data_dir()" in source


def test_calibrate_thresholds_reads_the_dataset_like_the_runner(capsys):
    from evals import calibrate_thresholds

    code = calibrate_thresholds.main(["--data", str(WIKIMEL), "--sample", "50", "--embedding-model", "embedded"])
    out = capsys.readouterr().out
    assert code == 0 and "mentions with gold among candidates:" in out and "reflection (alpha)" in out


def test_busy_note_names_another_process_that_keeps_a_cpu_busy():
    """A process spinning one CPU is seen and named; once it is gone, nothing is said at a threshold it alone
    would have crossed (whatever else the machine runs stays below 50 CPUs)."""
    from evals.machine import busy_note

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        note = busy_note(seconds=0.6, threshold=0.5)
        assert note is not None and f"pid {spinner.pid}" in note and "busy when this run started" in note
    finally:
        spinner.kill()
        spinner.wait()
    assert busy_note(seconds=0.2, threshold=50) is None


def test_a_busy_machine_is_said_on_stderr_and_in_the_report_and_kept_on_resume(tmp_path, monkeypatch, capsys):
    import evals.runner as runner

    run = tmp_path / "run"
    monkeypatch.setenv("I2CR_BUSY_CHECK", "1")
    monkeypatch.setattr(runner, "busy_note", lambda: "the machine was busy when this run started: llama (pid 7) 1.9")
    run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), limit=2, progress=False, report=False)
    assert "note: the machine was busy" in capsys.readouterr().err
    monkeypatch.setattr(runner, "busy_note", lambda: None)  # resumed on a free machine: the first start's note stays
    run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=fake_context(), progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["machine_busy"] == ["the machine was busy when this run started: llama (pid 7) 1.9"]
    assert "**Not this machine's own speed:** the machine was busy" in (run / "report.md").read_text()
    run_eval(WIKIMEL, WIKIMEL_LABELS, tmp_path / "free", context=fake_context(), limit=1, progress=False)
    assert "machine_busy" not in json.loads((tmp_path / "free" / "config.json").read_text())
    assert "Not this machine's own speed" not in (tmp_path / "free" / "report.md").read_text()
    # I2CR_BUSY_CHECK=0 skips the check (the test session's default: a shared CI machine must not add a stderr line)
    monkeypatch.setattr(runner, "busy_note", lambda: "the machine was busy when this run started: llama (pid 7) 1.9")
    monkeypatch.setenv("I2CR_BUSY_CHECK", "0")
    capsys.readouterr()
    run_eval(WIKIMEL, WIKIMEL_LABELS, tmp_path / "unchecked", context=fake_context(), limit=1, progress=False)
    assert "busy" not in capsys.readouterr().err
    assert "machine_busy" not in json.loads((tmp_path / "unchecked" / "config.json").read_text())
