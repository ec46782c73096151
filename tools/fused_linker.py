"""The fused linker (``linker_mode='fused'``, the default): one scored distribution per round.

Each round scores every candidate once: a learned combination of cheap evidence
(:mod:`tools.features`: dense similarity, name agreement, acronyms, fact consistency, the list's
rank when its order is informative, and the visual clues gathered so far), weights from
:mod:`tools.fusion`, with a calibrated "none of these" alternative when the weights have one. When
the top candidate's probability reaches ``gate_threshold`` the text evidence is decisive and the
LLM is not asked (the text-first gate). Otherwise the linker model is asked once
(:func:`ask_llm`) and its opinion is added to the scores (times ``llm_weight``): by default the
log-probability of each candidate's name as the answer (``likelihood``), or, for models that cannot
score a given answer, of each candidate's letter in a lettered list (``choice``); see
:mod:`tools.choice`. Re-choices after a failed reflection take the next candidate of the same
distribution (:func:`pick`): no further call.

Plain arguments only: ``settings`` is any object with the ``Context`` fields read here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from prompts import linking as P
from tools.candidates import candidate_key
from tools.choice import label_distribution, labels_for, name_likelihoods, scoring_method
from tools.context_likelihood import context_likelihoods, top_indices
from tools.embeddings import get_embedder
from tools.features import candidate_features
from tools.fusion import distribution, load_weights, nil_decision, order_is_ranked
from tools.linker import count_call
from tools.models import describe
from tools.names import answer_name, display_name
from tools.prompt_text import candidate_desc, clue_block
from tools.texts import entity_ref


def choice_messages(mention: str, context: str, candidates: list[dict], clues: list[dict], labels: list[str],
                    *, max_desc_chars: int) -> list:
    """The lettered prompt: what stays the same across rounds first, the clues and question last."""
    lines = [P.CHOICE_LINE.format(label=lab, name=display_name(c["name"]),
                                  desc=candidate_desc(c, max_desc_chars, strip_name=True))
             for lab, c in zip(labels, candidates)]
    user = P.CHOICE_USER.format(candidates="\n".join(lines), mention=mention, context=context or "(none)",
                                clues=clue_block(clues))
    return [SystemMessage(P.CHOICE_SYSTEM), HumanMessage(user)]


def name_messages(mention: str, context: str, clues: list[dict]) -> list:
    """The likelihood prompt: the text, the clues, the question; the names are scored after it."""
    user = P.NAME_USER.format(context=context or "(none)", mention=mention, clues=clue_block(clues))
    return [SystemMessage(P.NAME_SYSTEM), HumanMessage(user)]


def ask_llm(model: BaseChatModel, mention: str, context: str, candidates: list[dict], clues: list[dict], *,
            llm_scoring: str, spec: Any, max_desc_chars: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The linker model's log-probability per candidate (one call) and the call's record."""
    names = [display_name(c["name"]) for c in candidates]
    if scoring_method(model, llm_scoring, spec) == "likelihood":
        # "Unknown" is scored after the names too: the LLM's own nil evidence (used when the weights have a term for it)
        # each name as an answer is spoken, without its disambiguator: "(diplomat)" would only cost tokens
        spoken = [answer_name(c["name"]) for c in candidates]
        logp, call = name_likelihoods(model, name_messages(mention, context, clues), spoken + [P.NIL_ANSWER], spec=spec)
        return np.asarray(logp[:-1], dtype=np.float64), {**call, "nil_logp": float(logp[-1])}
    labels = labels_for(len(candidates))
    messages = choice_messages(mention, context, candidates[:len(labels)], clues, labels,
                               max_desc_chars=max_desc_chars)
    logp, call = label_distribution(model, messages, labels, names[:len(labels)], spec=spec)
    llm = np.full(len(candidates), min(logp))  # candidates beyond the 26 letters get the lowest score
    llm[:len(logp)] = logp
    return llm, call


