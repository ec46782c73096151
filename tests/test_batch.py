"""``i2cr batch`` on a local Ray (``ray.init(num_cpus=2)``, one session for the module) with fake models.

The fake models reach the Ray actors by pickle, so the ones defined here are
importable (``test_batch`` is on the actors' path: the session's runtime env
carries the test process's ``sys.path``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'i2cr[ray]'")

from evals import batch as batch_mod  # noqa: E402
from evals.batch import done_ids, link_batch, main, read_results  # noqa: E402
from evals.datasets import load_dataset  # noqa: E402
from graph import Context, graph  # noqa: E402

from fakes import BagOfWordsEmbeddings, ScriptedChatModel, TableScorer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
WIKIMEL = DATA / "wikimel_small.json"


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray session for the module (starting Ray takes seconds)."""
    if not ray.is_initialized():
        path = os.pathsep.join(p for p in [str(ROOT), str(Path(__file__).parent), *sys.path] if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


class Slow(ScriptedChatModel):
    """Answers "1" after ``delay`` seconds."""

    delay: float = 0.0

    def _call(self, messages, *args, **kwargs):
        time.sleep(self.delay)
        return super()._call(messages, *args, **kwargs)


class DiesOnce(ScriptedChatModel):
    """Ends its process (``os._exit``) the first time a prompt holds ``word``; a marker file says it did."""

    word: str = "Mercury"
    marker: str = ""
    parent_pid: int = 0

    def _call(self, messages, *args, **kwargs):
        if any(self.word in str(m.content) for m in messages) and not os.path.exists(self.marker):
            if os.getpid() == self.parent_pid:
                raise RuntimeError("linking in the test process: no Ray actor was used")
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super()._call(messages, *args, **kwargs)


class DiesAlways(ScriptedChatModel):
    """Ends its process every time a prompt holds ``word`` (never in the test process)."""

    word: str = "Mercury"
    parent_pid: int = 0

    def _call(self, messages, *args, **kwargs):
        if any(self.word in str(m.content) for m in messages):
            if os.getpid() == self.parent_pid:
                raise RuntimeError("linking in the test process: no Ray actor was used")
            os._exit(1)
        return super()._call(messages, *args, **kwargs)


class Hangs(ScriptedChatModel):
    """Never answers (sleeps ``seconds``) when a prompt holds ``word`` (never in the test process)."""

    word: str = "Mercury"
    seconds: float = 300.0
    parent_pid: int = 0

    def _call(self, messages, *args, **kwargs):
        if any(self.word in str(m.content) for m in messages):
            if os.getpid() == self.parent_pid:
                raise RuntimeError("linking in the test process: no Ray actor was used")
            time.sleep(self.seconds)
        return super()._call(messages, *args, **kwargs)


class Raises(ScriptedChatModel):
    """Raises when a prompt holds ``word``."""

    word: str = "Mercury"

    def _call(self, messages, *args, **kwargs):
        if any(self.word in str(m.content) for m in messages):
            raise RuntimeError("server said 500")
        return super()._call(messages, *args, **kwargs)


def context(model=None) -> Context:
    return Context(linker_mode="llm", linker_model=model or ScriptedChatModel(responses=["1"], prompts=[]),
                   embedding_model=BagOfWordsEmbeddings(),
                   verifier=TableScorer({"Michael Jordan": 0.9, "George Washington": 0.9}), reflection_threshold=0.0)


def corpus(path: Path, n: int, bad: bool = False) -> Path:
    """``n`` JSON-lines mentions (and, with ``bad``, a line that is not JSON and a record without a mention)."""
    names = ["Michael Jordan", "Jordan", "Jordan River"]
    lines = [json.dumps({"id": f"m{i}", "mention": "Jordan", "context": f"Jordan {i} scored for the Bulls",
                         "candidates": names}) for i in range(n)]
    if bad:
        lines[1:1] = ['{"id": "broken", "mention": ', json.dumps({"id": "nomention", "context": "x"})]
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def in_process(examples, ctx) -> dict[str, dict]:
    """The graph run in this process, one ``graph.invoke`` per mention: id -> (entity, status, round)."""
    out = {}
    for ex in examples:
        if ex.inputs is None:
            out[ex.id] = (None, None, None)
            continue
        res = graph.invoke(dict(ex.inputs), context=ctx)
        ent = res["entity"]
        out[ex.id] = ({"qid": ent.get("qid"), "name": ent.get("name")} if ent else None, res["status"],
                      res["stop_round"])
    return out


def test_same_predictions_as_linking_in_process(tmp_path):
    ds = load_dataset(WIKIMEL)
    want = in_process(ds.examples, context())
    summary = link_batch(WIKIMEL, tmp_path / "out", context=context(), concurrency=2, batch_size=2,
                         progress=False, trace=True)
    recs = list(read_results(tmp_path / "out"))
    assert summary["written"] == len(ds.examples) == len(recs) and summary["errors"] == 1
    assert "candidate has no name" in next(r["error"] for r in recs if r["id"] == "104")
    got = {r["id"]: (r["entity"], r["status"], r["stop_round"]) for r in recs}
    assert got == want
    assert all(r["trace"][-1]["step"] == "final" and "confidence" in r for r in recs if r["id"] != "104")
    # Parquet in, Parquet out: the same answers
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": ex.id, "mention": ex.inputs["mention"], "context": ex.inputs["context"],
             "candidates": ex.inputs["candidates"]} for ex in ds.examples if ex.inputs]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    link_batch(tmp_path / "in.parquet", tmp_path / "pq", context=context(), fmt="parquet", progress=False)
    got_pq = {r["id"]: (r["entity"], r["status"], r["stop_round"]) for r in read_results(tmp_path / "pq")}
    assert got_pq == in_process(load_dataset(_jsonl(tmp_path / "rows.jsonl", rows)).examples, context())
    assert all(p.suffix == ".parquet" for p in batch_mod.part_files(tmp_path / "pq"))
    again = link_batch(tmp_path / "in.parquet", tmp_path / "pq", context=context(), progress=False)
    assert again["format"] == "parquet" and again["resumed_from"] == len(rows) and again["written"] == 0


