"""Stage 2, fused mode (the default): text linking as one scored distribution.

Each round scores every candidate once: a learned combination of cheap
evidence (``tools/features.py``: dense similarity, list rank, name agreement,
gender and life-date consistency, and the visual clues gathered so far),
weights from ``tools/fusion.py``. When the top candidate's probability reaches
``gate_threshold`` the text evidence is decisive and the LLM is not asked
(the text-first gate). Otherwise the linker model is asked once and its opinion
is added to the scores (times ``llm_weight``): by default the log-probability
of each candidate's name as its answer to "who is <mention>?" (``likelihood``),
or, for models that cannot score a given answer, the log-probability of each
candidate's letter in a lettered list (``choice``); see ``tools/choice.py``.
Re-choices after a failed reflection take the next candidate of the same
distribution: no further call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from langchain_core.messages import HumanMessage, SystemMessage

from graph.context import Context
from graph.inputs import candidate_key
from graph.state import State
from nodes.prompt_parts import candidate_desc, clue_block, count_call, linker, round_clues
from prompts import linking as P
from tools.choice import label_distribution, labels_for, name_likelihoods, scoring_method
from tools.embeddings import get_embedder
from tools.features import candidate_features
from tools.fusion import distribution, load_weights, nil_decision, order_is_ranked
from tools.models import describe
from tools.names import display_name


def choice_messages(state: State, ctx: Context, labels: list[str]) -> list:
    """The lettered prompt: what stays the same across rounds first, the clues and question last."""
    cands = state["candidates"][:len(labels)]
    lines = [P.CHOICE_LINE.format(label=lab, name=display_name(c["name"]),
                                  desc=candidate_desc(c, ctx.max_desc_chars, strip_name=True))
             for lab, c in zip(labels, cands)]
    user = P.CHOICE_USER.format(candidates="\n".join(lines), mention=state["mention"],
                                context=state.get("context") or "(none)", clues=clue_block(round_clues(state, ctx)))
    return [SystemMessage(P.CHOICE_SYSTEM), HumanMessage(user)]


def name_messages(state: State, ctx: Context) -> list:
    """The likelihood prompt: the text, this round's clues, the question; the names are scored after it."""
    user = P.NAME_USER.format(context=state.get("context") or "(none)", mention=state["mention"],
                              clues=clue_block(round_clues(state, ctx)))
    return [SystemMessage(P.NAME_SYSTEM), HumanMessage(user)]


def ask_llm(state: State, ctx: Context) -> tuple[np.ndarray, dict[str, Any]]:
    """The linker model's log-probability per candidate (one call) and the call's record."""
    cands = state["candidates"]
    model = linker(ctx)
    names = [display_name(c["name"]) for c in cands]
    if scoring_method(model, ctx.llm_scoring, ctx.linker_model) == "likelihood":
        logp, call = name_likelihoods(model, name_messages(state, ctx), names + [P.NIL_ANSWER], spec=ctx.linker_model)
        return np.asarray(logp[:-1], dtype=np.float64), {**call, "nil_logp": float(logp[-1])}
    labels = labels_for(len(cands))
    logp, call = label_distribution(model, choice_messages(state, ctx, labels), labels, names[:len(labels)],
                                    spec=ctx.linker_model)
    llm = np.full(len(cands), min(logp))  # candidates beyond the 26 letters get the lowest score
    llm[:len(logp)] = logp
    return llm, call


