"""A resumable benchmark run of the compiled graph.

    from evals.runner import run_eval
    summary = run_eval("WikiMEL_dev.json", "WikiMEL_dev_label.json", "run/",
                       context=Context(linker_model="openai:gpt-4o-mini"), sample=100, seed=0)

Each mention becomes one line of ``run/predictions.jsonl``, written (and
fsync'd) by this process as soon as it is done; the same call resumes a killed
run, skipping the ids already written. A record that fails (malformed input,
model error) is written with its error and the run goes on. The graph runs in
worker processes (:mod:`evals.worker`), so a native crash inside a model costs
one mention, not the batch. The run folder is locked while a run uses it. A run
whose mentions keep failing for one reason stops early (``summary["stopped"]``).
See docs/evaluation-robustness.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evals.datasets import Dataset, Example, load_dataset
from evals.machine import busy_note
from evals.predict import Baselines, evaluate_one, failed_record
from evals.report import write_report  # at start: a run's report uses the code the run started with
from evals.store import PredictionWriter, RunLock, check_resume, read_config, read_predictions, write_config
from evals.worker import MENTION_TIMEOUT, mention_limit
from graph.context import Context
from tools.errors import InputError

SECRET_SETTINGS = ("openai_api_key",)
FAIL_FAST = 5
"""Stop when the first this many mentions of a run all fail with the same error (0: never)."""
MAX_FAILURE_SHARE = 0.5
"""Stop when more than this share of the mentions linked so far failed with one error (None: never) ..."""
FAILURE_SHARE_AFTER = 20
"""... once at least this many mentions were linked in the run."""
ISOLATION = ("process", "inline")
_Baselines = Baselines  # the former private name (evals/bench_worker.py, tests)
__all__ = ["run_eval", "select", "evaluate_one", "failed_record", "Baselines", "context_settings"]


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
        if limit < 1:
            raise InputError(f"--limit: expected a positive number, got {limit}")
        chosen = chosen[:limit]
    return chosen


def failure_reason(error: str) -> str:
    """An error with quoted names and numbers masked: two failures with the same result are one reason."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+(?:\.\d+)?", "_", " ".join(str(error).split()))


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _StopRun(Exception):
    """Raised from the record callback when the run should stop early; carries the reason."""


class _FailureWatch:
    """Decides when a run is failing for one reason and should stop (malformed records do not count)."""

    def __init__(self, fail_fast: int, share: float | None, after: int = FAILURE_SHARE_AFTER):
        self.fail_fast, self.share, self.after = fail_fast, share, after
        self.n = 0
        self.failed: Counter[str] = Counter()
        self.example: dict[str, str] = {}

    def add(self, rec: dict) -> str | None:
        """Count ``rec``; return why the run should stop, or ``None``."""
        self.n += 1
        if rec.get("error"):
            reason = failure_reason(rec["error"])
            self.failed[reason] += 1
            self.example.setdefault(reason, one_line(rec["error"]))
        if not self.failed:
            return None
        reason, count = self.failed.most_common(1)[0]
        if self.fail_fast and self.n == self.fail_fast and count == self.n:
            return f"the first {self.n} mentions all failed with the same error: {self.example[reason]}"
        if self.share is not None and self.n >= self.after and count > self.share * self.n:
            return (f"{count} of the {self.n} mentions linked so far ({100 * count / self.n:.0f}%) failed with "
                    f"the same error: {self.example[reason]}")
        return None


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
             on_record: Callable[[dict], None] | None = None, isolation: str = "process",
             fail_fast: int = FAIL_FAST, max_failure_share: float | None = MAX_FAILURE_SHARE,
             mention_timeout: float | None = MENTION_TIMEOUT, check_machine: bool = True) -> dict[str, Any]:
    """Run (or resume) the graph over a dataset, writing ``out/predictions.jsonl``; return a summary.

    ``isolation="process"`` links in ``concurrency`` worker processes that are
    restarted when they die (see :mod:`evals.worker`; objects in ``context`` and
    ``graph`` must then be picklable, or ``graph`` a ``"module:attribute"``);
    ``"inline"`` links in this process (``concurrency`` threads). The run stops
    early when its first ``fail_fast`` mentions all fail with the same error, or
    when, after ``FAILURE_SHARE_AFTER`` mentions, more than
    ``max_failure_share`` of them failed with one error; ``summary["stopped"]``
    then says why. ``summary["all_failed"]`` is true when every mention of the
    selection failed. ``on_record`` is called with each line after it is
    written (tests use it to simulate a crash). With ``report``, ``report.md``
    and ``rounds.png`` are written at the end. ``mention_timeout``: seconds a worker
    process may spend on one mention before it is killed and replaced (the mention is
    tried once more, then recorded as failed; ``None`` or 0: no limit). ``check_machine``: before the
    first mention, sample the other processes' CPU use (``evals.machine.busy_note``, a quarter second); a
    busy machine is said on stderr and in the report, since the run's seconds then describe the contention.
    """
    # everything that can be checked is checked before the first mention: the settings (built here,
    # validated by Context), the options, the dataset, the run folder and its lock
    ctx = context if isinstance(context, Context) else Context(**(context or {}))
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InputError(f"--concurrency: expected a positive number, got {concurrency}")
    mention_timeout = mention_limit(mention_timeout)
    if isolation not in ISOLATION:
        raise InputError(f"isolation: expected one of {list(ISOLATION)}, got {isolation!r}")
    if not isinstance(fail_fast, int) or fail_fast < 0:
        raise InputError(f"--fail-fast: expected a non-negative number, got {fail_fast}")
    if max_failure_share is not None and not 0 < max_failure_share <= 1:
        raise InputError(f"--max-failure-share: expected a number in (0, 1], got {max_failure_share}")
    pool = None
    if isolation == "process":
        from evals.worker import WorkerPool

        # pickles the settings now (no process starts yet): what cannot reach a worker is a one-line error
        pool = WorkerPool(concurrency, ctx, graph, failed_record=failed_record, mention_timeout=mention_timeout)
    ds = load_dataset(dataset, labels, images)
    chosen = select(ds.examples, limit=limit, sample=sample, seed=seed)
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir}: is a file, not a run folder; choose a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {run_dir}: cannot create the run folder ({exc.strerror or exc})") from None
    with RunLock(run_dir):
        return _run_locked(ds, chosen, run_dir, ctx, labels=labels, images=images, limit=limit, sample=sample,
                           seed=seed, concurrency=concurrency, retry_errors=retry_errors, progress=progress,
                           report=report, graph=graph, on_record=on_record, pool=pool,
                           fail_fast=fail_fast, max_failure_share=max_failure_share, check_machine=check_machine)


