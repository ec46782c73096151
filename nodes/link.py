"""Stage 2: text linking.

Asks the linker model to pick one candidate (or nil) from the mention, its
context and the visual clues gathered so far, with the picks that reflection
already rejected in this round ruled out in the prompt.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.inputs import candidate_key
from graph.state import State
from prompts import linking as P
from tools.answers import parse_answer
from tools.models import describe, invoke_model, load_chat_model


def _desc(candidate: dict, limit: int) -> str:
    desc = " ".join(str(candidate.get("desc") or "").split())
    if not desc:
        return ""
    if len(desc) > limit:
        desc = desc[:limit].rsplit(" ", 1)[0] + "..."
    return f" — {desc}"


def build_messages(state: State, ctx: Context) -> list:
    """The chat messages for the current attempt."""
    candidates = state["candidates"]
    lines = [P.CANDIDATE_LINE.format(number=i + 1, name=c["name"], desc=_desc(c, ctx.max_desc_chars))
             for i, c in enumerate(candidates)]
    clues = state.get("clues") or []
    if clues and not ctx.accumulate_clues:
        clues = clues[-1:]
    clue_block = ""
    if clues:
        clue_block = P.CLUES.format(lines="\n".join(
            P.CLUE_LINE.format(label=P.CLUE_LABELS.get(c["type"], c["type"]), text=c["text"]) for c in clues))
    keys = [candidate_key(c) for c in candidates]
    excluded = state.get("excluded") or []
    rejected = ""
    if excluded:
        numbers = ", ".join(f"{keys.index(k) + 1} ({candidates[keys.index(k)]['name']})" for k in excluded if k in keys)
        rejected = P.REJECTED.format(numbers=numbers)
    attempts = state.get("attempts") or []
    retry = ""
    if attempts and attempts[-1]["outcome"] == "unparseable":
        retry = P.RETRY.format(raw=attempts[-1]["raw"][:80])
    user = P.USER.format(candidates="\n".join(lines), mention=state["mention"],
                         context=state.get("context") or "(none)", clues=clue_block, rejected=rejected,
                         retry=retry, answer_format=P.ANSWER_FORMAT_NIL if ctx.allow_nil else P.ANSWER_FORMAT)
    return [SystemMessage(P.SYSTEM_NIL if ctx.allow_nil else P.SYSTEM), HumanMessage(user)]


def link_on_text(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Ask the linker once and record the attempt (its pick is checked by reflection next)."""
    ctx = resolve_context(runtime)
    candidates = state["candidates"]
    attempts = list(state.get("attempts") or [])
    usage = dict(state.get("usage") or {})
    entry: dict[str, Any] = {"step": "link", "round": state["round"], "clue": state.get("current_clue"),
                             "attempt": len(attempts) + 1}
    if not candidates:
        entry.update(raw="", outcome="nil", pick=None, note="no candidates: nil without asking the model")
        attempts.append({"key": None, "outcome": "nil", "raw": "", "score": None})
        return {"attempts": attempts, "trace": [*state["trace"], entry]}
    model = load_chat_model(ctx.linker_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key,
                            temperature=ctx.temperature, max_tokens=ctx.max_tokens,
                            timeout=ctx.request_timeout, max_retries=ctx.max_retries)
    raw, tokens = invoke_model(model, build_messages(state, ctx), spec=ctx.linker_model)
    usage["llm_calls"] = usage.get("llm_calls", 0) + 1
    usage["input_tokens"] = usage.get("input_tokens", 0) + tokens["input_tokens"]
    usage["output_tokens"] = usage.get("output_tokens", 0) + tokens["output_tokens"]
    answer = parse_answer(raw, [c["name"] for c in candidates], qids=[c.get("qid") for c in candidates],
                          allow_nil=ctx.allow_nil)
    key = candidate_key(candidates[answer.index]) if answer.kind == "entity" else None
    outcome = answer.kind
    if key is not None and key in (state.get("excluded") or []):
        outcome, note = "excluded", "picked a candidate already ruled out: counted as a failed attempt"
        key = None
    else:
        note = {"unparseable": "answer could not be mapped to a candidate: counted as a failed attempt"}.get(outcome, "")
    pick = candidates[answer.index] if outcome == "entity" else None
    entry.update(raw=raw, outcome=outcome, model=describe(ctx.linker_model),
                 pick={"qid": pick.get("qid"), "name": pick["name"]} if pick else None)
    if note:
        entry["note"] = note
    attempts.append({"key": key, "outcome": outcome, "raw": raw, "score": None})
    return {"attempts": attempts, "usage": usage, "trace": [*state["trace"], entry]}
