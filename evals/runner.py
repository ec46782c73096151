"""A resumable benchmark run of the compiled graph.

    from evals.runner import run_eval
    summary = run_eval("WikiMEL_dev.json", "WikiMEL_dev_label.json", "run/",
                       context=Context(linker_model="openai:gpt-4o-mini"), sample=100, seed=0)

Each mention becomes one line of ``run/predictions.jsonl``, written (and
fsync'd) as soon as it is done; the same call resumes a killed run, skipping the
ids already written. A record that fails (malformed input, model error) is
written with its error and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from evals import baselines
from evals.datasets import Dataset, Example, load_dataset
from evals.metrics import match, match_qid
from evals.store import PredictionWriter, check_resume, read_config, read_predictions, write_config
from graph.context import Context
from tools.errors import I2CRError, InputError

SECRET_SETTINGS = ("openai_api_key",)


def context_settings(ctx: Context) -> dict[str, Any]:
    """The settings of ``ctx`` as JSON values: objects by class name, secrets redacted."""
    out: dict[str, Any] = {}
    for name in type(ctx).model_fields:
        value = getattr(ctx, name)
        if name in SECRET_SETTINGS:
            value = None if value is None else "<set>"
        elif not isinstance(value, (str, int, float, bool, list, type(None))):
            value = f"<{type(value).__name__} object>"
        out[name] = value
    return out


def _sha256(path: str | Path | None) -> str | None:
    if not path:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select(examples: list[Example], *, limit: int | None = None, sample: int | None = None,
           seed: int = 0) -> list[Example]:
    """The examples to run: a seeded random ``sample`` (kept in file order), then the first ``limit``."""
    chosen = list(examples)
    if sample is not None:
        if sample < 1:
            raise InputError(f"--sample: expected a positive number, got {sample}")
        if sample < len(chosen):
            keep = set(random.Random(seed).sample(range(len(chosen)), sample))
            chosen = [ex for i, ex in enumerate(chosen) if i in keep]
    if limit is not None:
        if limit < 0:
            raise InputError(f"--limit: expected a non-negative number, got {limit}")
        chosen = chosen[:limit]
    return chosen


class _Baselines:
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


def build_config(ds: Dataset, *, labels: Any, images: Any, sample: int | None, seed: int,
                 limit: int | None, concurrency: int, ctx: Context) -> dict[str, Any]:
    """What identifies a run (compared on resume) and what the report shows."""
    return {
        "dataset": str(Path(ds.path).resolve()),
        "dataset_sha256": _sha256(ds.path),
        "format": ds.format,
        "labels": None if labels is None or isinstance(labels, dict) else str(Path(labels).resolve()),
        "labels_sha256": (None if labels is None else _sha256(labels) if not isinstance(labels, dict) else
                          hashlib.sha256(json.dumps(labels, sort_keys=True, default=str).encode()).hexdigest()),
        "images": None if images is None else str(Path(images).resolve()),
        "sample": sample,
        "seed": seed,
        "limit": limit,
        "concurrency": concurrency,
        "settings": context_settings(ctx),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_eval(dataset: str | Path, labels: str | Path | dict | None = None, out: str | Path = "run", *,
             context: Context | dict | None = None, images: str | Path | None = None, limit: int | None = None,
             sample: int | None = None, seed: int = 0, concurrency: int = 1, retry_errors: bool = False,
             progress: bool = True, report: bool = True, graph: Any = None,
             on_record: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the graph over a dataset, writing ``out/predictions.jsonl``; return a summary.

    ``on_record`` is called with each line after it is written (tests use it to
    simulate a crash). With ``report``, ``report.md`` and ``rounds.png`` are
    written at the end.
    """
    ctx = context if isinstance(context, Context) else Context(**(context or {}))
    if concurrency < 1:
        raise InputError(f"--concurrency: expected a positive number, got {concurrency}")
    ds = load_dataset(dataset, labels, images)
    chosen = select(ds.examples, limit=limit, sample=sample, seed=seed)
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = build_config(ds, labels=labels, images=images, sample=sample, seed=seed, limit=limit,
                          concurrency=concurrency, ctx=ctx)
    config["selected"] = len(chosen)
    old = read_config(run_dir)
    if old is not None:
        check_resume(run_dir, {k: v for k, v in old.items() if k != "selected"},
                     {k: v for k, v in config.items() if k != "selected"})
        config["created"] = old.get("created", config["created"])
    write_config(run_dir, config)

    existing, notes = read_predictions(run_dir, repair=True)
    done = {r["id"]: r for r in existing if not (retry_errors and r.get("error"))}
    todo = [ex for ex in chosen if ex.id not in done]
    chosen_ids = {ex.id for ex in chosen}
    previous = [r for r in done.values() if r["id"] in chosen_ids]

    if graph is None:
        from graph import graph as default_graph

        graph = default_graph
    score_baselines = _Baselines(ctx)
    tally = _Tally(previous)
    bar = _progress_bar(len(chosen), len(previous), progress)
    bar.set_postfix_str(tally.postfix(), refresh=False)
    written = 0
    with PredictionWriter(run_dir) as writer:
        def record_done(rec: dict) -> None:
            nonlocal written
            writer.write(rec)
            written += 1
            tally.add(rec)
            bar.set_postfix_str(tally.postfix(), refresh=False)
            bar.update(1)
            if on_record is not None:
                on_record(rec)

        try:
            if concurrency == 1:
                for ex in todo:
                    record_done(evaluate_one(graph, ex, ctx, score_baselines))
            else:
                _run_pool(todo, lambda ex: evaluate_one(graph, ex, ctx, score_baselines), concurrency, record_done)
        finally:
            bar.close()
    summary = {"run_dir": str(run_dir), "selected": len(chosen), "resumed_from": len(previous),
               "written": written, "done": len(previous) + written, "errors": tally.errors,
               "accuracy": tally.accuracy(), "notes": ds.warnings + notes}
    if report:
        from evals.report import write_report

        summary["report"] = str(write_report(run_dir))
    return summary


def _run_pool(todo: list[Example], work: Callable[[Example], dict], concurrency: int,
              record_done: Callable[[dict], None]) -> None:
    """Run ``work`` over ``todo`` on a thread pool, at most ``2 × concurrency`` records queued.

    Lines are written from this (the calling) thread as records finish, so the
    order may differ from the dataset's. On an interrupt, queued records are
    dropped; those in flight finish in the background but are not written.
    """
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="i2cr-eval")
    pending: set = set()
    items: Iterable[Example] = iter(todo)
    try:
        for ex in items:
            pending.add(pool.submit(work, ex))
            if len(pending) >= 2 * concurrency:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    record_done(fut.result())
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                record_done(fut.result())
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


class _Tally:
    """Running accuracy and error count for the progress bar and the summary."""

    def __init__(self, records: list[dict]):
        self.correct = self.scored = self.errors = 0
        for rec in records:
            self.add(rec)

    def add(self, rec: dict) -> None:
        if rec.get("error"):
            self.errors += 1
        if rec.get("gold") is not None:
            self.scored += 1
            self.correct += bool(rec.get("correct"))

    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def postfix(self) -> str:
        acc = self.accuracy()
        return f"acc={'-' if acc is None else f'{100 * acc:.1f}%'} err={self.errors}"


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="mention", dynamic_ncols=True,
                desc="i2cr eval", smoothing=0.1)
