"""Bad input (issue #12 part 4): each case is a one-line error naming the input (exit 2), or a documented
degradation recorded in the trace. Files are written in the test; models are fakes or a local fake server."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from graph import Context, graph
from graph.cli import main
from graph.context import coerce_setting
from graph.inputs import clip_context
from tools.errors import ConfigError, InputError, ModelError

from fakes import BagOfWordsEmbeddings, ScriptedChatModel, TableScorer, scripted
from providers_helpers import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
RECORD = str(ROOT / "evals" / "data" / "example_wikimel_25999.json")
DATA = ROOT / "tests" / "data" / "wikimel_small.json"
CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
]
DEEP = "[" * 200_000 + "]" * 200_000


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"i2cr( \w+)?: error: ", lines[0]), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def no_openai_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "I2CR_OPENAI_API_KEY", "I2CR_OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# ---- settings: environment vs explicit values, ranges ------------------------------------------------

def test_an_explicit_value_equal_to_the_default_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("I2CR_MAX_ROUNDS", "2")
    monkeypatch.setenv("I2CR_TEMPERATURE", "0.7")
    assert Context().max_rounds == 2 and Context().temperature == 0.7
    assert Context(max_rounds=4).max_rounds == 4 and Context(temperature=0.0).temperature == 0.0
    from graph.context import resolve_context

    class Runtime:  # what LangGraph hands a node when the context came as a dict
        context = {"max_rounds": 4}

    assert resolve_context(Runtime()).max_rounds == 4


@pytest.mark.parametrize("setting, value, message", [
    ("reflection_threshold", 7, "reflection_threshold: expected a number between 0 and 1, got 7"),
    ("temperature", -3, "temperature: expected a number >= 0, got -3"),
    ("gate_threshold", 1.5, "gate_threshold: expected a number between 0 and 1"),
    ("verification_threshold", -0.1, "verification_threshold: expected a number between 0 and 1"),
    ("top_k", 0, "top_k: expected an integer >= 1"),
    ("max_rounds", -1, "max_rounds: expected an integer >= 0"),
    ("max_context_chars", -5, "max_context_chars: expected an integer >= 0"),
    ("request_timeout", 0, "request_timeout: expected a number > 0"),
    ("kb_port", 70000, "kb_port: expected an integer between 1 and 65535"),
    ("linker_mode", "vote", "linker_mode: expected 'fused' or 'llm'"),
])
def test_settings_out_of_range_are_one_line_config_errors(setting, value, message):
    with pytest.raises(ConfigError) as err:
        Context(**{setting: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"--set {setting}="):
        coerce_setting(setting, str(value), origin=f"--set {setting}")


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("I2CR_REFLECTION_THRESHOLD", "7")
    with pytest.raises(ConfigError, match=r"^I2CR_REFLECTION_THRESHOLD='7': expected a number between 0 and 1$"):
        Context()
    assert Context(reflection_threshold=0.3).reflection_threshold == 0.3  # explicit value: the variable is not read


def test_cli_rejects_out_of_range_settings_in_one_line(capsys):
    code, out, err = cli(capsys, "link", "--mention", "x", "--context", "y", "--set", "reflection_threshold=7")
    assert code == 2 and out == ""
    one_line_error(err, "--set reflection_threshold='7'", "between 0 and 1")


def test_context_schema_keeps_descriptions_ranges_and_the_new_fields():
    schema = graph.get_context_jsonschema()
    props = schema["properties"]
    assert set(props) == set(Context.model_fields)
    assert all(str(p.get("description", "")).strip() for p in props.values())
    assert props["reflection_threshold"]["maximum"] == 1 and props["top_k"]["minimum"] == 1
    assert props["linker_model"]["type"] == "string"  # a model object is accepted from Python, not shown in forms
    assert props["strict_image"]["default"] is False and "exit 2" in props["strict_image"]["description"]
    assert props["max_context_chars"]["default"] == Context().max_context_chars > 0


# ---- model specs checked before the first mention ---------------------------------------------------

@pytest.mark.parametrize("pair, message", [
    ("linker_model=foo:bar", "linker_model: unknown provider 'foo'"),
    ("linker_model=openai:", "linker_model: 'openai:' names no model"),
    ("linker_model=huggingface:/nonexistent", "linker_model 'huggingface:/nonexistent': no such file or folder"),
    ("linker_model=huggingface:no such model!", "is neither an existing local path nor a hub id"),
    ("verifier=foo:bar", "verifier: unknown provider 'foo'"),
    ("verifier=clip:/nonexistent/clip", "verifier 'clip:/nonexistent/clip': no such file or folder"),
    ("verifier=judge:foo:bar", "verifier judge: unknown provider 'foo'"),
    ("embedding_model=openai:text-embedding-3-small", "embedding_model 'openai:text-embedding-3-small': no API key"),
    ("caption_model=clip:x", "caption_model: unknown provider 'clip'"),
    ("scene_model=huggingface:x", "scene_model: unknown provider 'huggingface'"),
    ("ocr_engine=easyocr", "ocr_engine: unknown engine 'easyocr'"),
])
def test_bad_model_specs_fail_before_any_mention_or_model_load(pair, message, capsys, no_openai_env, no_model_loads):
    # no --image: the verifier and caption model are checked even when no mention would use them
    code, out, err = cli(capsys, "link", "--mention", "Jordan", "--context", "Jordan scored",
                         "--candidates", RECORD, "--set", pair)
    assert code == 2 and out == ""
    one_line_error(err, message)


def test_openai_spec_without_a_key_or_base_url_is_refused_up_front(tmp_path, monkeypatch, capsys, no_openai_env,
                                                                    no_model_loads):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "eval", str(DATA), "--set", "linker_model=openai:gpt-4o-mini", "--out", str(run))
    assert code == 2 and not any(run.glob("*.jsonl"))
    one_line_error(err, "linker_model 'openai:gpt-4o-mini': no API key", "OPENAI_API_KEY", "openai_base_url")
    assert Context(linker_model="openai:gpt-4o-mini", openai_base_url="http://127.0.0.1:1/v1")  # keyless local server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert Context(linker_model="openai:gpt-4o-mini").linker_model == "openai:gpt-4o-mini"


def test_existing_local_model_paths_and_hub_ids_pass_the_early_check(tmp_path, no_model_loads):
    (tmp_path / "model").mkdir()
    assert Context(linker_model=f"huggingface:{tmp_path / 'model'}", verifier="clip:openai/clip-vit-base-patch32",
                   embedding_model="huggingface:sentence-transformers/all-MiniLM-L6-v2",
                   ocr_engine="tesseract:eng+deu")
    with pytest.raises(ConfigError, match="no such GGUF file"):
        Context(linker_model="huggingface:model.gguf")


def test_the_provider_table_matches_the_loaders():
    from tools import embeddings, models, verify
    from tools.clues import caption, objects, ocr, scene
    from tools.specs import OCR_ENGINES, PROVIDERS

    assert PROVIDERS == {"linker_model": models.CHAT_PROVIDERS, "embedding_model": embeddings.EMBEDDING_PROVIDERS,
                         "verifier": verify.VERIFIER_PROVIDERS, "caption_model": caption.PROVIDERS,
                         "object_model": objects.PROVIDERS, "scene_model": scene.PROVIDERS}
    assert OCR_ENGINES == ocr.ENGINES


# ---- text that is not UTF-8, JSON nested too deeply --------------------------------------------------

def test_non_utf8_mention_and_context_name_the_field(capsys, no_model_loads):
    bad = b"J\xffrdan".decode("utf-8", "surrogateescape")  # what sys.argv holds for these bytes
    code, _, err = cli(capsys, "link", "--mention", bad, "--context", "x", "--candidates", RECORD)
    assert code == 2
    one_line_error(err, "mention: not valid UTF-8 text (byte 0xff at character 1)")
    code, _, err = cli(capsys, "link", "--mention", "Jordan", "--context", "ok " + bad, "--candidates", RECORD)
    assert code == 2
    one_line_error(err, "context: not valid UTF-8 text (byte 0xff at character 4)")
    with pytest.raises(InputError, match=r"candidates\[1\]\.desc: not valid UTF-8"):
        graph.invoke({"mention": "Jordan", "context": "", "candidates": [CANDS[0], {**CANDS[1], "desc": bad}]})


def test_non_utf8_argv_bytes_through_a_real_process():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "graph.cli", "link", "--mention", b"Jord\xe9n", "--context", "x",
                           "--candidates", RECORD], capture_output=True, cwd=ROOT, env=env, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    one_line_error(err, "mention: not valid UTF-8 text (byte 0xe9")


def test_json_nested_too_deeply_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    code, _, err = cli(capsys, "link", "--mention", "x", "--context", "y", "--candidates", str(deep))
    assert code == 2
    one_line_error(err, "--candidates:", "deep.json is nested too deeply")
    code, _, err = cli(capsys, "eval", str(deep), "--out", str(tmp_path / "run"))
    assert code == 2
    one_line_error(err, "dataset:", "nested too deeply")
    code, _, err = cli(capsys, "eval", str(DATA), "--labels", str(deep), "--out", str(tmp_path / "run2"))
    assert code == 2
    one_line_error(err, "--labels:", "nested too deeply")

    from evals.datasets import load_dataset

    lines = tmp_path / "data.jsonl"
    lines.write_text(json.dumps({"id": "a", "mention": "Jordan", "context": "c", "candidates": CANDS}) + "\n" + DEEP + "\n")
    ds = load_dataset(lines)
    assert ds.examples[0].error is None and "line 2: JSON nested too deeply" in ds.examples[1].error


# ---- a context longer than the model's window ---------------------------------------------------------

def test_clip_context_keeps_the_text_around_the_mention():
    text = "a" * 50 + " the word Jordan sits here " + "b" * 50
    assert clip_context(text, "Jordan", 0) == (text, None)
    assert clip_context(text, "Jordan", 1000) == (text, None)
    cut, note = clip_context(" ".join(f"w{i}" for i in range(5000)) + " Jordan scored 30 points " +
                             " ".join(f"v{i}" for i in range(5000)), "Jordan", 200)
    assert "Jordan scored 30 points" in cut and len(cut) <= 200
    assert cut.split()[0].startswith("w") and cut.split()[-1].startswith("v")  # centred, whole words
    assert "max_context_chars=200" in note and "around the mention" in note
    cut, note = clip_context("x " * 1000, "Jordan", 100)
    assert len(cut) <= 100 and "does not occur" in note


class WindowedModel(ScriptedChatModel):
    """A scripted chat model that fails, like llama.cpp, when the prompt exceeds its window."""

    window_chars: int = 20_000

    def _call(self, messages, stop=None, run_manager=None, **kwargs):
        size = sum(len(str(m.content)) for m in messages)
        if size > self.window_chars:
            raise ValueError(f"prompt of {size} chars does not fit the window of {self.window_chars}")
        return super()._call(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_a_huge_context_is_cut_around_the_mention_and_the_mention_links():
    context = "filler text " * 25_000 + "Jordan scored 30 points for the Bulls. " + "more filler " * 25_000
    ctx = Context(linker_mode="llm", linker_model=WindowedModel(responses=["1"] * 4, prompts=[]), embedding_model=BagOfWordsEmbeddings(),
                  verifier=TableScorer({}), reflection_threshold=0.0)
    out = graph.invoke({"mention": "Jordan", "context": context, "candidates": CANDS}, context=ctx)
    assert out["entity"]["qid"] == "Q41421" and out["status"] != "error"
    note = out["trace"][0]["note"]
    assert note.startswith("2 candidates from input; context cut to characters") and f"of {len(context.strip())}" in note
    assert "max_context_chars=4000" in note
    with pytest.raises(Exception, match="does not fit the window"):  # without the cut the mention fails
        graph.invoke({"mention": "Jordan", "context": context, "candidates": CANDS},
                     context=ctx.model_copy(update={"max_context_chars": 0}))


def test_cli_reads_the_context_from_a_file_or_stdin(tmp_path, capsys, monkeypatch):
    big = "filler " * 30_000 + "Stoltenberg speaks at a memorial service. " + "filler " * 30_000  # > 128 KB
    path = tmp_path / "context.txt"
    path.write_text(big, encoding="utf-8")
    common = ["--candidates", RECORD, "--model", "openai:tiny", "--set", "embedding_model=openai:tiny-embed",
              "--set", "linker_mode=llm", "--set", "reflection_threshold=0", "--set", "verification_threshold=0",
              "--compact"]
    with FakeOpenAI(reply="1") as server:
        code, out, err = cli(capsys, "link", "--mention", "Stoltenberg", "--context-file", str(path),
                             "--set", f"openai_base_url={server.base_url}", *common)
        assert code == 0, err
        result = json.loads(out)
        assert "context cut to characters" in result["trace"][0]["note"]
        assert max(len(json.dumps(r)) for r in server.requests) < 30_000  # no request carries the whole text
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(big.encode("utf-8"))))
        code, out, err = cli(capsys, "link", "--mention", "Stoltenberg", "--context", "-",
                             "--set", f"openai_base_url={server.base_url}", *common)
        assert code == 0, err
        assert "context cut to characters" in json.loads(out)["trace"][0]["note"]
    code, _, err = cli(capsys, "link", "--mention", "x", "--context-file", str(tmp_path / "missing.txt"))
    assert code == 2
    one_line_error(err, "--context-file: file not found:", "missing.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    code, _, err = cli(capsys, "link", "--mention", "x", "--context-file", str(latin1))
    assert code == 2
    one_line_error(err, "--context-file:", "latin1.txt is not UTF-8 text (byte 0xe9 at offset 3)")
    code, _, err = cli(capsys, "link", "--mention", "x", "--context", "y", "--context-file", str(path))
    assert code == 2
    one_line_error(err, "--context and --context-file: give only one of them")


# ---- knowledge base CLI --------------------------------------------------------------------------------

@pytest.fixture
def kb_cli(tmp_path, monkeypatch, capsys):
    from tools import embeddings as emb_mod

    monkeypatch.setattr(emb_mod, "load_embeddings", lambda *a, **k: BagOfWordsEmbeddings())
    store = ["--path", str(tmp_path / "kb"), "--collection", "bad-input", "--no-progress"]

    def run(*args: str) -> tuple[int, str, str]:
        extra = store if args[0] == "ingest" else store[:-1]
        return cli(capsys, "kb", *args, *extra)

    return run


def test_kb_ingest_reports_a_non_utf8_line_as_file_and_line(tmp_path, kb_cli):
    f = tmp_path / "e.jsonl"
    f.write_bytes(b'{"qid": "Q1", "name": "Jordan"}\n{"qid": "Q2", "name": "J\xf6rdan"}\n'
                  b'{"qid": "Q3", "name": "Bulls"}\n' + DEEP.encode() + b"\n")
    code, out, err = kb_cli("ingest", str(f), "--json")
    assert code == 0 and "Traceback" not in err
    assert f"{f}:2: skipped: not UTF-8 text (byte 0xf6 at column 25)" in err
    assert f"{f}:4: skipped: JSON nested too deeply" in err
    summary = json.loads(out)
    assert summary["added"] == 2 and summary["skipped"] == 2
    code, out, err = kb_cli("ingest", str(f), "--on-error", "fail")
    assert code == 2
    one_line_error(err, "2 malformed record(s), nothing ingested", f"{f}:2: not UTF-8 text")


def test_kb_ingest_says_when_a_qid_repeats(tmp_path, kb_cli):
    f = tmp_path / "e.jsonl"
    rows = [{"qid": "Q1", "name": "Jordan"}, {"qid": "Q2", "name": "Bulls"}, {"qid": "Q1", "name": "Jordan River"},
            {"qid": "Q3", "name": "Pippen"}, {"qid": "Q2", "name": "Chicago Bulls"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = kb_cli("ingest", str(f), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["duplicates"] == 2 and summary["count"] == 3
    assert [d["qid"] for d in summary["duplicate_examples"]] == ["Q1", "Q2"]
    assert "2 record(s) repeat a qid" in err and f"Q1 ({f}:3)" in err and f"Q2 ({f}:5)" in err
    code, out, _ = kb_cli("search", "Jordan", "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)} >= {"Jordan River", "Chicago Bulls"}  # the last wins


def test_kb_search_k_zero_is_rejected(kb_cli):
    code, out, err = kb_cli("search", "Jordan", "-k", "0")
    assert code == 2 and out == ""
    one_line_error(err, "kb search -k 0: expected a positive number")


# ---- unreachable server, empty candidate list ------------------------------------------------------------

def test_an_unreachable_server_is_named_by_its_url():
    from langchain_core.messages import HumanMessage

    from tools.choice import label_distribution
    from tools.embeddings import CachedEmbedder, load_embeddings
    from tools.models import invoke_model, load_chat_model

    from server_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    model = load_chat_model("openai:down", base_url=url, max_retries=0, timeout=5)
    with pytest.raises(ModelError) as err:
        invoke_model(model, [HumanMessage("hi")], spec="openai:down")
    assert str(err.value).startswith(f"linker_model 'openai:down' at {url} failed: could not connect")
    with pytest.raises(ModelError, match=f"linker_model 'openai:down' at {url} failed"):
        label_distribution(model, [HumanMessage("pick")], ["A", "B"], ["a", "b"], spec="openai:down")
    embedder = CachedEmbedder(load_embeddings("openai:e-down", base_url=url), name="openai:e-down")
    with pytest.raises(ModelError, match=f"embedding_model 'openai:e-down' at {url} failed"):
        embedder.embed(["text"])


def test_an_empty_candidate_list_is_noted_when_the_knowledge_base_is_asked(tmp_path):
    from tools.kb import KnowledgeBase

    emb = BagOfWordsEmbeddings()
    KnowledgeBase(path=tmp_path / "kb", embeddings=emb).ingest(CANDS, progress=False)
    ctx = Context(linker_mode="llm", linker_model=scripted("1"), embedding_model=emb, verifier=TableScorer({}),
                  reflection_threshold=0.0, kb_path=str(tmp_path / "kb"), top_k=2)
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored", "candidates": []}, context=ctx)
    assert out["trace"][0]["note"] == ("2 candidates from knowledge base; the input's candidate list is empty: "
                                       "candidates retrieved from the knowledge base instead")
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored"}, context=ctx)
    assert out["trace"][0]["note"] == "2 candidates from knowledge base"  # none given: no note
