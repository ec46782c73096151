"""Pieces shared by both text linkers (``nodes/link.py`` and ``nodes/link_fused.py``)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from graph.context import Context
from graph.state import State
from prompts import linking as P
from tools.models import load_chat_model


def candidate_desc(candidate: dict, limit: int, *, strip_name: bool = False) -> str:
    """`` — <description>`` cut to ``limit`` characters ('' without one).

    ``strip_name`` drops a leading ``Name: <name>.`` (the line shows the name already).
    """
    desc = " ".join(str(candidate.get("desc") or "").split())
    if strip_name:
        name = str(candidate.get("name") or "")
        for prefix in (f"Name: {name}.", f"Name: {name}"):
            if desc.startswith(prefix):
                desc = desc[len(prefix):].strip()
                break
    if not desc:
        return ""
    if len(desc) > limit:
        desc = desc[:limit].rsplit(" ", 1)[0] + "..."
    return f" — {desc}"


def round_clues(state: State, ctx: Context) -> list[dict]:
    """The clues the linker sees this round (all so far, or the newest only)."""
    clues = state.get("clues") or []
    return clues if ctx.accumulate_clues else clues[-1:]


def clue_block(clues: list[dict]) -> str:
    """The prompt's visual-clue paragraph ('' without clues)."""
    if not clues:
        return ""
    return P.CLUES.format(lines="\n".join(
        P.CLUE_LINE.format(label=P.CLUE_LABELS.get(c["type"], c["type"]), text=c["text"]) for c in clues))


def linker(ctx: Context) -> BaseChatModel:
    """The configured linker chat model."""
    return load_chat_model(ctx.linker_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key,
                           temperature=ctx.temperature, max_tokens=ctx.max_tokens,
                           timeout=ctx.request_timeout, max_retries=ctx.max_retries)


def count_call(usage: dict[str, Any], input_tokens: int, output_tokens: int) -> None:
    """Add one LLM call and its tokens to the run's ``usage``."""
    usage["llm_calls"] = usage.get("llm_calls", 0) + 1
    usage["input_tokens"] = usage.get("input_tokens", 0) + int(input_tokens)
    usage["output_tokens"] = usage.get("output_tokens", 0) + int(output_tokens)