def test_a_bad_record_and_a_failing_mention_are_recorded_with_their_reason(tmp_path):
    src = corpus(tmp_path / "in.jsonl", 4, bad=True)
    summary = link_batch(src, tmp_path / "out", context=context(Raises(responses=["1"], prompts=[], word="Jordan 2 ")),
                         progress=False)
    recs = {r["id"]: r for r in read_results(tmp_path / "out")}
    assert len(recs) == 6 and summary["errors"] == 3
    broken = [r for k, r in recs.items() if k.startswith("h")]
    assert len(broken) == 1 and "not valid JSON" in broken[0]["error"]
    assert "'mention' must be a non-empty string" in recs["nomention"]["error"]
    assert "server said 500" in recs["m2"]["error"] and recs["m2"]["entity"] is None
    assert all(recs[f"m{i}"]["error"] is None and recs[f"m{i}"]["entity"]["name"] for i in (0, 1, 3))


def test_an_actor_that_dies_mid_batch_is_restarted_and_nothing_is_doubled(tmp_path):
    marker = tmp_path / "died"
    model = DiesOnce(responses=["1"], prompts=[], marker=str(marker), parent_pid=os.getpid())
    summary = link_batch(WIKIMEL, tmp_path / "out", context=context(model), batch_size=2, progress=False)
    assert marker.is_file()  # an actor did die
    ids = [r["id"] for r in read_results(tmp_path / "out")]
    assert sorted(ids) == ["101", "102", "103", "104", "105", "106"]  # each once
    assert summary["errors"] == 1  # 104, malformed


def test_a_mention_that_kills_its_actor_twice_is_recorded_and_the_batch_goes_on(tmp_path):
    model = DiesAlways(responses=["1"], prompts=[], parent_pid=os.getpid())
    summary = link_batch(WIKIMEL, tmp_path / "out", context=context(model), batch_size=3, progress=False)
    recs = {r["id"]: r for r in read_results(tmp_path / "out")}
    assert sorted(recs) == ["101", "102", "103", "104", "105", "106"] and summary["written"] == 6
    killer = [r for r in recs.values() if r["mention"] == "Mercury"]
    assert len(killer) == 1 and "the actor died 2 times while linking this mention" in killer[0]["error"]
    assert all(r["entity"] for r in recs.values() if r["mention"] != "Mercury" and r["id"] != "104")


