"""Stage 2: text linking, one pick per attempt, in the ``linker_mode`` of the run.

- ``fused`` (the default, ``tools/fused_linker.py``): every candidate is scored
  once per round (cheap evidence, plus the LLM's scores when that evidence is
  not decisive); the pick is the most probable candidate not yet ruled out, or
  nil when the calibrated "none of these" alternative wins.
- ``llm``: the linker model is asked to pick one candidate (or nil) from the
  mention, its context and the visual clues gathered so far, with the picks
  reflection already rejected in this round ruled out in the prompt.

Either way the attempt is recorded (``attempts``, one ``link`` trace entry) and
checked by reflection next.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import record
from graph.state import State
from tools import fused_linker
from tools.candidates import candidate_key
from tools.fusion import nil_offered
from tools.linker import count_call, load_linker
from tools.llm_linker import llm_pick
from tools.models import describe
from tools.texts import entity_ref


def round_clues(state: State, ctx: Context) -> list[dict]:
    """The clues the linker sees this round (all so far, or the newest only: ``accumulate_clues``)."""
    clues = state.get("clues") or []
    return clues if ctx.accumulate_clues else clues[-1:]


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
    return _link_llm(state, ctx, entry, attempts, usage)


def _link_llm(state: State, ctx: Context, entry: dict[str, Any], attempts: list, usage: dict) -> dict[str, Any]:
    """``linker_mode='llm'``: one answer of the linker model (``tools/llm_linker.py``)."""
    last = attempts[-1] if attempts else None
    r = llm_pick(load_linker(ctx), state["mention"], state.get("context") or "", state["candidates"],
                 list(state.get("excluded") or []), round_clues(state, ctx),
                 retry_raw=last["raw"] if last and last["outcome"] == "unparseable" else None,
                 spec=ctx.linker_model, max_desc_chars=ctx.max_desc_chars,
                 allow_nil=nil_offered(ctx.allow_nil, ctx.nil_threshold))
    count_call(usage, r.tokens["input_tokens"], r.tokens["output_tokens"])
    entry.update(raw=r.raw, outcome=r.outcome, model=describe(ctx.linker_model), pick=entity_ref(r.pick))
    if r.note:
        entry["note"] = r.note
    attempts.append({"key": candidate_key(r.pick) if r.pick else None, "outcome": r.outcome, "raw": r.raw,
                     "score": None})
    return {"attempts": attempts, "usage": usage,
            "trace": record(entry, "pick", round=state["round"], attempt=entry["attempt"], outcome=r.outcome,
                            pick=entry["pick"], answer=r.raw[:80])}


def _link_fused(state: State, ctx: Context, entry: dict[str, Any], attempts: list, usage: dict) -> dict[str, Any]:
    """``linker_mode='fused'``: the best candidate of the round's distribution (scored once per round)."""
    candidates = state["candidates"]
    dist = state.get("round_scores")
    reused = bool(dist) and dist.get("round") == state["round"] and dist.get("keys") == [
        candidate_key(c) for c in candidates]
    if not reused:
        dist = fused_linker.score_round(state["mention"], state.get("context") or "", candidates,
                                        round_clues(state, ctx), ctx, round_no=state["round"],
                                        source=state.get("candidate_source"), earlier=state.get("round_scores"),
                                        usage=usage)
    pick, info = fused_linker.pick(dist, candidates, set(state.get("excluded") or []), ctx, reused=reused)
    outcome = "entity" if pick else ("nil" if info.get("nil") else "unparseable")
    entry.update(outcome=outcome, mode="fused", pick=entity_ref(pick), **info)
    attempts.append({"key": candidate_key(pick) if pick else None, "outcome": outcome, "raw": "", "score": None,
                     "confidence": info["confidence"]})
    return {"attempts": attempts, "usage": usage, "round_scores": dist,
            "trace": record(entry, "pick", round=state["round"], attempt=entry["attempt"], outcome=outcome,
                            pick=entry["pick"], confidence=info["confidence"], gated=info["gated"])}
