"""Likelihood scoring on a real OpenAI-compatible server: llama-cpp-python's, on tiny GGUFs built here.

The server's echoed log-probabilities of each candidate name are compared with
the in-process llama.cpp scorer's on the same file. A second GGUF has no BOS
token: llama-cpp-python's server then shifts its echoed log-probabilities by
one token, which the probe must catch (falling back to lettered choices).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] (fastapi, uvicorn, sse-starlette)")

from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402

from tools import choice  # noqa: E402
from tools.errors import ConfigError  # noqa: E402
from tools.models import load_chat_model  # noqa: E402

from fakes import BagOfWordsEmbeddings, TableScorer  # noqa: E402
from providers_helpers import write_tiny_gguf  # noqa: E402

# ChatML after the BOS token: what Qwen-style GGUFs render (the BOS here comes from the template)
CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [SystemMessage("You link mentions to entities."),
            HumanMessage("Text: the Bulls won. Who is 'Jordan' in this text? Answer with the name.")]
NAMES = ["Michael Jordan", "Jordan", "the he the", "Jordan River"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(gguf: Path, log: Path):
    """Start llama-cpp-python's OpenAI-compatible server on ``gguf``; return (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--seed", "0"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{base}/models", timeout=1).read()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 60 s")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm-server")
    with_bos = write_tiny_gguf(folder / "chatml-bos.gguf", chat_template=CHATML, add_bos=True)
    no_bos = write_tiny_gguf(folder / "no-bos.gguf", add_bos=False)
    procs = []
    try:
        p1, url1 = serve(with_bos, folder / "bos.log")
        procs.append(p1)
        p2, url2 = serve(no_bos, folder / "nobos.log")
        procs.append(p2)
        yield {"bos": (with_bos, url1), "nobos": (no_bos, url2)}
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def server_model(url: str):
    return load_chat_model("openai:tiny", base_url=url, max_tokens=4)


def test_server_likelihoods_equal_the_in_process_llama_cpp_scorer(servers):
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    gguf, url = servers["bos"]
    remote = server_model(url)
    probe = choice.server_probe(remote)
    assert probe.echo_ok and probe.template == "chatml", probe
    assert choice.server_probe(remote) is probe  # probed once per server and model
    assert choice.scoring_method(remote, "auto", "openai:tiny") == "likelihood"

    local = load_llama_cpp_chat_model(gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=4)
    want, _ = choice.name_likelihoods(local, MESSAGES, NAMES, spec="embedded:tiny")
    got, call = choice.name_likelihoods(remote, MESSAGES, NAMES, spec="openai:tiny")
    assert call["method"] == "likelihood" and "server echo logprobs" in call["route"] and call["input_tokens"] > 0
    assert got == pytest.approx(want, abs=2e-3)
    assert len(set(round(x, 3) for x in got)) == len(NAMES)  # real, distinct scores


def test_a_server_with_shifted_echo_logprobs_falls_back_to_letters(servers):
    _, url = servers["nobos"]
    remote = server_model(url)
    probe = choice.server_probe(remote)
    assert not probe.echo_ok and "shifted by one token" in probe.reason
    assert choice.scoring_method(remote, "auto", "openai:tiny") == "choice"
    with pytest.raises(ConfigError, match="does not score a given answer"):
        choice.scoring_method(remote, "likelihood", "openai:tiny")


def test_the_graph_asks_a_shared_server_by_likelihood(servers):
    from graph import Context, graph

    _, url = servers["bos"]
    ctx = Context(linker_model="openai:tiny", openai_base_url=url, embedding_model=BagOfWordsEmbeddings(),
                  gate_threshold=1.0, verifier=TableScorer({}))
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored for the Bulls",
                        "candidates": ["Michael Jordan", "Jordan", "Jordan River"]}, context=ctx)
    llm = next(s["llm"] for s in out["trace"] if s.get("llm"))
    assert llm["method"] == "likelihood" and out["usage"]["llm_calls"] == 1
