"""The linker model's opinion of the candidates, from one call: names' likelihood or letters' distribution.

Likelihood (``llm_scoring="likelihood"``): the model is asked who the mention
is, and the log-probability of each candidate's name as the start of its
answer is read (summed over the name's tokens) from one prompt evaluation
plus a few tokens per name. Models that expose this (``continuation_logprobs``):
the llama.cpp chat model and local transformers models; and OpenAI-compatible
servers that score a given text (vLLM, llama-cpp-python's server):
``/v1/completions`` with ``echo`` and ``logprobs`` on the chat prompt followed
by the name, or, where the echo is shifted by one token (llama-cpp-python's
server on a model without BOS), one-token generations forced with
``logit_bias`` (:class:`ServerScorer`, probed once per server and model).

Letters (``llm_scoring="choice"``), for a lettered candidate list:

* llama.cpp (the embedded default): the logits of the first answer token, read
  after one forward pass over the prompt (prefix reused from the last call).
* OpenAI-compatible servers: ``logprobs`` / ``top_logprobs`` of a one-token answer.
* Any other chat model (transformers pipelines, fakes): the sampled answer,
  parsed, as a smoothed one-hot distribution.
"""

from __future__ import annotations

import math
import os
import string
import threading
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel

from tools.errors import ConfigError, ModelError
from tools.models import describe, invoke_model

LABELS = string.ascii_uppercase
SAMPLED_MASS = 0.9  # probability given to a sampled (not scored) answer
FLOOR = -12.0  # log-probability of a label the server left out of its top list


def labels_for(n: int) -> list[str]:
    """``A``, ``B``, ... for ``n`` candidates (at most 26 are lettered)."""
    return list(LABELS[:min(n, len(LABELS))])


def _from_text(raw: str, labels: list[str], names: list[str]) -> int | None:
    """Index of the candidate a free-text answer names: a letter first, else a bare number counted from 1
    (small models often number the lettered list: "2" is B), else a name."""
    text = raw.strip().strip("*().:'\"` ").upper()
    if text[:1] in labels and (len(text) == 1 or not text[1].isalpha()):
        return labels.index(text[0])
    if text.isdecimal() and len(text) <= 3 and 1 <= int(text) <= len(labels):  # not "²" nor a 5000-digit run
        return int(text) - 1
    low = raw.lower()
    hits = [i for i, n in enumerate(names) if n and n.lower() in low]
    return hits[0] if len(hits) == 1 else None


def label_distribution(model: BaseChatModel, messages: list, labels: list[str], names: list[str], *,
                       spec: Any) -> tuple[list[float], dict[str, Any]]:
    """Log-probabilities of ``labels`` and a record of the call (method, tokens, raw answer)."""
    scorer = getattr(model, "label_logprobs", None)
    if callable(scorer):
        try:
            logp, n_in = scorer(messages, labels)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"linker_model '{describe(spec)}' failed: {type(exc).__name__}: {exc}") from exc
        return [logp[lab] for lab in labels], {"method": "logits", "input_tokens": n_in, "output_tokens": 0}
    if _is_openai(model):
        got = _openai_logprobs(model, messages, labels, spec)
        if got is not None:
            return got
    raw, usage = invoke_model(model, messages, spec=spec)
    idx = _from_text(raw, labels, names)
    n = len(labels)
    if idx is None or n == 1:
        logp = [-math.log(n)] * n
    else:
        logp = [math.log(SAMPLED_MASS) if i == idx else math.log((1 - SAMPLED_MASS) / (n - 1)) for i in range(n)]
    return logp, {"method": "sampled", "raw": raw, "parsed": labels[idx] if idx is not None else None, **usage}


def can_score_names(model: BaseChatModel) -> bool:
    """Whether ``model`` exposes token log-probabilities of a given answer (likelihood scoring)."""
    return callable(getattr(model, "continuation_logprobs", None))


