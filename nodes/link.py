"""Stage 2: text linking, one pick per attempt, in the ``linker_mode`` of the run.

- ``fused`` (the default, ``nodes/link_fused.py``): every candidate is scored
  once per round (cheap evidence, plus the LLM's scores when that evidence is
  not decisive); the pick is the most probable candidate not yet ruled out.
- ``llm``: the linker model is asked to pick one candidate (or nil) from the
  mention, its context and the visual clues gathered so far, with the picks
  reflection already rejected in this round ruled out in the prompt.

Either way the attempt is recorded (``attempts``, one ``link`` trace entry) and
checked by reflection next.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import record
from graph.inputs import candidate_key
from graph.state import State
from nodes.link_fused import fused_pick
from nodes.prompt_parts import candidate_desc, clue_block, count_call, linker, round_clues
from prompts import linking as P
from tools.answers import parse_answer
from tools.fusion import nil_offered
from tools.models import describe, invoke_model
from tools.names import display_name
from tools.texts import entity_ref


def shown_candidates(state: State) -> list[dict]:
    """The candidates offered in this attempt: all but those reflection ruled out this round."""
    excluded = set(state.get("excluded") or [])
    return [c for c in state["candidates"] if candidate_key(c) not in excluded]


def build_messages(state: State, ctx: Context) -> list:
    """The chat messages for the current attempt (``llm`` mode).

    Ruled-out picks are removed from the numbered list (small models answer a
    number they were told to avoid) and named at the end of the prompt.
    """
    shown = shown_candidates(state)
    nil_ok = nil_offered(ctx.allow_nil, ctx.nil_threshold)
    lines = [P.CANDIDATE_LINE.format(number=i + 1, name=display_name(c["name"]), desc=candidate_desc(c, ctx.max_desc_chars))
             for i, c in enumerate(shown)]
    by_key = {candidate_key(c): c for c in state["candidates"]}
    excluded = [by_key[k]["name"] for k in state.get("excluded") or [] if k in by_key]
    rejected = P.REJECTED.format(names="; ".join(excluded)) if excluded else ""
    attempts = state.get("attempts") or []
    retry = ""
    if attempts and attempts[-1]["outcome"] == "unparseable":
        retry = P.RETRY.format(raw=attempts[-1]["raw"][:80])
    user = P.USER.format(candidates="\n".join(lines), mention=state["mention"],
                         context=state.get("context") or "(none)", clues=clue_block(round_clues(state, ctx)),
                         rejected=rejected,
                         retry=retry, answer_format=P.ANSWER_FORMAT_NIL if nil_ok else P.ANSWER_FORMAT)
    return [SystemMessage(P.SYSTEM_NIL if nil_ok else P.SYSTEM), HumanMessage(user)]


def link_on_text(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Make one attempt in the run's ``linker_mode`` and record it (its pick is checked by reflection next)."""
    ctx = resolve_context(runtime)
    candidates = state["candidates"]
    attempts = list(state.get("attempts") or [])
    usage = dict(state.get("usage") or {})
    entry: dict[str, Any] = {"step": "link", "round": state["round"], "clue": state.get("current_clue"),
                             "attempt": len(attempts) + 1}
    if not candidates:
        entry.update(raw="", outcome="nil", pick=None, note="no candidates: nil without asking the model")
        attempts.append({"key": None, "outcome": "nil", "raw": "", "score": None})
        return {"attempts": attempts, "trace": record(entry)}
    if ctx.linker_mode == "fused":
        return _link_fused(state, ctx, entry, attempts, usage)
    raw, tokens = invoke_model(linker(ctx), build_messages(state, ctx), spec=ctx.linker_model)
    count_call(usage, tokens["input_tokens"], tokens["output_tokens"])
    shown = shown_candidates(state)
    answer = parse_answer(raw, [display_name(c["name"]) for c in shown], qids=[c.get("qid") for c in shown],
                          allow_nil=nil_offered(ctx.allow_nil, ctx.nil_threshold))
    outcome = answer.kind
    pick = shown[answer.index] if outcome == "entity" else None
    key = candidate_key(pick) if pick else None
    note = {"unparseable": "answer could not be mapped to an offered candidate: counted as a failed attempt"}.get(outcome, "")
    entry.update(raw=raw, outcome=outcome, model=describe(ctx.linker_model), pick=entity_ref(pick))
    if note:
        entry["note"] = note
    attempts.append({"key": key, "outcome": outcome, "raw": raw, "score": None})
    return {"attempts": attempts, "usage": usage,
            "trace": record(entry, "pick", round=state["round"], attempt=entry["attempt"], outcome=outcome,
                            pick=entry["pick"], answer=raw[:80])}


def _link_fused(state: State, ctx: Context, entry: dict[str, Any], attempts: list, usage: dict) -> dict[str, Any]:
    """``linker_mode='fused'``: pick the best candidate of the round's scored distribution."""
    pick, dist, info = fused_pick(state, ctx, usage)
    key = candidate_key(pick) if pick else None
    outcome = "entity" if pick else ("nil" if info.get("nil") else "unparseable")
    entry.update(outcome=outcome, mode="fused", pick=entity_ref(pick), **info)
    attempts.append({"key": key, "outcome": outcome, "raw": "", "score": None, "confidence": info["confidence"]})
    return {"attempts": attempts, "usage": usage, "round_scores": dist,
            "trace": record(entry, "pick", round=state["round"], attempt=entry["attempt"], outcome=outcome,
                            pick=entry["pick"], confidence=info["confidence"], gated=info["gated"])}
