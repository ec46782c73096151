"""``i2cr eval`` survives native crashes, refuses a second run on its folder, and stops when everything fails.

The fake models here cross into the eval worker process by pickle, so they are
defined in this (importable) module. A model that kills its process refuses to
do so in the test process itself (``parent_pid``), so a regression to linking
in-process fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from test_evals import WIKIMEL, WIKIMEL_LABELS, CountingGraph, lines

from evals import runner
from evals.cli import eval_main
from evals.runner import failure_reason, run_eval
from evals.store import RunLock, read_predictions
from evals.worker import WorkerError, exit_cause
from graph import Context
from tools.errors import ConfigError

from fakes import BagOfWordsEmbeddings, ScriptedChatModel, TableScorer


class Dies(ScriptedChatModel):
    """Answers "1"; kills its own process (``how``) when a prompt holds ``word``."""

    word: str = "Mercury"
    how: str = "SIGSEGV"
    parent_pid: int = 0

    def _call(self, messages, *args, **kwargs):
        if any(self.word in str(m.content) for m in messages):
            if os.getpid() == self.parent_pid:
                raise RuntimeError("linking in the test process: the worker process was not used")
            if self.how == "abort":
                os.abort()
            os.kill(os.getpid(), getattr(signal, self.how))
        return super()._call(messages, *args, **kwargs)


class Fails(ScriptedChatModel):
    """Raises ``error`` when a prompt holds one of ``words`` (every prompt when ``words`` is empty)."""

    words: list[str] = []
    error: str = "server said 500"

    def _call(self, messages, *args, **kwargs):
        text = " ".join(str(m.content) for m in messages)
        if not self.words or any(w in text for w in self.words):
            raise RuntimeError(self.error)
        return super()._call(messages, *args, **kwargs)


class CountsLoads(BagOfWordsEmbeddings):
    """Bag-of-words embeddings that log the pid of every process they are unpickled (loaded) in."""

    def __init__(self, log: Path):
        self.log = str(log)

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")


def crashing_graph_factory():
    """A graph factory (``"test_eval_worker:crashing_graph_factory"``) whose import kills the worker."""
    if os.getpid() == int(os.environ.get("TEST_PARENT_PID", "0")):
        raise RuntimeError("called in the test process")
    os.kill(os.getpid(), signal.SIGSEGV)


def context(model, embedder=None, verifier=None) -> Context:
    return Context(linker_mode="llm", linker_model=model, embedding_model=embedder or BagOfWordsEmbeddings(),
                   verifier=verifier or TableScorer({"Michael Jordan": 0.9, "George Washington": 0.9}),
                   reflection_threshold=0.0)


def jsonl(path: Path, contexts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"m{i}", "mention": "Jordan", "context": f"Jordan {c} Bulls",
                                        "candidates": ["Michael Jordan", "Jordan"], "gold": "Michael Jordan"}) + "\n"
                            for i, c in enumerate(contexts)))
    return path


# ---- native crashes ---------------------------------------------------------------------

def test_a_mention_that_kills_its_worker_twice_is_recorded_and_the_batch_goes_on(tmp_path):
    run, graph = tmp_path / "run", CountingGraph(tmp_path / "calls.log")
    model = Dies(responses=["1"], prompts=[], parent_pid=os.getpid())
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(model), graph=graph, progress=False)
    recs = lines(run)
    ids = [r["id"] for r in recs]
    assert sorted(ids) == ["101", "102", "103", "104", "105", "106"]  # none lost, none twice
    by_id = {r["id"]: r for r in recs}
    mercury = by_id["105"]
    assert mercury["error"] == "worker died: SIGSEGV while linking"
    assert mercury["prediction"] is None and mercury["correct"] is False and mercury["mention"] == "Mercury"
    assert all(by_id[i]["prediction"] and not by_id[i].get("error") for i in ("101", "102", "103", "106"))
    assert [by_id[i]["correct"] for i in ("101", "102", "103", "106")] == [True, False, True, True]  # as in-process
    calls = graph.calls()
    assert [i for i, _ in calls].count("105") == 2  # tried once more in a fresh worker, then recorded
    pids = {pid for _, pid in calls}
    assert os.getpid() not in pids and len(pids) == 3  # first worker, its replacement, the one after 105
    assert summary["worker_restarts"] == 2 and summary["errors"] == 2 and not summary["stopped"]
    assert any("'105' killed the eval worker 2 times (SIGSEGV)" in n for n in summary["notes"])
    assert "worker died: SIGSEGV while linking" in (run / "report.md").read_text()

    # resume: nothing is linked again, nothing is written twice
    n_calls = len(calls)
    again = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(model), graph=graph, progress=False,
                     report=False)
    assert again["written"] == 0 and again["resumed_from"] == 6 and len(graph.calls()) == n_calls
    assert len(lines(run)) == 6


def test_crashes_with_concurrent_workers(tmp_path):
    """Two workers, each sent a mention ahead; one mention aborts (SIGABRT) each worker it lands on.

    The mention waiting behind it in the dead worker's pipe is linked elsewhere, once, and not blamed.
    """
    contexts = [f"game {i}" for i in range(10)]
    contexts[3] = "Mercury"
    data = jsonl(tmp_path / "d.jsonl", contexts)
    run, graph = tmp_path / "run", CountingGraph(tmp_path / "calls.log")
    model = Dies(responses=["1"], prompts=[], how="abort", parent_pid=os.getpid())
    summary = run_eval(data, None, run, context=context(model), graph=graph, concurrency=2, progress=False,
                       report=False)
    recs = {r["id"]: r for r in lines(run)}
    assert sorted(recs) == sorted(f"m{i}" for i in range(10)) and len(lines(run)) == 10
    assert recs["m3"]["error"] == "worker died: SIGABRT while linking"
    assert [i for i in recs if recs[i].get("error")] == ["m3"]
    assert summary["accuracy"] == 9 / 10 and summary["worker_restarts"] >= 1
    calls = graph.calls()
    assert sorted(i for i, _ in calls if i != "m3") == sorted(f"m{i}" for i in range(10) if i != 3)  # each once
    m3 = [pid for i, pid in calls if i == "m3"]
    assert len(m3) == 2 and len(set(m3)) == 2 and os.getpid() not in m3  # two workers died on it


def test_settings_are_loaded_once_per_worker(tmp_path):
    log = tmp_path / "loads.log"
    data = jsonl(tmp_path / "d.jsonl", [f"game {i}" for i in range(6)])
    graph = CountingGraph(tmp_path / "calls.log")
    run_eval(data, None, tmp_path / "run", context=context(ScriptedChatModel(responses=["1"], prompts=[]),
                                                          CountsLoads(log)),
             graph=graph, concurrency=2, progress=False, report=False)
    loads = [int(p) for p in log.read_text().split()]
    linked_by = {pid for _, pid in graph.calls()}
    assert len(graph.calls()) == 6 and os.getpid() not in loads
    assert len(loads) == len(set(loads)) <= 2 and linked_by <= set(loads)  # one load per worker, none per mention


def test_exit_causes():
    assert exit_cause(-signal.SIGSEGV) == "SIGSEGV"
    assert exit_cause(-signal.SIGKILL) == "SIGKILL (killed: out of memory?)"
    assert exit_cause(3) == "exit code 3"


# ---- what cannot reach a worker: one line before any mention ---------------------------------

def test_a_setting_that_cannot_reach_the_worker_is_named(tmp_path, monkeypatch):
    run = tmp_path / "run"
    scorer = TableScorer({"Michael Jordan": 0.9, "George Washington": 0.9})
    scorer.hook = lambda: None  # a lambda cannot be pickled
    ctx = context(ScriptedChatModel(responses=["1"], prompts=[]), verifier=scorer)
    with pytest.raises(ConfigError, match=r"setting verifier: the TableScorer object cannot be sent to the eval "
                                          r"worker process .*isolation='inline'"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=ctx, progress=False)
    assert not run.exists()  # refused before the run folder is made

    local = type("Local", (BagOfWordsEmbeddings,), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "Local", local, raising=False)
    with pytest.raises(ConfigError, match="setting embedding_model: Local is defined in __main__"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(ScriptedChatModel(responses=["1"], prompts=[]),
                                                               local()), progress=False)
    # in this process, the same objects are fine
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=ctx, progress=False, report=False, isolation="inline")
    assert summary["written"] == 6


def test_a_worker_that_dies_while_starting_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_PARENT_PID", str(os.getpid()))
    run = tmp_path / "run"
    with pytest.raises(WorkerError, match=r"died while starting \(SIGSEGV\), 2 times in a row"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(ScriptedChatModel(responses=["1"], prompts=[])),
                 graph="test_eval_worker:crashing_graph_factory", progress=False, report=False)
    assert [r["id"] for r in lines(run)] == ["104"]  # only the malformed record, which needs no model


def test_bad_settings_fail_before_the_run_folder_is_touched(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="max_rounds"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, run, context={"max_rounds": -1}, progress=False)
    assert not run.exists()


# ---- one run per folder ---------------------------------------------------------------------

def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(ConfigError, match=f"{run} is in use by another i2cr eval run \\(pid {os.getpid()}\\)"):
            run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(ScriptedChatModel(responses=["1"], prompts=[])),
                     progress=False, isolation="inline")
        assert eval_main([str(WIKIMEL), "--labels", str(WIKIMEL_LABELS), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{run} is in use" in err and "Traceback" not in err
        assert not (run / "predictions.jsonl").exists()
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(ScriptedChatModel(responses=["1"], prompts=[])),
                       progress=False, report=False, isolation="inline")
    assert summary["written"] == 6  # the lock is released with its holder


# ---- failing runs: stop early, exit 2 --------------------------------------------------------

def test_failure_reasons_ignore_names_and_numbers():
    assert failure_reason("server said 500") == failure_reason("server said 502")
    assert failure_reason("input 'Jordan': bad") == failure_reason("input 'Rudd': bad")
    assert failure_reason("timeout") != failure_reason("connection refused")


def test_the_first_mentions_all_failing_alike_stop_the_run_and_resume_retries_them(tmp_path):
    data = jsonl(tmp_path / "d.jsonl", [f"game {i}" for i in range(12)])
    run = tmp_path / "run"
    summary = run_eval(data, None, run, context=context(Fails(responses=["1"], prompts=[])), progress=False,
                       report=False)
    assert summary["stopped"].startswith("the first 5 mentions all failed with the same error: ")
    assert "server said 500" in summary["stopped"] and summary["written"] == 5 == len(lines(run))
    # the cause fixed (here: a model that answers), the same run resumes and retries the failed ones
    summary = run_eval(data, None, run, context=context(Fails(responses=["1"], prompts=[], words=["never"])),
                       progress=False, report=False, retry_errors=True, isolation="inline")
    assert summary["done"] == 12 and summary["errors"] == 0 and not summary["stopped"]
    assert len(read_predictions(run)[0]) == 12


def test_mixed_failures_do_not_stop_early(tmp_path):
    """Different errors: no early stop; all 12 fail, so the run is all_failed (exit 2 in the CLI)."""
    contexts = ["timeout" if i % 2 else "refused" for i in range(12)]
    data = jsonl(tmp_path / "d.jsonl", contexts)

    class Echo(Fails):  # defined here: not picklable, so the run is inline
        def _call(self, messages, *args, **kwargs):
            text = " ".join(str(m.content) for m in messages)
            raise RuntimeError("timeout" if "timeout" in text else "connection refused")

    summary = run_eval(data, None, tmp_path / "run", context=context(Echo(responses=["1"], prompts=[])),
                       progress=False, report=False, isolation="inline")
    assert summary["stopped"] is None and summary["written"] == 12 and summary["all_failed"]


def test_most_mentions_failing_alike_stop_the_run(tmp_path):
    contexts = ["boom" if i % 3 != 2 else "fine" for i in range(30)]
    data = jsonl(tmp_path / "d.jsonl", contexts)
    summary = run_eval(data, None, tmp_path / "run",
                       context=context(Fails(responses=["1"], prompts=[], words=["boom"])), progress=False,
                       report=False, isolation="inline")
    assert summary["written"] == 20 and summary["stopped"].startswith(
        "14 of the 20 mentions linked so far (70%) failed with the same error: ")
    summary = run_eval(data, None, tmp_path / "run2", context=context(Fails(responses=["1"], prompts=[],
                                                                            words=["boom"])),
                       progress=False, report=False, isolation="inline", max_failure_share=None)
    assert summary["written"] == 30 and summary["stopped"] is None and not summary["all_failed"]


@pytest.fixture
def cli_with(monkeypatch):
    """``eval_main`` with the fake model given (the CLI cannot name a fake model)."""
    real = runner.run_eval

    def use(model):
        monkeypatch.setattr(runner, "run_eval", lambda *a, **k: real(*a, **{**k, "context": context(model)}))
    return use


def test_cli_exit_codes(tmp_path, capsys, cli_with):
    data = jsonl(tmp_path / "d.jsonl", [f"game {i}" for i in range(8)])
    base = [str(data), "--no-progress", "--no-report"]

    cli_with(Fails(responses=["1"], prompts=[]))
    assert eval_main(base + ["--out", str(tmp_path / "a"), "--limit", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "i2cr eval: error: every mention failed (3 of 3); most often: " in err
    assert err.rstrip().endswith("RuntimeError: server said 500 (3x)")

    assert eval_main(base + ["--out", str(tmp_path / "b")]) == 2
    out, err = capsys.readouterr()
    assert "5/8 mentions" in out and err.count("\n") == 1
    assert "i2cr eval: error: stopped early: the first 5 mentions all failed with the same error" in err
    assert "--retry-errors" in err

    cli_with(Fails(responses=["1"], prompts=[], words=["game 3"]))
    assert eval_main(base + ["--out", str(tmp_path / "c")]) == 0
    assert "8/8 mentions" in capsys.readouterr().out


def test_worker_benchmark_reports_the_overhead(tmp_path, capsys):
    from evals import bench_worker

    out = tmp_path / "bench.json"
    assert bench_worker.main(["--mentions", "6", "--repeat", "1", "--graph", "echo", "--out", str(out)]) == 0
    echo = json.loads(out.read_text())["echo"]
    assert echo["inline"]["ms_per_mention"] > 0 and echo["worker"]["ms_per_mention"] > 0
    assert echo["overhead_ms"] == pytest.approx(echo["worker"]["ms_per_mention"] - echo["inline"]["ms_per_mention"])
    assert echo["worker"]["first_mention_s"] > echo["inline"]["first_mention_s"]  # the worker's start
    assert "overhead" in capsys.readouterr().out
    assert bench_worker.main(["--mentions", "2"]) == 2


def test_a_graph_named_by_module_and_attribute(tmp_path):
    run = tmp_path / "run"
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(ScriptedChatModel(responses=["1"], prompts=[])),
                       graph="graph.compiled:graph", progress=False, report=False)
    assert summary["written"] == 6 and summary["errors"] == 1  # 104 is malformed
    with pytest.raises(ConfigError, match="graph 'nowhere:graph': cannot import it"):
        run_eval(WIKIMEL, WIKIMEL_LABELS, tmp_path / "run2",
                 context=context(ScriptedChatModel(responses=["1"], prompts=[])), graph="nowhere:graph",
                 progress=False, report=False)


def test_cli_in_process_links_objects_that_cannot_reach_a_worker(tmp_path, capsys, cli_with):
    class Local(ScriptedChatModel):  # a class local to a function cannot be pickled
        pass

    data = jsonl(tmp_path / "d.jsonl", [f"game {i}" for i in range(3)])
    cli_with(Local(responses=["1"], prompts=[]))
    assert eval_main([str(data), "--no-progress", "--no-report", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "setting linker_model: the Local object cannot be sent" in err
    assert eval_main([str(data), "--no-progress", "--no-report", "--out", str(tmp_path / "a"), "--in-process"]) == 0
    assert "3/3 mentions" in capsys.readouterr().out


class Hangs(ScriptedChatModel):
    """Answers "1"; never returns when a prompt holds ``word`` (a stuck server call)."""

    word: str = "Mercury"
    parent_pid: int = 0

    def _call(self, messages, *args, **kwargs):
        if any(self.word in str(m.content) for m in messages):
            if os.getpid() == self.parent_pid:
                raise RuntimeError("linking in the test process: the worker process was not used")
            import time

            time.sleep(3600)
        return super()._call(messages, *args, **kwargs)


def test_a_mention_that_hangs_is_timed_out_twice_then_recorded_and_the_batch_goes_on(tmp_path):
    run = tmp_path / "run"
    model = Hangs(responses=["1"], prompts=[], parent_pid=os.getpid())
    summary = run_eval(WIKIMEL, WIKIMEL_LABELS, run, context=context(model), progress=False, report=False,
                       mention_timeout=2.0)
    by_id = {r["id"]: r for r in lines(run)}
    assert sorted(by_id) == ["101", "102", "103", "104", "105", "106"]  # none lost, none twice
    assert by_id["105"]["error"] == "worker died: timed out after 2 s while linking"
    assert all(by_id[i]["prediction"] and not by_id[i].get("error") for i in ("101", "102", "103", "106"))
    assert summary["worker_restarts"] == 2
    assert any("'105' killed the eval worker 2 times (timed out after 2 s)" in n for n in summary["notes"])


@pytest.mark.parametrize("bad", ["-5", "nan"])
def test_a_negative_or_nan_mention_timeout_is_refused_before_anything_runs(tmp_path, capsys, bad):
    assert eval_main([str(WIKIMEL), "--labels", str(WIKIMEL_LABELS), "--out", str(tmp_path / "run"),
                      "--mention-timeout", bad, "--no-progress"]) == 2
    assert f"--mention-timeout: expected seconds >= 0 (0 = no limit), got {float(bad)}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