def _run_locked(ds: Dataset, chosen: list[Example], run_dir: Path, ctx: Context, *, labels: Any, images: Any,
                limit: int | None, sample: int | None, seed: int, concurrency: int, retry_errors: bool,
                progress: bool, report: bool, graph: Any, on_record: Callable[[dict], None] | None,
                pool: Any, fail_fast: int, max_failure_share: float | None,
                check_machine: bool = True) -> dict[str, Any]:
    """:func:`run_eval` once the run folder is locked."""
    config = build_config(ds, labels=labels, images=images, sample=sample, seed=seed, limit=limit,
                          concurrency=concurrency, ctx=ctx)
    config["selected"] = len(chosen)
    old = read_config(run_dir)
    if old is not None:
        check_resume(run_dir, {k: v for k, v in old.items() if k != "selected"},
                     {k: v for k, v in config.items() if k != "selected"})
        config["created"] = old.get("created", config["created"])
        if old.get("machine_busy"):
            config["machine_busy"] = old["machine_busy"]

    existing, notes = read_predictions(run_dir, repair=True)
    done = {r["id"]: r for r in existing if not (retry_errors and r.get("error"))}
    todo = [ex for ex in chosen if ex.id not in done]
    check_machine = check_machine and os.environ.get("I2CR_BUSY_CHECK", "1") != "0"
    busy = busy_note() if todo and check_machine else None
    if busy:  # said now and kept for the report: the run's seconds are not the machine's own
        print(f"note: {busy}", file=sys.stderr)
        config["machine_busy"] = [*config.get("machine_busy", []), busy]
    write_config(run_dir, config)
    chosen_ids = {ex.id for ex in chosen}
    previous = [r for r in done.values() if r["id"] in chosen_ids]

    if pool is not None:
        pool.notes = notes
    elif graph is None:
        from graph import graph as default_graph

        graph = default_graph
    score_baselines = None if pool is not None else Baselines(ctx)
    tally = _Tally(previous)
    watch = _FailureWatch(fail_fast, max_failure_share)
    malformed = {ex.id for ex in todo if ex.inputs is None}
    bar = _progress_bar(len(chosen), len(previous), progress)
    bar.set_postfix_str(tally.postfix(), refresh=False)
    written = 0
    stopped = None
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
            reason = None if rec["id"] in malformed else watch.add(rec)
            if reason and written < len(todo):
                raise _StopRun(reason)

        try:
            # malformed records need no model: written first, here
            for ex in todo:
                if ex.inputs is None:
                    record_done(evaluate_one(None, ex, ctx, lambda inputs: {}))
            linkable = [ex for ex in todo if ex.inputs is not None]
            if pool is not None:
                pool.run(linkable, record_done)
            elif concurrency == 1:
                for ex in linkable:
                    record_done(evaluate_one(graph, ex, ctx, score_baselines))
            else:
                _run_pool(linkable, lambda ex: evaluate_one(graph, ex, ctx, score_baselines), concurrency,
                          record_done)
        except _StopRun as stop:
            stopped = str(stop)
        finally:
            bar.close()
    done = len(previous) + written
    summary = {"run_dir": str(run_dir), "selected": len(chosen), "resumed_from": len(previous),
               "written": written, "done": done, "errors": tally.errors,
               "accuracy": tally.accuracy(), "notes": ds.warnings + notes, "stopped": stopped,
               "all_failed": bool(chosen) and done == len(chosen) and tally.errors == done,
               "common_error": tally.common_error(),
               "worker_restarts": pool.restarts if pool is not None else 0}
    if report:
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
        self.reasons: Counter[str] = Counter()
        self.example: dict[str, str] = {}
        for rec in records:
            self.add(rec)

    def add(self, rec: dict) -> None:
        if rec.get("error"):
            self.errors += 1
            reason = failure_reason(rec["error"])
            self.reasons[reason] += 1
            self.example.setdefault(reason, one_line(rec["error"]))
        if rec.get("gold") is not None:
            self.scored += 1
            self.correct += bool(rec.get("correct"))

    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def common_error(self) -> str | None:
        """The most frequent error (one example of its text) and its count, or ``None``."""
        if not self.reasons:
            return None
        reason, count = self.reasons.most_common(1)[0]
        return f"{self.example[reason]} ({count}x)"

    def postfix(self) -> str:
        acc = self.accuracy()
        return f"acc={'-' if acc is None else f'{100 * acc:.1f}%'} err={self.errors}"


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="mention", dynamic_ncols=True,
                desc="i2cr eval", smoothing=0.1)
