"""Stage 3: intra-modal reflection (the algorithm is ``tools/reflection.py``).

Is the pick consistent with the text? ``llm`` mode: the cosine of
"mention. context" with the entity's "name. description" must reach
``reflection_threshold`` (α), else the pick is ruled out and the linker asked
again. ``fused`` mode (the default): the pick's fused probability is compared
with ``confidence_threshold`` and the pick is kept either way. This node reads
the state, calls :func:`tools.reflection.reflect_pick`, and writes its outcome.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import record
from graph.state import State
from tools.reflection import reflect_pick
from tools.texts import entity_ref


def reflect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Judge the latest pick; settle the round's answer or rule the pick out for a re-choice.

    Appends one ``reflect`` entry to the trace: the pick, its score against the
    threshold of the linker mode, and how the round's answer was settled.
    """
    ctx = resolve_context(runtime)
    r = reflect_pick(state["mention"], state.get("context") or "", state["candidates"], state["attempts"],
                     state.get("excluded") or [], round_no=state["round"], linker_mode=ctx.linker_mode,
                     confidence_threshold=ctx.confidence_threshold, reflection_threshold=ctx.reflection_threshold,
                     max_rechoices=ctx.max_rechoices, unparseable_fallback=ctx.unparseable_fallback,
                     embedding_model=ctx.embedding_model, openai_base_url=ctx.openai_base_url,
                     openai_api_key=ctx.openai_api_key)
    entry = {"step": "reflect", "round": state["round"], "clue": state.get("current_clue"),
             "attempt": len(r.attempts), "pick": entity_ref(r.pick), **r.details}
    if not r.settled:
        return {"attempts": r.attempts, "excluded": r.excluded, "settled": False, "trace": record(entry, **r.event)}
    out: dict[str, Any] = {"answer": r.answer, "answer_note": r.note, "excluded": [], "attempts": [], "settled": True,
                           "trace": record(entry, **r.event)}
    if state["round"] == 1:  # the round-1 answer is also kept as the fallback
        out["round1_entity"] = r.answer
    return out
