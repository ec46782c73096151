"""A hostile-input pass over the ``i2cr`` command line (issue #12's standard), as a new user would try it.

Each case is either one line ``i2cr[ sub]: error: ...`` naming the input (exit 2) or a documented
degradation (a warning on stderr and in the JSON / the record). Files are written in the test; the
cases that link use fake models (no model is loaded: the ``no_model_loads`` fixture fails the test).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from graph import Context, graph
from graph.cli import main, read_text_arg
from graph.context import coerce_setting
from graph.inputs import validate_input
from tools.errors import ConfigError, InputError
from tools.files import read_json_file

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error: " in lines[0] and lines[0].startswith("i2cr"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def fake_context(**settings) -> Context:
    return Context(linker_mode="llm", linker_model=scripted("1", "1", "1", "1"), embedding_model=BagOfWordsEmbeddings(),
                   verifier=TableScorer({}), reflection_threshold=0.0, **settings)


# ---- i2cr link -----------------------------------------------------------------------------------------

def test_link_without_context_is_refused_and_a_bad_setting_is_named_first(capsys, tmp_path, no_model_loads):
    cands = tmp_path / "c.json"
    cands.write_text(json.dumps(CANDS))
    code, out, err = cli(capsys, "link", "--mention", "Jordan", "--candidates", str(cands))
    assert code == 2 and out == ""
    one_line_error(err, "--context: missing", "--context ''")
    code, _, err = cli(capsys, "link", "--mention", "Jordan", "--set", "max_rounds=many")  # settings come first
    assert code == 2
    one_line_error(err, "--set max_rounds='many'")


def test_folders_and_special_files_given_as_input_files(capsys, tmp_path, no_model_loads):
    for args in (["link", "--mention", "J", "--context-file", str(tmp_path)],
                 ["link", "--mention", "J", "--context", "x", "--candidates", str(tmp_path)],
                 ["eval", str(tmp_path), "--out", str(tmp_path / "run")],
                 ["kb", "ingest", str(tmp_path), "--path", str(tmp_path / "kb")]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and out == ""
        one_line_error(err, str(tmp_path), "is a folder")
    assert not (tmp_path / "run").exists() and not (tmp_path / "kb").exists()
    assert read_text_arg(None, "/dev/null") == ""  # an empty device is an empty context, not "file not found"
    r, w = os.pipe()  # a pipe, as --candidates <(jq ...) gives
    os.write(w, json.dumps(CANDS).encode())
    os.close(w)
    try:
        assert read_json_file(f"/dev/fd/{r}", "--candidates") == CANDS
    finally:
        os.close(r)
    code, _, err = cli(capsys, "kb", "ingest", "/dev/null", "--path", str(tmp_path / "kb"))
    assert code == 2
    one_line_error(err, "KB file /dev/null: not a regular file")
    good = tmp_path / "d.jsonl"  # eval hashes its dataset and labels to resume: a pipe or device is refused
    good.write_text(json.dumps({"id": "a", "mention": "Jordan", "context": "c", "candidates": CANDS}) + "\n")
    for args in (["/dev/null"], [str(good), "--labels", "/dev/null"]):
        code, _, err = cli(capsys, "eval", *args, "--out", str(tmp_path / "run"), "--no-progress")
        assert code == 2
        one_line_error(err, "/dev/null is not a regular file", "save it to a file first")
    assert not (tmp_path / "run").exists()


def test_candidate_file_errors_name_the_file(capsys, tmp_path, no_model_loads):
    numbers, huge = tmp_path / "numbers.json", tmp_path / "huge.json"
    numbers.write_text("[1, 2, 3]")
    huge.write_text(json.dumps([{"qid": "Q1", "name": "Jordan " * 2000}]))
    code, _, err = cli(capsys, "link", "--mention", "Jordan", "--context", "x", "--candidates", str(numbers))
    assert code == 2
    one_line_error(err, f"--candidates {numbers}: candidates[0]: expected an object with a 'name', got int")
    code, _, err = cli(capsys, "link", "--mention", "Jordan", "--context", "x", "--candidates", str(huge))
    assert code == 2
    one_line_error(err, f"--candidates {huge}: candidates[0].name: 13,999 characters", "at most 1,000")
    desc = tmp_path / "desc.json"
    desc.write_text("[1]")
    code, _, err = cli(capsys, "link", "--mention", "Jordan", "--context", "x", "--image-desc", str(desc))
    assert code == 2
    one_line_error(err, f"--image-desc {desc}: image description must be a dict or a string")


def test_a_candidates_file_holding_null_is_an_empty_list_and_the_trace_says_so(capsys, tmp_path, monkeypatch):
    from tools import embeddings as emb_mod
    from tools.kb import KnowledgeBase

    monkeypatch.setattr(emb_mod, "load_embeddings", lambda *a, **k: BagOfWordsEmbeddings())
    KnowledgeBase(path=tmp_path / "kb", embeddings=BagOfWordsEmbeddings()).ingest(CANDS, progress=False)
    seen = []
    real_invoke = graph.invoke
    monkeypatch.setattr(graph, "invoke", lambda inputs, context: seen.append(inputs) or real_invoke(
        inputs, context=fake_context(kb_path=str(tmp_path / "kb"), top_k=2)))
    for text in ("null", '{"Candentity": null}'):
        f = tmp_path / "c.json"
        f.write_text(text)
        code, out, err = cli(capsys, "link", "--mention", "Jordan", "--context", "Jordan scored", "--candidates", str(f))
        assert code == 0, err
        assert seen[-1]["candidates"] == []
        assert "the input's candidate list is empty" in json.loads(out)["trace"][0]["note"]


def test_duplicate_candidates_are_dropped_with_a_warning():
    dup = [CANDS[0], {"qid": "Q41421", "name": "Jordan (other)"}, CANDS[1], {"name": "Jordan", "qid": "Q810"}]
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored 30 points", "candidates": dup},
                       context=fake_context())
    warning = out["warnings"][0]
    assert warning == ("candidates: 2 duplicate(s) dropped, the first of each kept: "
                       "[1] (Q41421 'Jordan (other)') repeats [0]; [3] (Q810 'Jordan') repeats [2]")
    assert out["trace"][0]["note"] == warning and out["entity"]["qid"] == "Q41421"
    assert validate_input({"mention": "J", "context": "", "candidates": CANDS})["warnings"] == []


def test_duplicate_candidates_in_a_dataset_reach_the_record_as_a_warning(tmp_path):
    from evals.datasets import load_dataset
    from evals.predict import evaluate_one

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "mention": "Jordan", "context": "Jordan scored",
                                "candidates": [CANDS[0], CANDS[0], CANDS[1]], "gold": "Michael Jordan"}) + "\n")
    ex = load_dataset(data).examples[0]
    assert ex.error is None and len(ex.inputs["candidates"]) == 3
    ctx = fake_context()
    rec = evaluate_one(graph, ex, ctx, lambda inputs: {})
    assert not rec.get("error") and rec["prediction"]["qid"] == "Q41421"
    assert rec["warnings"] == ["input 'a': candidates: 1 duplicate(s) dropped, the first of each kept: "
                               "[1] (Q41421 'Michael Jordan') repeats [0]"]


@pytest.mark.parametrize("mention, message", [
    ("\u200b", "mention: must be a non-empty string (got '\\u200b')"),
    ("\u200e\u202e \u00a0", "mention: must be a non-empty string"),
    ("Jor\x00dan", "mention: holds the control character U+0000 at character 3"),
    ("Jordan\x1b[31m", "mention: holds the control character U+001B at character 6"),
])
def test_invisible_or_control_character_mentions_are_refused(mention, message, capsys, no_model_loads):
    with pytest.raises(InputError) as err:
        graph.invoke({"mention": mention, "context": "x", "candidates": CANDS}, context=fake_context())
    assert message in str(err.value) and "\n" not in str(err.value)
    code, out, err_text = cli(capsys, "link", "--mention", mention, "--context", "x")
    assert code == 2 and out == ""
    one_line_error(err_text, message)


def test_odd_but_visible_unicode_links():
    """RTL text, emoji, a tab and a NUL in the context are text: linked, no error."""
    for mention, context in (("\u202bJordan", "\u05d2\u05f3\u05d5\u05e8\u05d3\u05df Jordan scored \U0001F3C0"),
                             ("\U0001F3C0", "\U0001F3C0 at the Bulls"), ("Jordan\t", "Jordan \x00 scored")):
        out = graph.invoke({"mention": mention, "context": context, "candidates": CANDS}, context=fake_context())
        assert out["status"] != "error" and out["entity"] is not None, (mention, out["status"])


@pytest.mark.parametrize("setting, raw", [("temperature", "inf"), ("gate_threshold", "nan"),
                                          ("request_timeout", "inf"), ("llm_weight", "-inf")])
def test_non_finite_settings_are_refused(setting, raw, monkeypatch):
    with pytest.raises(ConfigError, match=rf"^--set {setting}='{raw}': expected a finite number$"):
        coerce_setting(setting, raw, origin=f"--set {setting}")
    with pytest.raises(ConfigError, match=f"^{setting}: expected a finite number"):
        Context(**{setting: float(raw)})
    monkeypatch.setenv(f"I2CR_{setting.upper()}", raw)
    with pytest.raises(ConfigError, match=f"^I2CR_{setting.upper()}='{raw}': expected a finite number"):
        Context()


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://127.0.0.1:9/v1", "http://exa mple/v1", "http://"])
def test_a_base_url_without_http_is_refused_before_any_call(url, capsys, monkeypatch, no_model_loads):
    code, out, err = cli(capsys, "link", "--mention", "Jordan", "--context", "x", "--model", "openai:x",
                         "--set", f"openai_base_url={url}")
    assert code == 2 and out == ""
    one_line_error(err, f"--set openai_base_url='{url}': expected an http:// or https:// URL")
    monkeypatch.setenv("I2CR_OPENAI_BASE_URL", url)
    with pytest.raises(ConfigError, match=f"^I2CR_OPENAI_BASE_URL='{url}': expected an http"):
        Context()
    assert Context(openai_base_url=" http://localhost:8000/v1 ").openai_base_url == "http://localhost:8000/v1"


@pytest.mark.parametrize("pair, hint", [("MAX_ROUNDS=2", "'max_rounds'"), ("max_round=2", "'max_rounds'"),
                                        ("gate-treshold=0", "'gate_threshold'"), ("zzz=1", None)])
def test_an_unknown_setting_suggests_the_close_one(pair, hint, capsys, no_model_loads):
    code, out, err = cli(capsys, "link", "--mention", "J", "--context", "x", "--set", pair)
    assert code == 2 and out == ""
    line = one_line_error(err, f"--set {pair.split('=')[0].replace('-', '_')}: unknown setting", "choose from [")
    assert (f"(did you mean {hint}?)" in line) if hint else "did you mean" not in line


# ---- i2cr kb ---------------------------------------------------------------------------------------------

def test_kb_search_names_non_utf8_mention_and_context(capsys, tmp_path, no_model_loads):
    bad = b"J\xffrdan".decode("utf-8", "surrogateescape")  # what sys.argv holds for these bytes
    code, out, err = cli(capsys, "kb", "search", bad, "--path", str(tmp_path / "kb"))
    assert code == 2 and out == ""
    one_line_error(err, "mention: not valid UTF-8 text (byte 0xff at character 1)")
    code, out, err = cli(capsys, "kb", "search", "Jordan", "--context", "ok " + bad, "--path", str(tmp_path / "kb"))
    assert code == 2
    one_line_error(err, "context: not valid UTF-8 text (byte 0xff at character 4)")


def test_kb_path_that_is_a_file_is_named_once(capsys, tmp_path):
    f = tmp_path / "kb.json"
    f.write_text("{}")
    code, out, err = cli(capsys, "kb", "count", "--path", str(f))
    assert code == 2 and out == ""
    line = one_line_error(err, f"kb_path: {f} is a file, not a knowledge base folder")
    assert line.count(str(f)) == 1


# ---- i2cr eval ---------------------------------------------------------------------------------------------

def test_eval_refuses_an_empty_dataset_limit_zero_and_an_out_file_before_any_work(capsys, tmp_path, no_model_loads):
    good = tmp_path / "d.jsonl"
    good.write_text(json.dumps({"id": "a", "mention": "Jordan", "context": "c", "candidates": CANDS,
                                "gold": "Jordan"}) + "\n")
    for name, text in (("empty.json", "{}"), ("empty_list.json", "[]"), ("blank.jsonl", "\n\n")):
        (tmp_path / name).write_text(text)
        code, out, err = cli(capsys, "eval", str(tmp_path / name), "--out", str(tmp_path / "run"), "--no-progress")
        assert code == 2 and out == ""
        one_line_error(err, f"dataset: {tmp_path / name} holds no record")
    code, _, err = cli(capsys, "eval", str(good), "--limit", "0", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 2
    one_line_error(err, "--limit: expected a positive number, got 0")
    assert not (tmp_path / "run").exists()
    code, _, err = cli(capsys, "eval", str(good), "--out", str(good), "--no-progress")
    assert code == 2
    one_line_error(err, f"--out {good}: is a file, not a run folder")


# ---- i2cr report / compare ----------------------------------------------------------------------------------

def test_report_and_compare_say_which_lines_they_skipped(capsys, tmp_path):
    from test_report import fixture_records, write_run

    recs = fixture_records()
    a = write_run(tmp_path / "a", recs)
    b = write_run(tmp_path / "b", recs)
    with open(b / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "m99", "mention": "trunc\n[1, 2]\n')
    code, out, err = cli(capsys, "report", str(b))
    assert code == 0 and "report: " in out
    assert f"note: {b / 'predictions.jsonl'}: line 11 is not valid JSON; ignored" in err
    assert f"note: {b / 'predictions.jsonl'}: line 12 has no 'id'; ignored" in err
    code, out, err = cli(capsys, "compare", str(a), str(b))
    assert code == 0 and "line 11 is not valid JSON" in err


def test_report_and_compare_skip_lines_of_the_wrong_shape(capsys, tmp_path):
    """A hand-edited or foreign predictions.jsonl: valid JSON, wrong types. It used to end in a TypeError traceback."""
    from test_report import fixture_records, write_run

    from evals.store import read_predictions

    good = fixture_records()
    weird = [{"id": "w1", "gold": "Alpha", "prediction": None},
             {"id": "w2", "gold": {"name": "A"}, "prediction": "A"},
             {"id": "w3", "gold": {"name": "A"}, "prediction": {"name": "A"}, "stop_round": "two"},
             {"id": "w4", "gold": {"name": "A"}, "prediction": {"name": "A"}, "stop_round": 1,
              "trace": [{"step": "link", "round": 1, "pick": "A", "top": "bad"}]},
             {"id": ["w5"]}, {"id": "w6", "correct": "yes"}, {"id": "w7", "trace": [1]}]
    run = write_run(tmp_path / "b", good + weird)
    records, notes = read_predictions(run)
    assert [r["id"] for r in records] == [r["id"] for r in good]
    assert [n.split(": ", 1)[1] for n in notes] == [
        "line 11 is not a prediction line ('gold' is a str); ignored",
        "line 12 is not a prediction line ('prediction' is a str); ignored",
        "line 13 is not a prediction line ('stop_round' is a str); ignored",
        "line 14 is not a prediction line (trace[0].pick is a str); ignored",
        "line 15 is not a prediction line ('id' is a list); ignored",
        "line 16 is not a prediction line ('correct' is a str); ignored",
        "line 17 is not a prediction line (trace[0] is a int); ignored"]
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0 and "Traceback" not in err and err.count("is not a prediction line") == 7
    a = write_run(tmp_path / "a", good)
    code, out, err = cli(capsys, "compare", str(a), str(run))
    assert code == 0 and out.startswith("9 shared mentions\n") and err.count("is not a prediction line") == 7


@pytest.mark.parametrize("config, problem", [("[1]", "it holds a JSON list, not an object"),
                                             ('{"settings": "x"}', "'settings' is a str"),
                                             ('{"dataset": 7}', "'dataset' is a int")])
def test_a_config_json_of_the_wrong_shape_is_one_line(config, problem, capsys, tmp_path):
    from test_report import fixture_records, write_run

    run = write_run(tmp_path / "run", fixture_records())
    (run / "config.json").write_text(config)
    for args in (["report", str(run)], ["compare", str(run), str(run)]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and out == ""
        one_line_error(err, f"{run / 'config.json'} is not a run configuration ({problem})")


def test_compare_says_when_the_runs_are_on_different_datasets(capsys, tmp_path):
    from test_report import fixture_records, write_run

    a = write_run(tmp_path / "a", fixture_records())
    b = write_run(tmp_path / "b", fixture_records())
    for run, digest in ((a, "1" * 64), (b, "2" * 64)):
        config = json.loads((run / "config.json").read_text())
        config.update(dataset=f"{run.name}.json", dataset_sha256=digest)
        (run / "config.json").write_text(json.dumps(config))
    code, out, err = cli(capsys, "compare", str(a), str(b))
    assert code == 0
    assert "note: the runs are on different datasets (A: a.json, B: b.json)" in err
    code, out, err = cli(capsys, "compare", str(a), str(a))
    assert code == 0 and f"note: {a} is compared with itself" in err


def test_bench_retrieval_reports_a_failing_phase_without_a_traceback(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "evals.bench_retrieval", "--data", str(tmp_path / "missing"),
                           "--workdir", str(tmp_path / "w"), "--embedding-model", "embedded"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "bench_retrieval: error: KB file" in proc.stderr


def test_kb_ingest_skips_a_name_too_long_and_a_store_holding_one_still_answers(capsys, tmp_path, monkeypatch):
    from tools import embeddings as emb_mod
    from tools.kb import KnowledgeBase

    monkeypatch.setattr(emb_mod, "load_embeddings", lambda *a, **k: BagOfWordsEmbeddings())
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"qid": "Q1", "name": "Michael Jordan", "desc": "basketball"}) + "\n"
                 + json.dumps({"qid": "Q3", "name": "x" * 5000}) + "\n")
    code, out, err = cli(capsys, "kb", "ingest", str(f), "--path", str(tmp_path / "kb"), "--no-progress", "--json")
    assert code == 0 and json.loads(out)["added"] == 1
    assert f"{f}:2: skipped: 'name' has 5,000 characters; a name has at most 1,000" in err
    # a store written before the limit (here: written directly) still answers a mention that has no candidates
    emb = BagOfWordsEmbeddings()
    kb = KnowledgeBase(path=tmp_path / "old", embeddings=emb)
    monkeypatch.setattr("tools.kb.MAX_NAME_CHARS", 10**9)
    kb.ingest([{"qid": "Q1", "name": "Michael Jordan"}, {"qid": "Q3", "name": "Jordan " * 1000}], progress=False)
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored"},
                       context=fake_context(kb_path=str(tmp_path / "old"), top_k=2))
    assert out["trace"][0]["note"] == "2 candidates from knowledge base" and out["entity"] is not None
