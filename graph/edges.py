"""Where the graph goes after each node that branches: the method's loop, in one place.

    reflect    → link_on_text (the pick was ruled out: choose again) | verify (the round has its answer)
    verify     → finalize (verified, no image, the verifier cannot use it, or no clue round left) | clue_round
    clue_round → link_on_text (a clue opened a new round) | finalize (every clue left was empty)
    finalize   → review (``human_review`` on and no round verified) | END

The nodes write what happened (``settled``, ``verdict``, ``round``, ``clue_index``);
these functions only read it, with the run's settings.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END
from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.state import State


def clue_rounds_left(state: State, ctx: Context) -> bool:
    """Whether another clue may still be tried: rounds below ``max_rounds`` and clues left in ``clue_order``."""
    clue_rounds_done = state.get("round", 1) - 1
    return clue_rounds_done < ctx.max_rounds and state.get("clue_index", 0) < len(ctx.clue_order)


def after_reflection(state: State) -> Literal["link_on_text", "verify"]:
    """Re-ask the linker while the round has no answer yet; otherwise verify it."""
    return "verify" if state.get("settled") else "link_on_text"


def next_after_verify(state: State, ctx: Context) -> Literal["clue_round", "finalize"]:
    """``after_verify`` with the settings given (the verify node names it in its progress event)."""
    if state.get("verdict") in ("verified", "no_visual", "unverifiable") or not clue_rounds_left(state, ctx):
        return "finalize"
    return "clue_round"


def after_verify(state: State, runtime: Runtime[Context]) -> Literal["clue_round", "finalize"]:
    """Finish when the image agrees with the answer (or there is no image); else gather the next clue."""
    return next_after_verify(state, resolve_context(runtime))


def after_clue(state: State) -> Literal["link_on_text", "finalize"]:
    """A clue opened a new round (its answer is not settled yet): link again; no clue said anything: finish."""
    return "finalize" if state.get("settled") else "link_on_text"


def after_finalize(state: State, runtime: Runtime[Context]) -> Literal["review", "__end__"]:
    """A person reviews fallback answers when ``human_review`` is on."""
    return "review" if resolve_context(runtime).human_review and state.get("status") == "fallback" else END