def llm_weight(weights: Any, settings: Any, method: str) -> float:
    """The weight of the LLM's scores read by ``method`` (``likelihood``; any other is the lettered route):
    ``settings.llm_weight`` when set, else the weights file's for that route."""
    if settings.llm_weight is not None:
        return settings.llm_weight
    return weights.llm_weight_for("likelihood" if method == "likelihood" else "choice")


def score_round(mention: str, context: str, candidates: list[dict], clues: list[dict], settings: Any, *,
                round_no: int, source: str | None, earlier: dict[str, Any] | None, usage: dict[str, Any],
                model: Any = None) -> dict[str, Any]:
    """This round's distribution over the candidates (and whether the LLM was asked).

    ``source`` is where the candidates came from (``input`` / ``knowledge base``: whether their order
    is evidence under ``candidate_order=auto``); ``earlier`` the previous round's distribution, whose
    LLM scores count again, free, when the LLM is not asked this round; ``model`` the linker model
    (loaded from ``settings`` when it is needed and not given). LLM calls are added to ``usage``.
    """
    clue_text = ". ".join(c["text"] for c in clues if c.get("text"))
    ocr_text = " ".join(c["text"] for c in clues if c.get("type") == "ocr" and c.get("text"))
    embedder = get_embedder(settings.embedding_model, base_url=settings.openai_base_url,
                            api_key=settings.openai_api_key)
    ranked = order_is_ranked(settings.candidate_order, source)
    feats = candidate_features(mention, context, candidates, embedder, clue_text, ocr_text, ranked=ranked)
    weights = load_weights(settings.fusion_weights)
    scores = weights.logits(feats, with_clues=bool(clue_text), ranked=ranked)
    prior, prior_nil = distribution(scores, weights.nil_row)
    out: dict[str, Any] = {"round": round_no, "keys": [candidate_key(c) for c in candidates],
                           "prior": [round(float(p), 4) for p in prior], "prior_p_nil": round(prior_nil, 4),
                           "llm": None, "ranked": ranked, "nil_row": weights.nil_row}
    asked = (len(candidates) > 1 and prior.max() < settings.gate_threshold
             and (round_no == 1 or settings.llm_in_clue_rounds))
    earlier = earlier or {}
    if asked:
        if model is None:
            from tools.linker import load_linker

            model = load_linker(settings)
        method = scoring_method(model, settings.llm_scoring, settings.linker_model)
        other_terms = method == "likelihood" and (weights.llm_nil or weights.context_weight() > 0)
        if llm_weight(weights, settings, method) == 0 and not other_terms:
            # its answer would add nothing to any score (e.g. `i2cr fit` found this model no help): not asked
            asked = False
            out["llm_skipped"] = f"LLM weight 0 for {describe(settings.linker_model)} ({method}): not asked"
    if asked:
        llm, call = ask_llm(model, mention, context, candidates, clues, llm_scoring=settings.llm_scoring,
                            spec=settings.linker_model, max_desc_chars=settings.max_desc_chars)
        count_call(usage, call.get("input_tokens", 0), call.get("output_tokens", 0))
        out["llm"] = {"model": describe(settings.linker_model), "method": call["method"],
                      "logprobs": [round(float(x), 3) for x in llm], "raw": call.get("raw"), "round": round_no,
                      "nil_logprob": call.get("nil_logp")}
        k = min(settings.llm_context_top, len(candidates))
        if weights.context_weight() > 0 and k > 0 and call["method"] == "likelihood":
            spoken = [answer_name(c["name"]) for c in candidates]
            ctx_lp, ctx_call = context_likelihoods(model, mention, context, spoken, top_indices(prior, k),
                                                   spec=settings.linker_model)
            count_call(usage, ctx_call.get("input_tokens", 0), 0)
            out["llm"]["context_logprobs"] = [None if v is None else round(v, 3) for v in ctx_lp]
    elif earlier.get("llm") and earlier.get("keys") == out["keys"]:
        out["llm"] = {**earlier["llm"], "raw": None}  # an earlier round's opinion of the text still counts, free
    if out["llm"]:
        w = llm_weight(weights, settings, out["llm"]["method"])
        out["llm"]["weight"] = w
        scores = weights.with_llm(scores, w, out["llm"]["logprobs"], out["llm"].get("nil_logprob"),
                                  out["llm"].get("context_logprobs"))
    probs, p_nil = distribution(scores, weights.nil_row)
    out["probs"] = [round(float(p), 4) for p in probs]
    out["p_nil"] = round(p_nil, 4)
    out["gated"] = not asked
    return out


