"""evals/bench_scale.py and evals/bench_servers.py: their arithmetic, the prediction diff, the timers, the
memory sampler on a real child process, the projection, and one smoke run of the benchmark on fake models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals import bench_scale as bs
from evals import bench_servers as sv

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------- statistics ---
def test_wilson_interval_matches_the_formula():
    w = bs.wilson(8, 10)
    assert w["p"] == 0.8
    assert w["lo"] == pytest.approx(0.4902, abs=1e-4) and w["hi"] == pytest.approx(0.9433, abs=1e-4)
    assert bs.wilson(10, 10)["hi"] == 1.0 and bs.wilson(0, 10)["lo"] == 0.0
    assert bs.wilson(0, 0)["p"] is None


def test_rate_interval_is_one_over_the_mean_with_a_bootstrap_around_it():
    flat = bs.rate_interval([0.5] * 20)
    assert flat["rate"] == pytest.approx(2.0) and flat["lo"] == pytest.approx(2.0) and flat["hi"] == pytest.approx(2.0)
    mixed = bs.rate_interval([0.1] * 80 + [3.5] * 20, seed=1)
    assert mixed["rate"] == pytest.approx(100 / (8 + 70))
    assert mixed["lo"] < mixed["rate"] < mixed["hi"]
    assert bs.rate_interval([])["rate"] is None


def test_steady_throughput_counts_between_the_first_and_last_mention_to_finish():
    assert bs.steady_rate([3.0, 0.0, 1.0, 2.0]) == pytest.approx(1.0)
    assert bs.steady_rate([5.0]) is None and bs.steady_rate([1.0, 1.0]) is None
    # two actors: a mention takes 1 s each, one finishes every 0.5 s -> 2 mentions/s, parallelism 2
    t = bs.throughput([0.0, 0.5, 1.0, 1.5, 2.0], [1.0] * 5)
    assert t["rate"] == pytest.approx(2.0) and t["parallelism"] == pytest.approx(2.0)
    assert t["lo"] == pytest.approx(2.0) and t["hi"] == pytest.approx(2.0)
    t = bs.throughput([0.0, 0.5, 1.0, 1.5, 2.0], [0.2, 1.8, 1.0, 0.4, 1.6], seed=3)
    assert t["lo"] < 2.0 < t["hi"]


def test_prediction_diff_lists_each_difference_with_both_answers():
    ref = {"a": {"qid": "Q1", "name": "A"}, "b": {"qid": "Q2", "name": "B"}, "c": None, "d": {"qid": "Q4", "name": "D"}}
    other = {"a": {"qid": "Q1", "name": "A"}, "b": {"qid": "Q9", "name": "Z"}, "c": None}
    d = bs.diff_predictions(ref, other)
    assert d["identical"] == 2 and d["compared"] == 3
    assert d["differs"] == [{"id": "b", "eval": {"qid": "Q2", "name": "B"}, "other": {"qid": "Q9", "name": "Z"}}]
    assert d["missing"] == ["d"]


def test_time_shares_sum_to_the_linking_time():
    t = bs.time_shares([{"seconds": 1.0, "parts": {"embeddings": 0.2, "llm": 0.5}},
                        {"seconds": 5.0, "parts": {"features": 0.3, "load": 4.0}}])
    assert t["seconds"] == pytest.approx({"embeddings": 0.2, "features": 0.3, "llm": 0.5, "clues": 0.0, "other": 1.0})
    assert t["load_s"] == 4.0 and t["total_s"] == pytest.approx(2.0)  # loading the models is left out
    assert sum(t["share"].values()) == pytest.approx(1.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def time(self):
        return self.now


def test_timers_count_exclusive_time_and_a_batch_call_goes_to_the_next_mention(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bs, "time", clock)
    monkeypatch.setattr(bs, "_pending", {})
    monkeypatch.setattr(bs, "_installed", True)  # leave the real tools unwrapped

    def embed():
        clock.now += 2.0

    embed_t = bs.timed("embeddings", embed)

    def features():
        clock.now += 1.0
        embed_t()
        clock.now += 0.5

    features_t = bs.timed("features", features)

    class Graph:
        def invoke(self, inputs, context=None):
            clock.now += 0.25
            features_t()
            return {"entity": None, "trace": [{"step": "final"}], "usage": {"llm_calls": 2}}

    embed_t()  # outside any mention: a batch's embedding call
    out = bs.TimedGraph(Graph()).invoke({})
    timing = bs.timing_of(out["trace"])
    assert out["trace"][0] == {"step": "final"}
    assert timing["parts"] == {"embeddings": 4.0, "features": 1.5}
    assert timing["before_s"] == 2.0 and timing["seconds"] == pytest.approx(0.25 + 1.5 + 2.0 + 2.0)
    assert timing["llm_calls"] == 2
    assert bs.TimedGraph(Graph()).invoke({})["trace"][-1]["before_s"] == 0.0  # given once only


# ------------------------------------------------------------------- memory ---
CHILD = ("import sys, time; x = bytearray(160 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
         "print('ready', flush=True); sys.stdin.readline()")


@pytest.mark.parametrize("use_psutil", [True, False])
def test_rss_sampler_sees_a_child_process(monkeypatch, use_psutil):
    if not use_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # the /proc fallback
    child = subprocess.Popen([sys.executable, "-c", CHILD, "bench-rss-child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with bs.RssSampler(interval=0.05, match=("bench-rss-child",)) as s:
            s.sample()
        peak = s.as_dict()
    finally:
        child.communicate("\n", timeout=30)
    assert peak["largest_child_mb"] >= 150 and peak["linkers_mb"] >= 150
    assert peak["total_mb"] >= peak["driver_mb"] + 150
    assert s.samples >= 2
    later = bs.tree_rss(bs.os.getpid(), ("bench-rss-child",))
    assert later["linkers"] == 0  # the child is gone


# --------------------------------------------------------------- projection ---
def test_projection_arithmetic():
    p = sv.project(per_core_rate=2.0, text_rate_per_core=20.0, llm_share=0.2, llm_calls_per_mention=None,
                   kb_qps=100.0, llm_calls_s=4.0, llm_latency_s=1.0, llm_server_threads=2, mentions=10_000_000)
    assert p["embedded"]["core_hours"] == pytest.approx(1e7 / 2 / 3600)
    s = p["shared"]
    assert s["local_s_per_mention"] == pytest.approx(0.05) and s["wait_s_per_mention"] == pytest.approx(0.2)
    assert s["actors_per_core"] == pytest.approx(5.0)
    assert s["actors_per_llm_server"] == pytest.approx(4.0 / (0.2 / 0.25))
    assert s["mentions_per_s_one_server"] == pytest.approx({"llm_server": 20.0, "chroma_server": 100.0})
    assert s["cores_fed_by_one_server"] == pytest.approx({"llm_server": 1.0, "chroma_server": 5.0})
    assert s["first_bottleneck"] == "llm_server"
    assert s["core_hours"]["actors"] == pytest.approx(1e7 * 0.05 / 3600)
    assert s["core_hours"]["llm_server"] == pytest.approx(1e7 * 0.2 / 4.0 / 3600 * 2)
    # a fast LLM server and a slow Chroma: the KB comes first
    assert sv.project(per_core_rate=2.0, text_rate_per_core=20.0, llm_share=0.2, llm_calls_per_mention=0.3,
                      kb_qps=10.0, llm_calls_s=40.0, llm_latency_s=1.0,
                      llm_server_threads=2)["shared"]["first_bottleneck"] == "chroma_server"
    assert "note" in sv.project(per_core_rate=2.0, text_rate_per_core=None, llm_share=0.2, llm_calls_per_mention=None,
                                kb_qps=None, llm_calls_s=None, llm_latency_s=None, llm_server_threads=1)["shared"]


def _scale_json(path: Path) -> Path:
    rows = [{"id": str(i), "error": None, "llm": i < 2, "llm_calls": 1 if i < 2 else 0,
             "parts": {"llm": 3.0 if i < 2 else 0.0}} for i in range(10)]
    path.write_text(json.dumps({"mentions": 10, "cpus": 2, "loadavg_start": [0.1], "loadavg_end": [0.2],
                                "configs": {"batch1": {"throughput": {"rate": 1.0}},
                                            "batch2": {"throughput": {"rate": 3.0}},
                                            "text": {"throughput": {"rate": 40.0}}},
                                "rows": {"eval": rows}}))
    return path


def test_scale_inputs_read_the_per_core_rates(tmp_path):
    got = sv.scale_inputs(_scale_json(tmp_path / "s.json"))
    assert got["best_batch"] == "batch2" and got["per_core_rate"] == pytest.approx(1.5)
    assert got["text_rate_per_core"] == pytest.approx(20.0)
    assert got["llm_share"] == pytest.approx(0.2) and got["llm_calls_per_mention"] == pytest.approx(0.2)
    assert got["llm_s_in_process"] == pytest.approx(3.0)
    assert got["text_rate_source"] == "text"
    assert sv.scale_inputs(tmp_path / "missing.json") is None
    res = json.loads((tmp_path / "s.json").read_text())
    res["configs"]["text-kb"] = {"throughput": {"rate": 100.0}}  # the entity vectors from the KB: that rate
    (tmp_path / "k.json").write_text(json.dumps(res))
    got = sv.scale_inputs(tmp_path / "k.json")
    assert got["text_rate_per_core"] == pytest.approx(50.0) and got["text_rate_source"] == "text-kb"


def test_project_only_run_prints_measured_and_projected_apart(tmp_path, capsys):
    out = tmp_path / "servers.json"
    code = sv.main(["--project-only", "--scale", str(_scale_json(tmp_path / "s.json")), "--kb-qps", "50",
                    "--llm-calls-s", "0.5", "--llm-latency-s", "2", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "MEASURED inputs" in text and "PROJECTED for 10,000,000 mentions" in text
    res = json.loads(out.read_text())
    assert res["projection"]["embedded"]["core_hours"] == pytest.approx(1e7 / 1.5 / 3600)
    assert res["projection"]["shared"]["first_bottleneck"] == "llm_server"
    code = sv.main(["--project-only", "--scale", str(tmp_path / "none.json"), "--out", str(out)])
    assert code == 0 and "PROJECTION skipped" in capsys.readouterr().out


def test_run_clients_shares_the_items_and_counts_errors():
    seen = []

    def work(state, item):
        if item == 3:
            raise RuntimeError("server said 500")
        seen.append((state, item))

    r = sv.run_clients(2, list(range(6)), work, setup=lambda i: f"client{i}")
    assert r["calls"] == 5 and r["errors"] == 1 and "server said 500" in r["first_error"]
    assert sorted(i for _, i in seen) == [0, 1, 2, 4, 5]
    assert {s for s, i in seen if i % 2 == 0} == {"client0"}
    assert sv.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5) and sv.percentile([], 50) is None


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    from tools.errors import InputError

    with pytest.raises(InputError, match="--configs: unknown"):
        bs.benchmark(DATA / "wikimel_small.json", None, None, configs=("eval", "batch9"))
    with pytest.raises(InputError, match="'text' and 'text-kb' need 'eval'"):
        bs.benchmark(DATA / "wikimel_small.json", None, None, configs=("text",))
    with pytest.raises(InputError, match="'text-kb' needs the knowledge base's entities"):
        bs.benchmark(DATA / "wikimel_small.json", None, None, configs=("eval", "text-kb"), kb=tmp_path / "no.jsonl")
    assert bs.main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "o.json")]) == 2
    assert "bench_scale: error: data: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sv.main(["--clients", "two"])


# -------------------------------------------------------------------- smoke ---
def test_smoke_run_on_fake_models(tmp_path):
    """eval, batch with 2 actors and the text-decided re-run on the small WikiMEL file, fake models."""
    pytest.importorskip("ray", reason="the ray extra: pip install 'i2cr[ray]'")
    from test_fused import name_model

    from graph import Context, graph

    from fakes import BagOfWordsEmbeddings, TableScorer

    ctx = Context(linker_model=name_model(Michael_Jordan=-0.5, Paris_Hilton=-0.2, Jordan=-3.0),
                  embedding_model=BagOfWordsEmbeddings(), verifier=TableScorer({}), gate_threshold=0.6)
    res = bs.benchmark(DATA / "wikimel_small.json", str(DATA / "wikimel_small_label.json"), ctx,
                       configs=("eval", "batch2", "text"), workdir=tmp_path, log=lambda m: None)
    from evals.datasets import load_dataset

    examples = [ex for ex in load_dataset(str(DATA / "wikimel_small.json"), None).examples if ex.inputs]
    want = {}
    for ex in examples:
        ent = graph.invoke(dict(ex.inputs), context=ctx)["entity"]
        want[ex.id] = None if not ent else {"qid": ent.get("qid"), "name": ent.get("name")}
    ev, b2, text = (res["configs"][n] for n in ("eval", "batch2", "text"))
    assert {r["id"]: r["entity"] for r in res["rows"]["eval"]} == want  # eval ran the graph unchanged
    assert b2["same_as_eval"]["identical"] == b2["same_as_eval"]["compared"] == len(want)
    assert 0 < len(res["text_decided_ids"]) < len(want)  # both kinds of mention
    assert text["n"] == len(res["text_decided_ids"]) and text["llm_asked"]["n"] == 0
    assert text["same_as_eval"]["identical"] == text["n"]
    assert ev["text_decided"]["n"] + ev["llm_asked"]["n"] == len(want)
    assert b2["throughput"]["rate"] > 0 and b2["top1"]["n"] == len(want) and b2["top1"]["p"] == ev["top1"]["p"]
    assert b2["memory"]["linkers_mb"] > 0 and ev["memory"]["linkers_mb"] > 0
    assert ev["time"]["seconds"]["features"] > 0 and ev["time"]["seconds"]["llm"] > 0
    assert res["targets"]["top1_unchanged"]["met"] is True
    assert "| batch2 |" in bs.table(res)
    assert json.dumps(res, default=str)


def test_the_int8_kb_configuration_its_spec_and_its_count_of_differing_predictions():
    assert bs.CONFIGS[-2:] == ("text-kb-onnx", "text-kb-onnx-int8") and "text-kb-onnx-int8" in bs.KB_CONFIGS
    assert bs.ONNX_CONFIGS == {"text-kb-onnx": "onnx", "text-kb-onnx-int8": "onnx-int8"}
    assert bs.onnx_spec("embedded") == "onnx:embedded" and bs.onnx_spec("embedded", "onnx-int8") == "onnx-int8:embedded"
    assert bs.onnx_spec("huggingface:/m", "onnx-int8") == "onnx-int8:/m"
    assert bs.onnx_spec("onnx:/m", "onnx-int8") == "onnx-int8:/m" and bs.onnx_spec("onnx-int8:/m") == "onnx:/m"
    assert bs.onnx_spec("openai:text-embedding-3-small", "onnx-int8") is None and bs.onnx_spec(object()) is None
    # the fastest KB configuration gives the target's figure, with its count of predictions as eval's
    res = {"configs": {"text-kb-onnx": {"throughput": {"rate": 30.0}, "same_as_eval": {"identical": 711, "compared": 711}},
                       "text-kb-onnx-int8": {"throughput": {"rate": 55.0},
                                             "same_as_eval": {"identical": 703, "compared": 711}}}}
    tg = bs.targets(res)["text_decided_mps"]
    assert tg["kb_config"] == "text-kb-onnx-int8" and tg["measured_kb"] == 55.0 and tg["met_kb"] is True
    assert tg["kb_same_as_eval"] == "703/711"
    res["configs"]["text-kb-onnx-int8"]["throughput"]["rate"] = 20.0
    assert bs.targets(res)["text_decided_mps"]["kb_same_as_eval"] == "711/711"


def test_a_kb_config_whose_gate_moved_runs_its_own_text_decided_mentions_again(tmp_path, monkeypatch):
    """When some of eval's text-decided mentions ask the LLM in a KB configuration (another embedding model
    moves the gate), the mentions it decided alone are run again, alone, as ``<config>/own``; that re-run
    competes for the target's figure and is compared with eval's predictions like the others."""
    from graph import Context

    def row(rid, llm, seconds=0.01):
        return {"id": rid, "entity": {"qid": rid, "name": rid}, "error": None, "correct": True, "seconds": seconds,
                "end": 1000.0 + seconds * int(rid[1:]), "llm": llm, "llm_calls": int(llm), "timing": {"parts": {}}}

    extra = {"wall_s": 1.0, "memory": {"total_mb": 1.0, "linkers_mb": 1.0}}
    monkeypatch.setattr(bs, "run_eval_config", lambda *a, **k: (
        [row("m1", False), row("m2", False), row("m3", False), row("m4", True)], dict(extra)))
    monkeypatch.setattr(bs, "ingest_kb", lambda entities, folder, ctx, log: (ctx, {"seconds": 0.0}))
    calls = []

    def batch(data, out_dir, ctx, gold, **kw):
        ids = list(json.loads(Path(data).read_text(encoding="utf-8")))
        calls.append(ids)
        rows = [row(i, i == "m3" and len(calls) == 1, 0.001 if len(calls) > 1 else 0.01) for i in ids]
        return rows, dict(extra)

    monkeypatch.setattr(bs, "run_batch_config", batch)
    monkeypatch.setattr(bs, "select_records", lambda *a: ({f"m{i}": {"mention": "x"} for i in range(1, 5)},
                                                          {f"m{i}": None for i in range(1, 5)},
                                                          [f"m{i}" for i in range(1, 5)]))
    kb = tmp_path / "kb.jsonl"
    kb.write_text("{}\n")
    res = bs.benchmark(tmp_path / "d.json", None, Context(), configs=("eval", "text-kb"), workdir=tmp_path,
                       log=lambda m: None, kb=kb)
    assert calls == [["m1", "m2", "m3"], ["m1", "m2"]]  # eval's text-decided, then the config's own
    own = res["configs"]["text-kb/own"]
    assert own["n"] == 2 and own["same_as_eval"]["identical"] == 2 and "decided without the LLM" in own["source"]
    assert res["configs"]["text-kb"]["llm_asked"]["n"] == 1
    assert res["targets"]["text_decided_mps"]["kb_config"] == "text-kb/own"  # the faster of the two
    assert "| text-kb/own |" in bs.table(res)
