"""The text's likelihood under each candidate: a second, optional LLM evidence of the fused linker.

The name-likelihood prompt asks the model what the mention refers to and scores each name as its
answer; that favours the names the model knows best. This evidence asks the reverse question: how
likely is the mention's *text* once the mention is replaced by the candidate's name? ``Thompson at
the premiere of Last Chance Harvey`` is likelier as ``Emma Thompson at the premiere of ...`` than as
``Fred Thompson at ...`` to a model that has read about the film. The name's own likelihood is
subtracted, so a famous name gains nothing by being famous:

    score(c) = log P(text with c's name) - log P(c's name)      (both as the start of the answer)

It costs one scoring call of ``2k`` short continuations for the ``k`` candidates scored
(``llm_context_top``: the text prior's best ones; the others get the floor). Used only when the
weights file has an ``llm_context`` term (``i2cr fit --llm-context-sample``) and the model scores given
text (the embedded llama.cpp model, local transformers models, OpenAI-compatible servers with echo
logprobs): see :func:`tools.choice.name_likelihoods`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from prompts import linking as P


def substituted(context: str, mention: str, name: str) -> str:
    """``context`` with its first occurrence of ``mention`` (any case) replaced by ``name``;
    ``"name: context"`` when the mention does not occur in it (or either is empty)."""
    context = " ".join(str(context or "").split())
    mention = " ".join(str(mention or "").split())
    if mention and context:
        m = re.search(re.escape(mention), context, flags=re.IGNORECASE)
        if m:
            return context[:m.start()] + name + context[m.end():]
    return f"{name}: {context}" if context else name


def context_messages() -> list:
    """The fixed prompt after which each text is scored."""
    from langchain_core.messages import HumanMessage, SystemMessage

    return [SystemMessage(P.CONTEXT_SYSTEM), HumanMessage(P.CONTEXT_USER)]


def top_indices(prior: Any, k: int) -> list[int]:
    """The ``k`` candidates the text prior ranks highest (ties by list position), in list order."""
    p = np.asarray(prior, dtype=np.float64)
    if k <= 0 or not len(p):
        return []
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    return sorted(order[:k])


def context_likelihoods(model: Any, mention: str, context: str, names: list[str], indices: list[int], *,
                        spec: Any) -> tuple[list[float | None], dict[str, Any]]:
    """``log P(text with the name) - log P(name)`` for the candidates at ``indices`` (``None`` for the
    others), and the call's record; one scoring call (:func:`tools.choice.name_likelihoods`)."""
    from tools.choice import name_likelihoods

    texts = [substituted(context, mention, names[i]) for i in indices]
    alone = [names[i] for i in indices]
    logp, call = name_likelihoods(model, context_messages(), texts + alone, spec=spec)
    out: list[float | None] = [None] * len(names)
    for j, i in enumerate(indices):
        out[i] = float(logp[j] - logp[len(indices) + j])
    return out, {**call, "method": "context"}