def test_a_mention_that_hangs_ends_its_actor_and_is_recorded_after_two_timeouts(tmp_path):
    """--mention-timeout in i2cr batch: a mention that never returns ends its actor (Ray restarts it and
    redoes the batch); after two such timeouts it is recorded with the reason and the batch goes on."""
    model = Hangs(responses=["1"], prompts=[], parent_pid=os.getpid())
    t = time.perf_counter()
    summary = link_batch(WIKIMEL, tmp_path / "out", context=context(model), batch_size=3, progress=False,
                         mention_timeout=2)
    assert time.perf_counter() - t < 120  # not the 300 s of the hang
    recs = {r["id"]: r for r in read_results(tmp_path / "out")}
    assert sorted(recs) == ["101", "102", "103", "104", "105", "106"] and summary["written"] == 6
    hung = [r for r in recs.values() if r["mention"] == "Mercury"]
    assert len(hung) == 1 and "took longer than --mention-timeout 2 s 2 times (a hang?)" in hung[0]["error"]
    assert all(r["entity"] for r in recs.values() if r["mention"] != "Mercury" and r["id"] != "104")


def test_bad_mention_timeouts_are_refused_before_anything_runs(tmp_path, capsys):
    for bad in ("-5", "nan"):
        assert main([str(WIKIMEL), "--out", str(tmp_path / "o"), "--mention-timeout", bad]) == 2
        assert "--mention-timeout: expected seconds >= 0 (0 = no limit)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_timeout_too_long_for_a_timer_means_no_limit():
    """--mention-timeout inf (or 1e300) starts no watchdog: a timer that long fails in its thread."""
    from evals.batch import Linker

    linker = Linker.__new__(Linker)
    for endless in (None, float("inf"), 1e300):
        linker.mention_timeout = endless
        assert linker._watchdog("1") is None
    linker.mention_timeout = 3600.0
    watchdog = linker._watchdog("1")
    try:
        assert watchdog is not None and watchdog.is_alive() and watchdog.daemon
    finally:
        watchdog.cancel()


def test_rerun_skips_what_is_written_and_a_changed_setting_is_refused(tmp_path, capsys):
    src = corpus(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out"
    link_batch(src, out, context=context(), progress=False)
    again = link_batch(src, out, context=context(), progress=False)
    assert again["resumed_from"] == 5 and again["written"] == 0
    assert main([str(src), "--out", str(out), "--set", "max_rounds=1", "--no-progress"]) == 2
    assert "another settings" in capsys.readouterr().err
    from evals.store import RunLock

    with RunLock(out):  # another run holds the folder
        assert main([str(src), "--out", str(out), "--no-progress"]) == 2
    assert "is in use by another" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "input: file not found" in capsys.readouterr().err
    assert main([str(src), "--out", str(tmp_path / "big"), "--concurrency", "3", "--no-progress"]) == 2
    assert "needs 3 CPUs; the Ray cluster has 2" in capsys.readouterr().err
    # a JSON list of records is read like JSON lines (converted once into the output folder)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([json.loads(line) for line in src.read_text().splitlines()[:3]]))
    summary = link_batch(listed, tmp_path / "listed", context=context(), progress=False)
    assert summary["written"] == 3 and {r["id"] for r in read_results(tmp_path / "listed")} == {"m0", "m1", "m2"}


DRIVER = """
import sys
from evals.batch import link_batch
from test_batch import Slow, context
link_batch(sys.argv[1], sys.argv[2], context=context(Slow(responses=["1"], prompts=[], delay=0.15)),
           batch_size=2, concurrency=1, progress=False)
"""


def test_resume_after_the_driver_is_killed(tmp_path):
    src = corpus(tmp_path / "in.jsonl", 24)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
           "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(src), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(batch_mod.part_files(out)) < 2 and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert 2 <= len(batch_mod.part_files(out))
        proc.send_signal(signal.SIGKILL)  # the driver only
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = done_ids(out)
    assert 0 < len(before) < 24
    summary = link_batch(src, out, context=context(Slow(responses=["1"], prompts=[])), progress=False)
    ids = Counter(r["id"] for r in read_results(out))
    assert set(ids) == {f"m{i}" for i in range(24)} and set(ids.values()) == {1}
    assert summary["resumed_from"] == len(before) and summary["written"] == 24 - len(before)
    assert not list(out.glob(".tmp-*"))


def test_each_actor_gets_the_threads_ray_reserved_for_it():
    from evals.batch import actor_env

    assert actor_env(1, environ={}) == {"I2CR_LLAMA_THREADS": "1", "OMP_NUM_THREADS": "1"}
    assert actor_env(2.5, environ={}) == {"I2CR_LLAMA_THREADS": "2", "OMP_NUM_THREADS": "2"}
    assert actor_env(0.5, environ={})["I2CR_LLAMA_THREADS"] == "1"  # a fraction of a CPU still runs one thread
    assert actor_env(1, environ={"I2CR_LLAMA_THREADS": "4"})["I2CR_LLAMA_THREADS"] == "4"  # the user's choice wins