def text_alone_nil(dist: dict[str, Any], excluded: set[str], settings: Any) -> bool:
    """Whether the text prior alone (``dist["prior"]``, before the LLM's scores) answers nil among the candidates
    not in ``excluded``: the test of ``nil_needs_text``."""
    left = [p for k, p in zip(dist["keys"], dist["prior"]) if k not in excluded]
    return not left or nil_decision(max(left), float(dist.get("prior_p_nil") or 0.0), settings.nil_threshold,
                                    bool(dist.get("nil_row")))


def pick(dist: dict[str, Any], candidates: list[dict], excluded: set[str], settings: Any, *,
         reused: bool) -> tuple[dict | None, dict[str, Any]]:
    """The most probable candidate of ``dist`` not in ``excluded`` (or nil), and the trace fields saying why."""
    order = sorted(range(len(dist["keys"])), key=lambda i: -dist["probs"][i])
    best = next((i for i in order if dist["keys"][i] not in excluded), None)
    chosen = candidates[best] if best is not None else None
    top = [{"name": candidates[i]["name"], "p": dist["probs"][i]} for i in order[:3]]
    info: dict[str, Any] = {"confidence": dist["probs"][best] if best is not None else None, "top": top,
                            "gated": dist["gated"], "p_nil": dist.get("p_nil")}
    with_prior = bool(dist.get("llm") and dist.get("prior"))
    if with_prior:  # the text prior's top candidate, before the LLM's scores were added
        i = max(range(len(dist["prior"])), key=lambda j: dist["prior"][j])
        info["prior_top"] = {**entity_ref(candidates[i]), "p": dist["prior"][i]}
        if text_alone_nil(dist, set(), settings):
            info["prior_top"]["nil"] = True  # the text prior alone answers nil
    p_nil = float(dist.get("p_nil") or 0.0)
    if best is not None and nil_decision(dist["probs"][best], p_nil, settings.nil_threshold,
                                         bool(dist.get("nil_row"))):
        if settings.nil_needs_text and with_prior and not text_alone_nil(dist, excluded, settings):
            info["nil_overruled"] = (f"the combined evidence favours nil (p={p_nil:.3f}) but the text evidence "
                                     "alone does not: nil_needs_text keeps the best candidate")
        else:
            info["nil"] = True
    if info.get("nil"):
        info["nil_note"] = (f"nil: no candidate supported (nil p={p_nil:.3f} against the best candidate's "
                            f"{dist['probs'][best]:.3f}; nil_threshold {settings.nil_threshold})")
        chosen = None
    if reused:
        info["note"] = "re-choice from this round's distribution: no model call"
    elif dist["gated"]:
        if dist.get("llm_skipped"):
            info["note"] = dist["llm_skipped"]
        elif len(dist["keys"]) <= 1:
            info["note"] = "one candidate: LLM not asked"
        elif max(dist["prior"]) >= settings.gate_threshold:
            info["note"] = (f"text evidence decisive (top p={max(dist['prior']):.3f} >= gate "
                            f"{settings.gate_threshold}): LLM not asked")
        else:
            info["note"] = "LLM not asked in clue rounds (llm_in_clue_rounds is off)"
        if dist.get("llm"):
            info["note"] += f"; its round-{dist['llm'].get('round', 1)} scores still count"
    else:
        info["llm"] = {k: v for k, v in dist["llm"].items() if k != "logprobs"}
    return chosen, info