def score_round(state: State, ctx: Context, usage: dict[str, Any]) -> dict[str, Any]:
    """This round's distribution over the candidates (and whether the LLM was asked)."""
    cands = state["candidates"]
    clues = round_clues(state, ctx)
    clue_text = ". ".join(c["text"] for c in clues if c.get("text"))
    ocr_text = " ".join(c["text"] for c in clues if c.get("type") == "ocr" and c.get("text"))
    embedder = get_embedder(ctx.embedding_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key)
    ranked = order_is_ranked(ctx.candidate_order, state.get("candidate_source"))
    feats = candidate_features(state["mention"], state.get("context") or "", cands, embedder, clue_text, ocr_text,
                               ranked=ranked)
    weights = load_weights(ctx.fusion_weights)
    scores = weights.logits(feats, with_clues=bool(clue_text), ranked=ranked)
    prior, _ = distribution(scores, weights.nil_row)
    out: dict[str, Any] = {"round": state["round"], "keys": [candidate_key(c) for c in cands],
                           "prior": [round(float(p), 4) for p in prior], "llm": None, "ranked": ranked,
                           "nil_row": weights.nil_row}
    asked = len(cands) > 1 and prior.max() < ctx.gate_threshold and (state["round"] == 1 or ctx.llm_in_clue_rounds)
    earlier = state.get("round_scores") or {}
    if asked:
        llm, call = ask_llm(state, ctx)
        count_call(usage, call.get("input_tokens", 0), call.get("output_tokens", 0))
        out["llm"] = {"model": describe(ctx.linker_model), "method": call["method"],
                      "logprobs": [round(float(x), 3) for x in llm], "raw": call.get("raw"), "round": state["round"],
                      "nil_logprob": call.get("nil_logp")}
    elif earlier.get("llm") and earlier.get("keys") == out["keys"]:
        out["llm"] = {**earlier["llm"], "raw": None}  # an earlier round's opinion of the text still counts, free
    if out["llm"]:
        method = "likelihood" if out["llm"]["method"] == "likelihood" else "choice"
        w = weights.llm_weight_for(method) if ctx.llm_weight is None else ctx.llm_weight
        out["llm"]["weight"] = w
        scores = weights.with_llm(scores, w, out["llm"]["logprobs"], out["llm"].get("nil_logprob"))
    probs, p_nil = distribution(scores, weights.nil_row)
    out["probs"] = [round(float(p), 4) for p in probs]
    out["p_nil"] = round(p_nil, 4)
    out["gated"] = not asked
    return out


def fused_pick(state: State, ctx: Context, usage: dict[str, Any]) -> tuple[dict | None, dict[str, Any], dict]:
    """The best not-yet-excluded candidate of this round's distribution, the distribution, and trace fields."""
    dist = state.get("round_scores")
    reused = bool(dist) and dist.get("round") == state["round"] and dist.get("keys") == [
        candidate_key(c) for c in state["candidates"]]
    if not reused:
        dist = score_round(state, ctx, usage)
    excluded = set(state.get("excluded") or [])
    order = sorted(range(len(dist["keys"])), key=lambda i: -dist["probs"][i])
    best = next((i for i in order if dist["keys"][i] not in excluded), None)
    pick = state["candidates"][best] if best is not None else None
    top = [{"name": state["candidates"][i]["name"], "p": dist["probs"][i]} for i in order[:3]]
    info: dict[str, Any] = {"confidence": dist["probs"][best] if best is not None else None, "top": top,
                            "gated": dist["gated"], "p_nil": dist.get("p_nil")}
    p_nil = float(dist.get("p_nil") or 0.0)
    if best is not None and nil_decision(dist["probs"][best], p_nil, ctx.nil_threshold, bool(dist.get("nil_row"))):
        info["nil"] = True
        info["nil_note"] = (f"nil: no candidate supported (nil p={p_nil:.3f} against the best candidate's "
                            f"{dist['probs'][best]:.3f}; nil_threshold {ctx.nil_threshold})")
        pick = None
    if reused:
        info["note"] = "re-choice from this round's distribution: no model call"
    elif dist["gated"]:
        if len(dist["keys"]) <= 1:
            info["note"] = "one candidate: LLM not asked"
        elif max(dist["prior"]) >= ctx.gate_threshold:
            info["note"] = (f"text evidence decisive (top p={max(dist['prior']):.3f} >= gate {ctx.gate_threshold}): "
                            "LLM not asked")
        else:
            info["note"] = "LLM not asked in clue rounds (llm_in_clue_rounds is off)"
        if dist.get("llm"):
            info["note"] += f"; its round-{dist['llm'].get('round', 1)} scores still count"
    else:
        info["llm"] = {k: v for k, v in dist["llm"].items() if k != "logprobs"}
    return pick, dist, info
