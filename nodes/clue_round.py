"""Stage 5: a visual clue round.

One node for the four clue kinds (OCR, objects, scene, caption): which clue
comes next is a setting (``clue_order``), so it is data, not graph topology.
The node names its clue in the trace (``{"step": "clue", "clue": "ocr", ...}``),
in the progress events (``clue_start`` / ``clue`` with ``clue``) and in the
state (``current_clue``, ``clues``).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context, resolve_context
from graph.progress import emit, record
from graph.state import State
from tools.clues import Clue, extract_clue, failure_note
from tools.errors import ConfigError, ModelError


def clue_round(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Extract the next clues of ``clue_order`` until one says something; that clue opens the next round.

    An empty clue (no text in the image, say) costs no round: the next clue is
    tried. A tool that fails on this image is noted in the trace and skipped; a
    model that cannot be loaded is a configuration error and stops the run.
    When every clue left is empty the round's answer stays settled and the
    graph finishes (``graph/edges.py``: ``after_clue``).
    """
    ctx = resolve_context(runtime)
    gathered = {c["type"]: Clue.from_dict(c) for c in state.get("clues") or []}
    index = state.get("clue_index", 0)
    trace: list[dict[str, Any]] = []
    warnings = list(state.get("warnings") or [])
    while index < len(ctx.clue_order):
        clue_type = ctx.clue_order[index]
        index += 1
        recorded, clue = _extract(clue_type, state, ctx, gathered)
        trace += recorded
        if clue is None:  # the tool failed on this image: a warning too
            warnings.append(recorded[-1]["note"])
        if clue is not None and clue.text:
            return {
                "clue_index": index,
                "round": state["round"] + 1,
                "current_clue": clue_type,
                "clues": [*(state.get("clues") or []), clue.to_dict()],
                "settled": False,
                "attempts": [],
                "excluded": [],
                "trace": trace,
                **({"warnings": warnings} if warnings != (state.get("warnings") or []) else {}),
            }
    return {"clue_index": index, "trace": trace,
            **({"warnings": warnings} if warnings != (state.get("warnings") or []) else {})}


def _extract(clue_type: str, state: State, ctx: Context, gathered: dict) -> tuple[list[dict[str, Any]], Clue | None]:
    """One clue (``None`` when its tool failed on this image) and its trace entry, recorded."""
    entry: dict[str, Any] = {"step": "clue", "round": state["round"] + 1, "clue": clue_type}
    emit("clue_start", round=entry["round"], clue=clue_type)
    try:
        clue = extract_clue(clue_type, image=state.get("image"), image_desc=state.get("image_desc"),
                            ctx=ctx, gathered=gathered)
    except (ConfigError, ModelError):
        raise  # a bad setting or a model that cannot be loaded stops the run
    except Exception as exc:  # one image defeating one tool must not end the run (names tool and image)
        entry.update(round=state["round"], note=f"{failure_note(clue_type, state.get('image'), exc, ctx)}; skipped")
        return record(entry, "clue", clue=clue_type, text="", source=None, empty=True, note=entry["note"]), None
    entry.update(text=clue.text, source=clue.source)
    if not clue.text:
        entry.update(round=state["round"], note="empty clue: skipped, no round spent")
    return record(entry, "clue", clue=clue_type, text=clue.text, source=clue.source, empty=not clue.text), clue
