"""Stage 5, shared by the four clue nodes: extract one visual clue and open a new round."""

from __future__ import annotations

from typing import Any

from graph.context import Context
from graph.progress import emit
from graph.state import State
from nodes.routing import next_clue_step
from tools.clues import Clue, extract_clue, failure_note
from tools.errors import ConfigError, ModelError


def run_clue(clue_type: str, state: State, ctx: Context) -> dict[str, Any]:
    """Extract the ``clue_type`` clue; a non-empty clue starts the next linking round.

    An empty clue (no text in the image, say) costs no round: the graph moves on
    to the next clue in ``clue_order``. A tool that fails on this image is noted
    in the trace and skipped; a model that cannot be loaded is a configuration
    error and stops the run.
    """
    gathered = {c["type"]: Clue.from_dict(c) for c in state.get("clues") or []}
    clue_index = state.get("clue_index", 0) + 1
    entry: dict[str, Any] = {"step": "clue", "round": state["round"] + 1, "clue": clue_type}
    emit("clue_start", round=entry["round"], clue=clue_type)
    try:
        clue = extract_clue(clue_type, image=state.get("image"), image_desc=state.get("image_desc"),
                            ctx=ctx, gathered=gathered)
    except (ConfigError, ModelError):
        raise  # a bad setting or a model that cannot be loaded stops the run
    except Exception as exc:  # one image defeating one tool must not end the run (names tool and image)
        entry.update(round=state["round"], note=f"{failure_note(clue_type, state.get('image'), exc, ctx)}; skipped")
        emit("clue", clue=clue_type, text="", source=None, empty=True, note=entry["note"])
        return {"clue_index": clue_index, "next_step": next_clue_step(state, ctx, clue_index),
                "trace": [*state["trace"], entry], "warnings": [*(state.get("warnings") or []), entry["note"]]}
    entry.update(text=clue.text, source=clue.source)
    emit("clue", clue=clue_type, text=clue.text, source=clue.source, empty=not clue.text)
    if not clue.text:
        entry.update(round=state["round"], note="empty clue: skipped, no round spent")
        return {"clue_index": clue_index, "next_step": next_clue_step(state, ctx, clue_index),
                "trace": [*state["trace"], entry]}
    return {
        "clue_index": clue_index,
        "round": state["round"] + 1,
        "current_clue": clue_type,
        "clues": [*(state.get("clues") or []), clue.to_dict()],
        "settled": False,
        "attempts": [],
        "excluded": [],
        "next_step": "link_on_text",
        "trace": [*state["trace"], entry],
    }
