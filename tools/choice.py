"""The linker model's opinion of the candidates, from one call: names' likelihood or letters' distribution.

Likelihood (``llm_scoring="likelihood"``): the model is asked who the mention
is, and the log-probability of each candidate's name as the start of its
answer is read (summed over the name's tokens) from one prompt evaluation
plus a few tokens per name. Models that expose this (``continuation_logprobs``):
the llama.cpp chat model and local transformers models.

Letters (``llm_scoring="choice"``), for a lettered candidate list:

* llama.cpp (the embedded default): the logits of the first answer token, read
  after one forward pass over the prompt (prefix reused from the last call).
* OpenAI-compatible servers: ``logprobs`` / ``top_logprobs`` of a one-token answer.
* Any other chat model (transformers pipelines, fakes): the sampled answer,
  parsed, as a smoothed one-hot distribution.
"""

from __future__ import annotations

import math
import string
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
    """Index of the candidate a free-text answer names (a letter first, else a name)."""
    text = raw.strip().strip("*().:'\"` ").upper()
    if text[:1] in labels and (len(text) == 1 or not text[1].isalpha()):
        return labels.index(text[0])
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
    """``likelihood`` or ``choice`` for ``llm_scoring`` = ``setting`` on ``model``."""
    if setting == "choice":
        return "choice"
    if can_score_names(model):
        return "likelihood"
    if setting == "likelihood":
        raise ConfigError(f"llm_scoring 'likelihood': linker_model '{describe(spec)}' does not expose token "
                          "log-probabilities of a given answer (the embedded llama.cpp model and local "
                          "transformers models do); use llm_scoring 'choice' or 'auto'")
    return "choice"


def answer_text(name: str) -> str:
    """A candidate's name as the model would write it (Wikipedia-title underscores as spaces)."""
    return " ".join(str(name or "").replace("_", " ").split()) or "?"


def name_likelihoods(model: BaseChatModel, messages: list, names: list[str], *,
                     spec: Any) -> tuple[list[float], dict[str, Any]]:
    """Summed log-probability of each name as the model's answer, and a record of the call."""
    try:
        per_token, n_tokens = model.continuation_logprobs(messages, [answer_text(n) for n in names])
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"linker_model '{describe(spec)}' failed: {type(exc).__name__}: {exc}") from exc
    return [float(sum(lp)) for lp in per_token], {"method": "likelihood", "input_tokens": n_tokens,
                                                  "output_tokens": 0}


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