def scoring_method(model: BaseChatModel, setting: str, spec: Any) -> str:
    """``likelihood`` or ``choice`` for ``llm_scoring`` = ``setting`` on ``model``.

    An OpenAI-compatible model is probed once (per server and model): ``auto``
    takes the likelihood route when the server scores given text correctly
    (echo logprobs exact, or shifted by one token and forced tokens right:
    :class:`Probe`) and its chat template is known (rendered by the server, or
    ChatML checked against the server's own token count); ``likelihood`` takes
    it whenever given text is scored right, rendering the prompt as ChatML if
    the server cannot.
    """
    if setting == "choice":
        return "choice"
    if can_score_names(model):
        return "likelihood"
    if _is_openai(model):
        probe = server_probe(model)
        if probe.echo_ok and (setting == "likelihood" or probe.template_known):
            return "likelihood"
        if setting == "likelihood":
            raise ConfigError(f"llm_scoring 'likelihood': linker_model '{describe(spec)}'{_at(model)} does not score "
                              f"a given answer: {probe.reason}; use llm_scoring 'choice' or 'auto'")
        return "choice"
    if setting == "likelihood":
        raise ConfigError(f"llm_scoring 'likelihood': linker_model '{describe(spec)}' does not expose token "
                          "log-probabilities of a given answer (the embedded llama.cpp model, local "
                          "transformers models and OpenAI-compatible servers with echo logprobs do); "
                          "use llm_scoring 'choice' or 'auto'")
    return "choice"


def answer_text(name: str) -> str:
    """A candidate's name as the model would write it (Wikipedia-title underscores as spaces)."""
    return " ".join(str(name or "").replace("_", " ").split()) or "?"


def name_likelihoods(model: BaseChatModel, messages: list, names: list[str], *,
                     spec: Any) -> tuple[list[float], dict[str, Any]]:
    """Summed log-probability of each name as the model's answer, and a record of the call."""
    record: dict[str, Any] = {"method": "likelihood"}
    scorer = model
    if not can_score_names(model) and _is_openai(model):
        scorer = ServerScorer.for_model(model)
        how = "echo logprobs" if scorer.probe.offset == 0 else "forced tokens (echo shifted by one token)"
        record["route"] = f"server {how} ({scorer.probe.template})"
    try:
        per_token, n_tokens = scorer.continuation_logprobs(messages, [answer_text(n) for n in names])
    except ModelError:
        raise
    except Exception as exc:
        if scorer is not model:
            from tools.models import failure_message

            raise ModelError(failure_message("linker_model", spec, model, exc)) from exc
        raise ModelError(f"linker_model '{describe(spec)}' failed: {type(exc).__name__}: {exc}") from exc
    return [float(sum(lp)) for lp in per_token], {**record, "input_tokens": n_tokens, "output_tokens": 0}


def _is_openai(model: Any) -> bool:
    """Whether ``model`` is a langchain-openai chat model (it takes ``logprobs``/``top_logprobs``)."""
    from langchain_openai.chat_models.base import BaseChatOpenAI

    return isinstance(model, BaseChatOpenAI)


def _openai_logprobs(model: Any, messages: list, labels: list[str], spec: Any) -> tuple[list[float], dict] | None:
    """``top_logprobs`` of a one-token answer; ``None`` when the server returns none."""
    bound = model.bind(logprobs=True, top_logprobs=20, max_tokens=1)
    try:
        reply = bound.invoke(messages)
    except Exception as exc:
        from tools.models import failure_message

        raise ModelError(failure_message("linker_model", spec, model, exc)) from exc
    content = ((reply.response_metadata or {}).get("logprobs") or {}).get("content") or []
    if not content or not content[0].get("top_logprobs"):
        return None
    best: dict[str, float] = {}
    for item in content[0]["top_logprobs"]:
        tok = str(item.get("token", "")).strip().upper()
        if tok in labels:
            best[tok] = max(best.get(tok, FLOOR), float(item.get("logprob", FLOOR)))
    meta = reply.usage_metadata or {}
    return ([best.get(lab, FLOOR) for lab in labels],
            {"method": "logprobs", "raw": str(reply.content), "input_tokens": int(meta.get("input_tokens") or 0),
             "output_tokens": int(meta.get("output_tokens") or 0)})


# ---- likelihood on an OpenAI-compatible server ------------------------------------------------

