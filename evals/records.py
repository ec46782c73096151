"""One mention's prediction line: the graph run on an example, or the line of a mention that failed.

Used by the run in this process (:mod:`evals.runner`) and by its worker processes (:mod:`evals.worker`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from evals import baselines
from evals.datasets import Example
from evals.metrics import match, match_qid
from graph.context import Context
from tools.errors import I2CRError


class Baselines:
    """Computes the per-record baselines; an unavailable embedder disables that baseline once."""

    def __init__(self, ctx: Context):
        self.ctx, self._embedder, self.error = ctx, None, None
        self._lock = threading.Lock()

    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None and self.error is None:
                from tools.embeddings import get_embedder

                try:
                    self._embedder = get_embedder(self.ctx.embedding_model, base_url=self.ctx.openai_base_url,
                                                  api_key=self.ctx.openai_api_key)
                except I2CRError as exc:
                    self.error = str(exc)
            return self._embedder

    def __call__(self, inputs: dict) -> dict[str, Any]:
        cands = inputs.get("candidates")
        out: dict[str, Any] = {"first": baselines.first_candidate(cands)}
        embedder = self.embedder()
        if embedder is None:
            out["embedding_error"] = self.error
            return out
        try:
            out["embedding"] = baselines.embedding_choice(embedder, inputs["mention"], inputs.get("context", ""), cands)
        except I2CRError as exc:
            out["embedding_error"] = str(exc)
        return out


def evaluate_one(graph: Any, ex: Example, ctx: Context, score_baselines: Callable[[dict], dict]) -> dict[str, Any]:
    """Run the graph on one example and return its prediction line (errors are captured, not raised)."""
    rec: dict[str, Any] = {"id": ex.id, "mention": (ex.inputs or {}).get("mention"), "gold": ex.gold}
    if ex.inputs is None:
        return {**rec, "prediction": None, "correct": False if ex.gold is not None else None,
                "error": ex.error, "where": ex.where, "seconds": 0.0}
    start = time.perf_counter()
    try:
        out = graph.invoke(dict(ex.inputs), context=ctx)
        error = None
    except I2CRError as exc:
        out, error = {}, str(exc)
    except Exception as exc:  # a bug or an unexpected model failure: record it, keep going
        out, error = {}, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    wrong = None if ex.gold is None else False
    usage = out.get("usage") or {}
    pred = baselines.public(out.get("entity"))
    round1 = baselines.public(out.get("round1_entity"))
    rec.update({
        "prediction": pred,
        "correct": wrong if error else match(pred, ex.gold),
        "correct_qid": (False if error and match_qid(None, ex.gold) is not None else match_qid(pred, ex.gold)),
        "status": out.get("status"),
        "stop_round": out.get("stop_round"),
        "round1": round1,
        "round1_correct": wrong if error else match(round1, ex.gold),
        "llm_calls": int(usage.get("llm_calls", 0)),
        "prompt_tokens": int(usage.get("input_tokens", 0)),
        "completion_tokens": int(usage.get("output_tokens", 0)),
        "seconds": round(seconds, 4),
        "has_image": bool(ex.inputs.get("image")),
        "has_image_desc": bool(ex.inputs.get("image_desc")),
    })
    try:
        rec["baselines"] = score_baselines(ex.inputs)
    except Exception as exc:  # never lose the graph's result over a baseline
        rec["baselines"] = {"first": baselines.first_candidate(ex.inputs.get("candidates")),
                            "embedding_error": f"{type(exc).__name__}: {exc}"}
    if ex.gold is not None and ex.inputs.get("candidates"):
        rec["gold_in_candidates"] = any(match(baselines.public(c), ex.gold) for c in ex.inputs["candidates"])
    rec["warnings"] = out.get("warnings") or []
    rec["trace"] = out.get("trace") or []
    rec["clues"] = [{k: c.get(k) for k in ("type", "text", "source")} for c in out.get("clues") or []]
    if error:
        rec["error"] = error
    return rec


def failed_record(ex: Example, error: str, seconds: float = 0.0) -> dict[str, Any]:
    """The line of a mention whose linking did not return (its worker process died)."""
    inputs = ex.inputs or {}
    return {"id": ex.id, "mention": inputs.get("mention"), "gold": ex.gold, "prediction": None,
            "correct": None if ex.gold is None else False,
            "correct_qid": None if match_qid(None, ex.gold) is None else False,
            "status": None, "stop_round": None, "round1": None, "round1_correct": None if ex.gold is None else False,
            "llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": round(seconds, 4),
            "has_image": bool(inputs.get("image")), "has_image_desc": bool(inputs.get("image_desc")),
            "baselines": {"first": baselines.first_candidate(inputs.get("candidates"))},
            "trace": [], "clues": [], "error": error}
