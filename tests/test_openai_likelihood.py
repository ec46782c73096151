"""Likelihood scoring on a real OpenAI-compatible server: llama-cpp-python's, on tiny GGUFs built here.

The server's scores of each candidate name are compared with the in-process
llama.cpp scorer's on the same file. A second GGUF (Q8_0) has no BOS token:
llama-cpp-python's server then shifts its echoed log-probabilities by one
token, which the probe must detect (offset 1), the names then being scored
by one-token generations forced with ``logit_bias``. A server whose echo
matches neither offset (fake replies) is refused.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
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
# Qwen's template: ChatML, no BOS token
CHATML_NO_BOS = CHATML.removeprefix("{{ bos_token }}")
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
    no_bos = write_tiny_gguf(folder / "no-bos-q8.gguf", qtype="Q8_0", hidden=32, ff=64, chat_template=CHATML_NO_BOS,
                             add_bos=False)
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


def served_and_local(servers, kind: str, offset: int, route: str):
    """The ``kind`` server's model, its probe and the in-process scorer's scores of NAMES on the same GGUF,
    after checking the probe found ``offset``, ``auto`` takes likelihood and the server's scores (by
    ``route``) equal the in-process ones: real, distinct values."""
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    gguf, url = servers[kind]
    remote = server_model(url)
    probe = choice.server_probe(remote)
    assert probe.echo_ok and probe.offset == offset and probe.template == "chatml", probe
    assert choice.scoring_method(remote, "auto", "openai:tiny") == "likelihood"

    local = load_llama_cpp_chat_model(gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=4)
    want, _ = choice.name_likelihoods(local, MESSAGES, NAMES, spec="embedded:tiny")
    got, call = choice.name_likelihoods(remote, MESSAGES, NAMES, spec="openai:tiny")
    assert call["method"] == "likelihood" and route in call["route"] and call["input_tokens"] > 0
    assert got == pytest.approx(want, abs=2e-3)
    assert len(set(round(x, 3) for x in got)) == len(NAMES)  # real, distinct scores
    return remote, probe, want


def test_server_likelihoods_equal_the_in_process_llama_cpp_scorer(servers):
    remote, probe, _ = served_and_local(servers, "bos", 0, "server echo logprobs")
    assert choice.server_probe(remote) is probe  # probed once per server and model


def test_a_server_without_bos_shifts_its_echo_by_one_and_is_scored_by_forced_tokens(servers):
    remote, probe, want = served_and_local(servers, "nobos", 1, "forced tokens")
    # the echo itself is wrong here: its values for the names are not the scores
    scorer = choice.ServerScorer.for_model(remote)
    echo_probe = choice.Probe(True, "chatml", offset=0)
    echoed, _ = choice.ServerScorer(remote, echo_probe).continuation_logprobs(MESSAGES, NAMES)
    assert scorer.probe is probe and [sum(x) for x in echoed] != pytest.approx(want, abs=0.05)


def test_names_whose_characters_split_across_tokens_are_scored_by_forcing_the_character(servers):
    """The byte-level vocab splits ``Ž`` and ``é`` into two tokens: the prefix ending between them is not
    text, so it cannot be sent; both tokens are generated in one forced request, with the same scores."""
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    gguf, url = servers["nobos"]
    names = ["Samuel Žbogar", "José Lutzenberger", "Jordan"]
    remote = server_model(url)
    scorer = choice.ServerScorer.for_model(remote)
    ids = scorer._tokenize("Samuel Žbogar")
    assert len(ids) == len("Samuel Žbogar") + 1  # one token a byte: "Ž" is two
    with pytest.raises(httpx.HTTPStatusError):  # "Samuel " and Ž's first byte: no text for the server
        scorer._detokenize(ids[:8])
    local = load_llama_cpp_chat_model(gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=4)
    want, _ = choice.name_likelihoods(local, MESSAGES, names, spec="embedded:tiny")
    got, call = choice.name_likelihoods(remote, MESSAGES, names, spec="openai:tiny")
    assert "forced tokens" in call["route"]
    assert got == pytest.approx(want, abs=2e-3)


def test_names_that_part_inside_a_character_are_each_scored_from_the_last_whole_character(monkeypatch):
    """A byte-per-token server (fake): "Čech" and "Ďurica" share Č's and Ď's first byte, so the second name's
    shared prefix ends inside a character; its character is forced whole from the last text boundary."""
    scorer = choice.ServerScorer.__new__(choice.ServerScorer)
    scorer.model_name, scorer.base = "m", "http://x/v1"
    monkeypatch.setattr(scorer, "_tokenize", lambda text: list(text.encode()))
    monkeypatch.setattr(scorer, "_detokenize", lambda ids: bytes(ids).decode())  # raises inside a character
    asked = []

    def post(url, body):
        prompt = body["prompt"].encode()
        forced = [int(t) for t in body["logit_bias"]]
        asked.append((body["prompt"], forced))
        n = body["max_tokens"]
        return {"choices": [{"text": bytes(forced[:n]).decode(), "logprobs": {"token_logprobs": [-0.5] * n}}],
                "usage": {"prompt_tokens": 3 + len(prompt) - len(b"abc"), "completion_tokens": n}}

    monkeypatch.setattr(scorer, "_post", post)
    out, _ = scorer._forced_logprobs("abc", 3, ["Čech", "Ďurica"])
    assert [len(x) for x in out] == [len("Čech".encode()), len("Ďurica".encode())]
    assert ("abc", list("Ď".encode())) in asked  # Ď's two bytes asked together from the boundary before it


def test_a_forced_character_that_comes_back_otherwise_is_refused_with_the_name(monkeypatch):
    scorer = choice.ServerScorer.__new__(choice.ServerScorer)
    scorer.model_name, scorer.base = "m", "http://x/v1"
    reply = {"choices": [{"text": "\u017d", "logprobs": {"token_logprobs": [-1.0, -0.5]}}],
             "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    monkeypatch.setattr(scorer, "_post", lambda url, body: reply)
    assert scorer._forced_group("Žbogar", "p", [5, 6], 7, "\u017d") == ([-1.0, -0.5], 7)
    with pytest.raises(choice.ModelError, match="Žbogar.*cannot be scored"):
        scorer._forced_group("Žbogar", "p", [5, 6], 7, "Z")
    with pytest.raises(choice.ModelError, match="read 7 prompt tokens for a prompt of 8"):
        scorer._forced_group("Žbogar", "p", [5, 6], 8, "\u017d")


class FakeServer:
    """Replies of an OpenAI-compatible server: a generated token " 8" (log-probability -0.5), an echo
    (``echo``: token log-probabilities and top lists of the echoed prompt's last tokens, then one
    generated token's) and what a token forced with ``logit_bias`` comes back as (``forced``)."""

    def __init__(self, echo: list[tuple[float, dict]], forced: tuple[str, float, dict] | None = None):
        self.echo, self.forced = echo, forced

    def __call__(self, request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content or b"{}")
        path = request.url.path
        if path.endswith("/extras/tokenize"):
            return httpx.Response(200, json={"tokens": [11, 12]})
        if path.endswith("/extras/detokenize"):
            return httpx.Response(200, json={"text": {11: " Paris", 12: " 0"}[body["tokens"][0]]})
        if not path.endswith("/v1/completions"):
            return httpx.Response(404, json={})
        usage = {"prompt_tokens": 9, "completion_tokens": 1}
        if body.get("echo"):
            lps = [None] + [lp for lp, _ in self.echo] + [-1.25]
            tops = [None] + [top for _, top in self.echo] + [{" 9": -1.25}]
            choice_ = {"text": body["prompt"] + " 8", "logprobs": {"token_logprobs": lps, "top_logprobs": tops}}
        elif body.get("logit_bias") and self.forced:
            text, lp, top = self.forced
            choice_ = {"text": text, "logprobs": {"token_logprobs": [lp], "top_logprobs": [top]}}
        else:
            choice_ = {"text": " 8", "logprobs": {"token_logprobs": [-0.5], "top_logprobs": [{" 8": -0.5}]}}
        return httpx.Response(200, json={"choices": [choice_], "usage": usage})


FAKE_URL = "http://fake.test/v1"


def fake_probe(server: FakeServer) -> choice.Probe:
    model = load_chat_model("openai:fake", base_url=FAKE_URL, max_tokens=4)
    scorer = choice.ServerScorer(model, probe=None)
    scorer.http = httpx.Client(transport=httpx.MockTransport(server))
    return scorer.run_probe()


def test_a_server_whose_echo_matches_neither_offset_is_refused(monkeypatch):
    # the generated token's -0.5 is neither in the last echoed entry nor in that entry's top list
    probe = fake_probe(FakeServer(echo=[(-2.0, {",": -1.0}), (-3.0, {" 9": -1.5, " 7": -3.0})]))
    assert not probe.echo_ok and probe.offset is None and probe.final
    assert "neither in place nor shifted by one token" in probe.reason and "-0.5000" in probe.reason
    model = load_chat_model("openai:fake", base_url=FAKE_URL, max_tokens=4)
    monkeypatch.setitem(choice._probes, (FAKE_URL, "fake"), probe)
    assert choice.scoring_method(model, "auto", "openai:fake") == "choice"
    with pytest.raises(ConfigError, match="neither in place nor shifted"):
        choice.scoring_method(model, "likelihood", "openai:fake")
    # shifted by one (the previous entry's top list holds it), but logit_bias is ignored: refused too
    shifted = [(-2.0, {",": -1.0}), (-3.0, {" 8": -0.5, " 7": -3.0})]
    probe = fake_probe(FakeServer(echo=shifted, forced=(" 8", -0.5, {" 8": -0.5})))
    assert not probe.echo_ok and probe.offset is None
    assert "shifted by one token, but a token forced with logit_bias came back as ' 8'" in probe.reason
    # ... and taken when the forced token comes back with its own, unbiased log-probability
    probe = fake_probe(FakeServer(echo=shifted, forced=(" Paris", -4.0, {" 8": -0.5, " Paris": -4.0})))
    assert probe.echo_ok and probe.offset == 1, probe


def test_the_graph_asks_a_shared_server_by_likelihood(servers):
    from graph import Context, graph

    _, url = servers["bos"]
    ctx = Context(linker_model="openai:tiny", openai_base_url=url, embedding_model=BagOfWordsEmbeddings(),
                  gate_threshold=1.0, verifier=TableScorer({}))
    out = graph.invoke({"mention": "Jordan", "context": "Jordan scored for the Bulls",
                        "candidates": ["Michael Jordan", "Jordan", "Jordan River"]}, context=ctx)
    llm = next(s["llm"] for s in out["trace"] if s.get("llm"))
    assert llm["method"] == "likelihood" and out["usage"]["llm_calls"] == 1