PROBE_PROMPTS = ("1, 2, 3, 4, 5, 6, 7,", "The capital of France is", "Q: What is 2 + 2?\nA:")
PROBE_MESSAGES = [{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": "Who wrote Hamlet?"}]
PROBE_TOLERANCE = 0.05
"""Largest difference (nats) between a token's echoed log-probability and the one it was generated with."""
FORCE = 100.0
"""``logit_bias`` that makes the greedy sampler pick a given token (the shifted route)."""


@dataclass(frozen=True)
class Probe:
    """What an OpenAI-compatible server can do for likelihood scoring (found once per server and model)."""

    echo_ok: bool
    """Whether given text can be scored here (by either ``offset``)."""
    template: str
    """How chat prompts are rendered: ``apply-template`` (llama.cpp's llama-server), ``tokenize`` (vLLM),
    ``chatml`` (checked against the server's token count), ``chatml-unchecked``."""
    reason: str = ""
    final: bool = True
    """False when the server could not be reached (connection error, HTTP 5xx): not cached."""
    offset: int | None = 0
    """0: echoed log-probabilities are exact (one echo call per answer). 1: shifted by one token, as
    llama-cpp-python's server does for a model without a BOS token (echoed entry ``i`` holds the
    distribution of token ``i+1`` read at token ``i``): each answer token is then scored by a one-token
    generation forced with ``logit_bias`` (exact too). ``None``: neither."""

    @property
    def template_known(self) -> bool:
        return self.template in ("apply-template", "tokenize", "chatml")


_probes: dict[tuple[str, str], Probe] = {}
_scorers: dict[tuple[str, str], ServerScorer] = {}
_probe_lock = threading.Lock()


def _at(model: Any) -> str:
    url = _base_url(model)
    return f" at {url}" if url else ""


def _base_url(model: Any) -> str:
    return str(getattr(model, "openai_api_base", None) or os.environ.get("OPENAI_BASE_URL") or
               "https://api.openai.com/v1").rstrip("/")


def server_probe(model: Any) -> Probe:
    """The cached :class:`Probe` of ``model``'s server (probed on first use; a failed probe is a ``Probe``)."""
    key = (_base_url(model), str(getattr(model, "model_name", "")))
    with _probe_lock:
        if key in _probes:
            return _probes[key]
        probe = ServerScorer(model, probe=None).run_probe()
        if probe.final:  # a server that could not be reached is asked again next time
            _probes[key] = probe
        return probe


def chatml(messages: list[dict]) -> str:
    """``messages`` in ChatML (Qwen's format), generation prompt included."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


def echo_offset(lps: list[float | None], tops: list[dict | None], text: str, lp: float) -> int | None:
    """Where a generated token's log-probability ``lp`` sits in the echo of ``prompt + text``.

    ``lps`` / ``tops``: the echoed token log-probabilities and top-logprob dicts, cut by as many
    entries as tokens were generated. 0: the last entry is ``text``'s and holds ``lp`` (exact echo).
    1: only the last entry's top list holds ``lp`` for ``text``: llama-cpp-python's server on a model
    without BOS pairs the distribution of token ``i+1`` with token ``i`` (``echoed[i] = log p(x[i+1] =
    x[i] | x[:i+1])``) and echoes no entry for the generated token, so the last entry left is the
    token before ``text``, carrying ``text``'s distribution. ``None``: neither.
    """
    if lps and lps[-1] is not None and abs(lps[-1] - lp) <= PROBE_TOLERANCE:
        return 0
    top = tops[-1] if tops else None
    if top and top.get(text) is not None and abs(top[text] - lp) <= PROBE_TOLERANCE:
        return 1
    return None


class ServerScorer:
    """Log-probabilities of given answers from an OpenAI-compatible server's ``/v1/completions``.

    The chat prompt is rendered to text (by the server's template endpoint, or as
    ChatML). Offset 0: for each answer ``prompt + answer`` is sent with ``echo``
    and ``logprobs`` and ``max_tokens`` 1; the answer's tokens are the last ones
    of the echoed prompt (their count: the prompt tokens of ``prompt + answer``
    minus those of ``prompt`` alone, both from the server's ``usage``). Offset 1
    (llama-cpp-python's server, model without BOS): the answer is tokenized by
    the server (``/extras/tokenize``), and token ``j`` is generated after
    ``prompt + tokens[:j]`` with ``logit_bias`` forcing it; the log-probability
    reported for a generated token is the unbiased one (the bias acts in the
    sampler only): the model's own, as the in-process scorer's (equal up to
    llama.cpp's rounding for other batch shapes; docs/scale-out.md).
    """

    def __init__(self, model: Any, probe: Probe | None):
        import httpx

        self.model_name = str(getattr(model, "model_name", ""))
        self.base = _base_url(model)
        self.root = self.base[:-3] if self.base.endswith("/v1") else self.base
        key = getattr(model, "openai_api_key", None)
        key = key.get_secret_value() if hasattr(key, "get_secret_value") else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = getattr(model, "request_timeout", None)
        self.http = httpx.Client(headers=headers, timeout=timeout if isinstance(timeout, (int, float)) else 60.0)
        self.probe = probe

    @classmethod
    def for_model(cls, model: Any) -> ServerScorer:
        """The scorer of ``model``'s server and model name (one per process, with its HTTP connection)."""
        key = (_base_url(model), str(getattr(model, "model_name", "")))
        probe = server_probe(model)
        with _probe_lock:
            if key not in _scorers:
                _scorers[key] = cls(model, probe)
            return _scorers[key]

    # -- HTTP --
    def _post(self, url: str, body: dict) -> dict:
        reply = self.http.post(url, json=body)
        reply.raise_for_status()
        return reply.json()

    def _complete(self, prompt: str, *, echo: bool, force: int | list[int] | None = None,
                  max_tokens: int = 1) -> dict:
        """One greedy completion of ``prompt`` (``max_tokens`` tokens, their log-probabilities); ``force``:
        the token(s) biased by :data:`FORCE` at every step."""
        body = {"model": self.model_name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "logprobs": 1}
        if echo:
            body["echo"] = True
        if force is not None:
            body["logit_bias"] = {str(t): FORCE for t in ([force] if isinstance(force, int) else force)}
        return self._post(f"{self.base}/completions", body)

    @staticmethod
    def _echoed(reply: dict) -> tuple[list[float | None], list[dict | None]]:
        """The echoed prompt's token log-probabilities and top lists (the generated tokens cut off)."""
        choice = reply["choices"][0]
        logprobs = choice.get("logprobs") or {}
        lps = list(logprobs.get("token_logprobs") or [])
        tops = list(logprobs.get("top_logprobs") or [None] * len(lps))
        gen = int((reply.get("usage") or {}).get("completion_tokens") or 0)
        return (lps[:len(lps) - gen], tops[:len(lps) - gen]) if gen else (lps, tops)

    @staticmethod
    def _generated(reply: dict) -> tuple[str | None, float | None, dict]:
        """The generated token of a ``max_tokens`` 1 reply: its text, log-probability and top list."""
        choice = reply["choices"][0]
        logprobs = choice.get("logprobs") or {}
        top = (logprobs.get("top_logprobs") or [None])[0] or {}
        return choice.get("text"), (logprobs.get("token_logprobs") or [None])[0], top

    def _tokenize(self, text: str) -> list[int]:
        return list(self._post(f"{self.root}/extras/tokenize", {"model": self.model_name, "input": text})["tokens"])

    def _detokenize(self, tokens: list[int]) -> str:
        return str(self._post(f"{self.root}/extras/detokenize", {"model": self.model_name, "tokens": tokens})["text"])

    # -- prompt rendering --
    def render(self, messages: list[dict], template: str) -> str:
        if template == "apply-template":
            return self._post(f"{self.root}/apply-template", {"messages": messages})["prompt"]
        if template == "tokenize":
            toks = self._post(f"{self.root}/tokenize", {"model": self.model_name, "messages": messages,
                                                         "add_generation_prompt": True})["tokens"]
            return self._post(f"{self.root}/detokenize", {"model": self.model_name, "tokens": toks})["prompt"]
        return chatml(messages)

    def _find_template(self) -> str:
        try:
            if isinstance(self.render(PROBE_MESSAGES, "apply-template"), str):
                return "apply-template"
        except Exception:
            pass
        try:
            if isinstance(self.render(PROBE_MESSAGES, "tokenize"), str):
                return "tokenize"
        except Exception:
            pass
        try:  # ChatML, if the server's own chat template gives as many tokens
            chat = self._post(f"{self.base}/chat/completions", {"model": self.model_name, "messages": PROBE_MESSAGES,
                                                                 "max_tokens": 1, "temperature": 0.0})
            mine = self._complete(chatml(PROBE_MESSAGES), echo=False)
            if chat["usage"]["prompt_tokens"] == mine["usage"]["prompt_tokens"]:
                return "chatml"
        except Exception:
            pass
        return "chatml-unchecked"

    def _forcing_problem(self, prompt: str, text: str, lp: float) -> str:
        """Why forcing a token with ``logit_bias`` does not score it here ('' when it does).

        After ``prompt`` the greedy token is ``text`` (log-probability ``lp``); another token is
        forced: it must be the one generated, with a log-probability at most ``lp``, while the
        greedy token keeps ``lp`` in the top list (the bias did not reach the reported scores).
        """
        for tok in self._tokenize(" Paris 0 Z"):
            piece = self._detokenize([tok])
            if piece and piece != text:
                break
        else:
            return "no token to force"
        got, forced, top = self._generated(self._complete(prompt, echo=False, force=tok))
        greedy = top.get(text)
        if got != piece or forced is None or forced > lp + PROBE_TOLERANCE or greedy is None \
                or abs(greedy - lp) > PROBE_TOLERANCE:
            return (f"a token forced with logit_bias came back as {got!r} (wanted {piece!r}) with "
                    f"log-probability {forced}, the greedy one's {greedy} (generated with {lp:.4f})")
        return ""

    def run_probe(self) -> Probe:
        """Whether given text can be scored here (``offset`` 0 or 1), and how chat prompts are rendered."""
        if "api.openai.com" in self.base:
            return Probe(False, "none", "OpenAI's API scores no given text for chat models", offset=None)
        reason = "the server returned no echoed log-probabilities"
        for prompt in PROBE_PROMPTS:
            try:
                gen = self._complete(prompt, echo=False)
                text, lp = gen["choices"][0]["text"], self._generated(gen)[1]  # no text: a malformed reply, refused
                if not text or lp is None:
                    continue  # a control token or no logprobs: try another prompt
                lps, tops = self._echoed(self._complete(prompt + text, echo=True))
                offset = echo_offset(lps, tops, text, lp)
                problem = self._forcing_problem(prompt, text, lp) if offset == 1 else ""
            except Exception as exc:
                import httpx

                status = getattr(getattr(exc, "response", None), "status_code", None)
                final = not isinstance(exc, httpx.TransportError) and not (status and status >= 500)
                return Probe(False, "none", f"/v1/completions with echo and logprobs failed "
                                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                             final=final, offset=None)
            if offset is not None and not problem:
                return Probe(True, self._find_template(), offset=offset)
            reason = (f"echoed log-probabilities shifted by one token, but {problem}" if problem else
                      f"its echoed log-probabilities do not match generation ({lps[-1] if lps else None} vs "
                      f"{lp:.4f} for the same token), neither in place nor shifted by one token")
            break
        return Probe(False, "none", reason, offset=None)

    # -- scoring --
    def continuation_logprobs(self, messages: list, continuations: list[str]) -> tuple[list[list[float]], int]:
        """Per-token log-probabilities of each continuation after the chat prompt, and the prompt tokens sent."""
        from tools.llama_cpp_chat import _role, _text

        chat = [{"role": _role(m), "content": _text(m.content)} for m in messages]
        prompt = self.render(chat, self.probe.template if self.probe else "chatml")
        n_prompt = int(self._complete(prompt, echo=False)["usage"]["prompt_tokens"])
        if self.probe and self.probe.offset == 1:
            return self._forced_logprobs(prompt, n_prompt, continuations)
        out, sent = [], n_prompt
        for cont in continuations:
            reply = self._complete(prompt + cont, echo=True)
            n_full = int(reply["usage"]["prompt_tokens"])
            n_cont = max(1, n_full - n_prompt)
            echoed = self._echoed(reply)[0]
            lps = echoed[-n_cont:]
            if len(lps) < n_cont or any(x is None for x in lps):
                raise ModelError(f"the server echoed {len(echoed)} log-probabilities for {n_full} prompt tokens")
            out.append([float(x) for x in lps])
            sent += n_full
        return out, sent

    def _forced_logprobs(self, prompt: str, n_prompt: int,
                         continuations: list[str]) -> tuple[list[list[float]], int]:
        """The shifted route: token ``j`` of each continuation generated after ``prompt + tokens[:j]``, forced.

        Token prefixes shared by several continuations are asked once. A prefix that ends inside a
        character (a byte-level tokenizer splits ``Ž`` into two tokens) cannot be sent as text: the
        tokens up to the next whole character are then generated in one request, each forced
        (:meth:`_forced_group`).
        """
        seen: dict[tuple[int, ...], float] = {}
        heads: dict[tuple[int, ...], str | None] = {(): ""}
        out, sent = [], n_prompt
        for cont in continuations:
            ids = self._tokenize(cont)
            j = 0  # always where the prefix is whole text
            while j < len(ids):
                k = j + 1  # the group: up to the next prefix that is whole text
                while k < len(ids) and self._head(ids[:k], heads) is None:
                    k += 1
                if all(tuple(ids[:i + 1]) in seen for i in range(j, k)):  # asked for an earlier name
                    j = k
                    continue
                head = self._head(ids[:j], heads)
                lps, n_sent = self._forced_group(cont, prompt + head, ids[j:k], n_prompt + j,
                                                 None if k - j == 1 else self._head(ids[:k], heads)[len(head):])
                for i, lp in enumerate(lps):
                    seen[tuple(ids[:j + i + 1])] = lp
                sent += n_sent
                j = k
            out.append([seen[tuple(ids[:j + 1])] for j in range(len(ids))])
        return out, sent

    def _head(self, ids: list[int], heads: dict[tuple[int, ...], str | None]) -> str | None:
        """The text of ``ids`` by the server's detokenizer, ``None`` when it ends inside a character."""
        key = tuple(ids)
        if key not in heads:
            try:
                heads[key] = self._detokenize(ids)
            except Exception:  # noqa: BLE001 - e.g. llama-cpp-python: 'utf-8' codec can't decode (HTTP 500)
                heads[key] = None
        return heads[key]

    def _forced_group(self, cont: str, prompt: str, group: list[int], n_expected: int,
                      text: str | None) -> tuple[list[float], int]:
        """Log-probabilities of ``group``'s tokens generated after ``prompt``, each forced by ``logit_bias``.

        One token: as the probe checked. Several (the bytes of one character): ``max_tokens`` their
        number with every one of them biased; greedy decoding then picks, at each step, the biased
        token the model prefers, so the reply is accepted only when it is ``text`` (the group's
        characters) in exactly that many tokens.
        """
        reply = self._complete(prompt, echo=False, force=group, max_tokens=len(group))
        usage = reply.get("usage") or {}
        n_sent = int(usage.get("prompt_tokens") or 0)
        lps = list(((reply["choices"][0].get("logprobs") or {}).get("token_logprobs")) or [])[:len(group)]
        if n_sent != n_expected or len(lps) != len(group) or any(x is None for x in lps):
            raise ModelError(f"'{cont}': the server read {n_sent} prompt tokens for a prompt of {n_expected} "
                             f"and returned {len(lps)} log-probabilities for {len(group)} forced token(s)")
        if len(group) > 1 and (reply["choices"][0].get("text") != text
                               or int(usage.get("completion_tokens") or 0) != len(group)):
            raise ModelError(f"'{cont}': forcing the {len(group)} tokens of {text!r} gave "
                             f"{reply['choices'][0].get('text')!r}; the name cannot be scored on this server")
        return [float(x) for x in lps], n_sent
