"""One run that measures ``i2cr eval`` against ``i2cr batch`` on the same mentions (issue #16, section 3).

    python -m evals.bench_scale                         # all WikiMEL dev mentions (1000), embedded defaults
    python -m evals.bench_scale --sample 10             # a seeded sample (a smoke run)
    python -m evals.bench_scale --configs eval,batch2 --set gate_threshold=0.9 --out my.json

Configurations, each on the same mentions, in this order (``--configs`` picks some):

* ``eval``: :func:`evals.runner.run_eval` as ``i2cr eval`` calls it: one worker process,
  concurrency 1, its own run folder (``report=False``: the report is written after the
  linking and is not timed);
* ``batch1`` / ``batch2``: :func:`evals.batch.link_batch` with 1 and 2 actors, Ray started in
  this process with ``--cpus`` CPUs (default 2), batch size ``--batch-size``; each actor's
  llama.cpp gets ``--cpus`` / actors threads (``$I2CR_LLAMA_THREADS``, unless it is set already:
  by default llama.cpp takes every core in every actor, which oversubscribes the CPUs);
* ``batch2-warm``: ``batch2`` again on the entity-vector store ``batch2`` filled (a rerun, or a
  corpus whose entities were seen before); every other configuration starts from an empty store;
* ``text``: the mentions the gate decided without the LLM in the ``eval`` run, linked again,
  alone, through ``i2cr batch`` with ``--text-actors`` actors (default 2), empty store;
* ``text-kb``: the same mentions, empty store, with a knowledge base that holds their listed
  candidates (``--kb``, default ``kb_entities.jsonl`` beside the data; ingested into the run's
  folder first, timed apart as ``ingest``): listed candidates with a ``qid`` take the KB's stored
  vectors (``tools.kb.share_listed_vectors``), so a mention costs one query embedding. This is a
  corpus linked against a KB ingested once. Every other configuration runs with
  ``$I2CR_KB_VECTORS=off``, so that no KB on the machine changes its figures;
* ``text-kb-onnx``: ``text-kb`` with the embedding model run by ONNX Runtime
  (``embedding_model=onnx:<the model>``, ``tools/onnx_embeddings.py``; its own KB, ingested with it),
  for a ``huggingface:``/``embedded`` embedding model;
* ``text-kb-onnx-int8``: the same with the model's 8-bit weights (``embedding_model=onnx-int8:<the
  model>``; its own KB). Its vectors are close to the float ones, not equal: a few predictions may
  differ from ``eval``'s (its "same as eval" count says how many; the targets' line names the KB
  configuration whose rate it reports, with that count).

Every configuration links with the same graph wrapped in :class:`TimedGraph` (passed to the
runner and to the batch actors as ``evals.bench_scale:timed_graph``): it adds one trace entry per
mention, ``{"step": "bench_timing", ...}``, with the seconds of ``graph.invoke``, the wall-clock
time it ended, the number of LLM calls and the exclusive seconds spent in four places, timed by
wrapping the functions that do the work (:func:`install`): ``embeddings``
(``CachedEmbedder._compute``, the embedding model's forward passes), ``features``
(``tools.fused_linker.candidate_features`` without the embeddings it asks for), ``llm``
(``tools.fused_linker.ask_llm``: the linker model's call) and ``clues``
(``nodes.clue_round._extract``: extracting a clue, without its embeddings/LLM); ``other`` is
the rest of ``graph.invoke`` (retrieval, the graph's own steps, verification). The models' loading
(``tools.models._load``, ``tools.embeddings._load``, ``tools.llama_cpp_chat.shared_llama``: once per process, in its first mentions) is
timed too and taken out of the per-mention seconds and the shares (reported as ``load_s``); it
stays inside the wall-clock spans below. A batch's
embedding call (``warm_embeddings``, outside ``graph.invoke``) is added to the next mention's
``embeddings`` and to its seconds. The store: the wrapper points the process's entity-vector
store at ``$I2CR_BENCH_STORE`` (a file of this run's temporary folder), so "cold" is an
empty store without touching the user's cache.

Figures per configuration:

* mentions/s, steady state: (n - 1) / (last end - first end), the ends being the wall-clock
  times at which mentions finished (model loading and Ray start left out; they are reported
  as ``wall_s``, the whole call). Interval (95%): the per-mention seconds (invoke + batch share)
  are bootstrapped (2000 draws); each draw's rate is ``steady rate × sum(seconds) / sum(draw)``:
  the variability of the mention mix at the configuration's measured parallel efficiency (for
  ``eval`` this is the bootstrap of 1 / mean seconds, scaled by the run's overhead between mentions);
* mentions/s of the text-decided and LLM-asked mentions from their per-mention seconds
  (1 / mean, bootstrap interval) — per process, not across actors;
* peak memory: resident set size of this process and all its descendants (the eval worker;
  Ray's own processes and its actors), sampled every 0.25 s (:class:`RssSampler`), and of the
  linking processes alone (the eval worker, the ``Linker`` actors); a sum counts pages shared
  between processes (the model file mapped by several actors) once per process;
* Top-1 (Wilson 95% interval), and the predictions identical to ``eval``'s (the ids that differ,
  with both answers);
* time shares (above), summed over the mentions.

Also the load average at the start and end, the CPU model and cores. The issue's targets are
printed beside: >= 50 mentions/s text-decided, >= 3 mentions/s overall, Top-1 unchanged.
Raw JSON: ``evals/results/bench_scale.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evals.machine import machine
from evals.metrics import wilson as wilson_interval

RESULTS = Path(__file__).resolve().parent / "results" / "bench_scale.json"
CONFIGS = ("eval", "batch1", "batch2", "batch2-warm", "text", "text-kb", "text-kb-onnx", "text-kb-onnx-int8")
KB_CONFIGS = ("text-kb", "text-kb-onnx", "text-kb-onnx-int8")
"""The text-decided configurations whose entity vectors come from a knowledge base."""
TEXT_CONFIGS = ("text", *KB_CONFIGS)
# the suffix of a KB configuration's re-run of the mentions it decided without the LLM (when another embedding
# model moved the gate for some of eval's text-decided mentions)
OWN = "/own"
"""The configurations that re-link the mentions ``eval`` decided without the LLM."""
CATEGORIES = ("embeddings", "features", "llm", "clues")
TARGETS = {"text_decided_mps": 50.0, "overall_mps": 3.0}
STORE_ENV = "I2CR_BENCH_STORE"
THREADS_ENV = "I2CR_LLAMA_THREADS"
KB_VECTORS_ENV = "I2CR_KB_VECTORS"
TIMING_STEP = "bench_timing"


# ---- statistics -----------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.96) -> dict[str, Any]:
    """Share ``k / n`` and its Wilson score interval (``evals.metrics.wilson``) as a record (``None``
    fields when ``n`` is 0)."""
    if n <= 0:
        return {"k": k, "n": n, "p": None, "lo": None, "hi": None}
    lo, hi = wilson_interval(k, n, z)
    return {"k": k, "n": n, "p": k / n, "lo": lo, "hi": hi}


def _draw_sums(seconds: list[float], seed: int, draws: int) -> Any:
    import numpy as np

    a = np.asarray(seconds, dtype=float)
    rng = np.random.default_rng(seed)
    return a[rng.integers(0, len(a), (draws, len(a)))].sum(axis=1)


def rate_interval(seconds: list[float], seed: int = 0, draws: int = 2000) -> dict[str, Any]:
    """Mentions/s of one process linking one mention after another: 1 / mean seconds, bootstrap 95% interval."""
    seconds = [s for s in seconds if s is not None]
    if not seconds or sum(seconds) <= 0:
        return {"n": len(seconds), "rate": None, "lo": None, "hi": None, "mean_s": None}
    import numpy as np

    n = len(seconds)
    rates = n / _draw_sums(seconds, seed, draws)
    return {"n": n, "rate": n / sum(seconds), "lo": float(np.percentile(rates, 2.5)),
            "hi": float(np.percentile(rates, 97.5)), "mean_s": sum(seconds) / n}


def steady_rate(ends: list[float]) -> float | None:
    """Mentions/s between the first and the last mention to finish: (n - 1) / span (``None`` below 2)."""
    ends = sorted(e for e in ends if e is not None)
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return None
    return (len(ends) - 1) / (ends[-1] - ends[0])


def throughput(ends: list[float], seconds: list[float], seed: int = 0, draws: int = 2000) -> dict[str, Any]:
    """Steady wall-clock mentions/s and its interval: the bootstrap of the per-mention seconds at the
    measured parallel efficiency (each draw: ``rate × sum(seconds) / sum(draw)``)."""
    rate = steady_rate(ends)
    seconds = [s for s in seconds if s is not None]
    if rate is None or not seconds or sum(seconds) <= 0:
        return {"n": len(ends), "rate": rate, "lo": None, "hi": None, "parallelism": None}
    import numpy as np

    total = sum(seconds)
    rates = rate * total / _draw_sums(seconds, seed, draws)
    span = (len(ends) - 1) / rate
    return {"n": len(ends), "rate": rate, "lo": float(np.percentile(rates, 2.5)),
            "hi": float(np.percentile(rates, 97.5)), "parallelism": total * (len(ends) - 1) / len(ends) / span}


def diff_predictions(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """How many ids of ``reference`` got the same answer in ``other`` ({qid, name} or None each);
    the ids that differ with both answers, and the ids ``other`` lacks."""
    def key(ent: Any) -> Any:
        return None if not ent else (ent.get("qid"), ent.get("name"))

    same, differs, missing = 0, [], []
    for rid, ent in reference.items():
        if rid not in other:
            missing.append(rid)
        elif key(ent) == key(other[rid]):
            same += 1
        else:
            differs.append({"id": rid, "eval": ent, "other": other[rid]})
    return {"compared": len(reference) - len(missing), "identical": same, "differs": differs, "missing": missing}


def time_shares(timings: list[dict]) -> dict[str, Any]:
    """Seconds and share of the total per category, ``other`` = the rest of the linking time; the
    models' loading (``load``, once per process) is left out of the total and reported apart."""
    load = sum(float((t.get("parts") or {}).get("load", 0.0)) for t in timings)
    total = sum(float(t.get("seconds") or 0.0) for t in timings) - load
    secs = {c: sum(float((t.get("parts") or {}).get(c, 0.0)) for t in timings) for c in CATEGORIES}
    secs["other"] = max(0.0, total - sum(secs.values()))
    return {"total_s": total, "load_s": load, "seconds": secs,
            "share": {c: (v / total if total > 0 else None) for c, v in secs.items()}}


# ---- memory ---------------------------------------------------------------------------------

def _proc_rss(pid: int) -> int:
    """Resident bytes of ``pid`` from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _proc_children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat), without psutil."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


LINKER_PROCESSES = ("Linker", "evals.worker")
"""Command lines (Ray sets an actor's to ``ray::MapWorker(MapBatches(Linker))``) of the processes that link."""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def tree_rss(pid: int, match: tuple[str, ...] = LINKER_PROCESSES) -> dict[str, int]:
    """Resident bytes of ``pid`` and its descendants: ``total``, ``driver`` (``pid`` itself), ``largest_child``,
    and ``linkers`` (the descendants whose command line holds one of ``match``)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency of ray
        psutil = None
    own, kids = 0, []
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            own = root.memory_info().rss
            for child in root.children(recursive=True):
                try:
                    kids.append((child.memory_info().rss, " ".join(child.cmdline())))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    else:
        own = _proc_rss(pid)
        kids = [(_proc_rss(c), _cmdline(c)) for c in _proc_children(pid)]
    return {"total": own + sum(r for r, _ in kids), "driver": own, "largest_child": max((r for r, _ in kids), default=0),
            "linkers": sum(r for r, cmd in kids if any(m in cmd for m in match))}


class RssSampler:
    """Samples the resident memory of a process tree in a thread; ``with RssSampler() as s: ...; s.peak``.

    Each figure's peak is taken on its own (the peaks of ``total`` and ``linkers`` may be at different times).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.25, match: tuple[str, ...] = LINKER_PROCESSES):
        self.pid, self.interval, self.match = pid or os.getpid(), interval, match
        self.peak = {"total": 0, "driver": 0, "largest_child": 0, "linkers": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        for k, v in tree_rss(self.pid, self.match).items():
            self.peak[k] = max(self.peak[k], v)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def as_dict(self) -> dict[str, Any]:
        return {**{f"{k}_mb": round(v / 2**20, 1) for k, v in self.peak.items()},
                "samples": self.samples, "interval_s": self.interval}


# ---- instrumentation (in whichever process links) -------------------------------------------

_stack = threading.local()
_lock = threading.Lock()
_installed = False
_current: dict[str, float] | None = None  # the mention being linked (one at a time per process)
_pending: dict[str, float] = {}  # time spent outside graph.invoke (a batch's embedding call)


def _add(category: str, seconds: float) -> None:
    with _lock:
        bucket = _current if _current is not None else _pending
        bucket[category] = bucket.get(category, 0.0) + seconds


def timed(category: str, fn: Any) -> Any:
    """``fn`` wrapped to add its exclusive time (minus that of the timed calls inside it) to ``category``."""
    if getattr(fn, "_bench_timed", False):
        return fn

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        frames = _stack.__dict__.setdefault("frames", [])
        frames.append(0.0)  # the time of timed calls nested inside this one
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t
            nested = frames.pop()
            _add(category, max(0.0, elapsed - nested))
            if frames:
                frames[-1] += elapsed

    functools.update_wrapper(wrapper, fn)  # name, doc, __wrapped__ (and an lru_cache's cache_clear)
    for attr in ("cache_clear", "cache_info"):
        if hasattr(fn, attr):
            setattr(wrapper, attr, getattr(fn, attr))
    wrapper._bench_timed = True  # type: ignore[attr-defined]
    return wrapper


def _bench_store(spec: Any, base_url: Any = None) -> Any:
    """The entity-vector store of this benchmark: ``$I2CR_BENCH_STORE`` (a SQLite file, or ``off``)."""
    from tools.embeddings import SqliteByteStore

    path = os.environ.get(STORE_ENV, "")
    if not path or path == "off":
        return None
    return SqliteByteStore(Path(path))


def install() -> None:
    """Wrap the functions that embed, compute features, ask the LLM and extract clues (once per process);
    point the entity-vector store at ``$I2CR_BENCH_STORE`` when it is set."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    from nodes import clue_round
    from tools import embeddings, fused_linker, models

    models._load = timed("load", models._load)  # a model's loading (once per process): left out of the figures
    embeddings._load = timed("load", embeddings._load)
    try:  # the embedded GGUF is loaded on the model's first call, not when the model object is made
        from tools import llama_cpp_chat

        llama_cpp_chat.shared_llama = timed("load", llama_cpp_chat.shared_llama)
    except ImportError:  # pragma: no cover - no llama.cpp runtime here
        pass
    embeddings.CachedEmbedder._compute = timed("embeddings", embeddings.CachedEmbedder._compute)
    fused_linker.candidate_features = timed("features", fused_linker.candidate_features)
    fused_linker.ask_llm = timed("llm", fused_linker.ask_llm)
    clue_round._extract = timed("clues", clue_round._extract)
    if os.environ.get(STORE_ENV):
        embeddings.vector_store_for = _bench_store


class TimedGraph:
    """The packaged graph (or ``graph``), adding a ``bench_timing`` entry to each mention's trace."""

    def __init__(self, graph: Any = None):
        self._graph = graph

    @property
    def graph(self) -> Any:
        if self._graph is None:
            from graph import graph

            self._graph = graph
        return self._graph

    def invoke(self, inputs: dict, context: Any = None, **kwargs: Any) -> dict:
        global _current, _pending
        install()
        with _lock:
            before, _pending = _pending, {}
            _current = dict(before)  # a batch's embedding call counts for the mention after it
        t = time.perf_counter()
        try:
            out = self.graph.invoke(inputs, context=context, **kwargs)
        finally:
            seconds = time.perf_counter() - t + sum(before.values())
            with _lock:
                parts, _current = _current or {}, None
        out = dict(out)
        usage = out.get("usage") or {}
        out["trace"] = [*(out.get("trace") or []), {
            "step": TIMING_STEP, "seconds": round(seconds, 6), "end": time.time(), "pid": os.getpid(),
            "before_s": round(sum(before.values()), 6), "llm_calls": int(usage.get("llm_calls", 0) or 0),
            "parts": {k: round(v, 6) for k, v in parts.items()}}]
        return out


def timed_graph() -> TimedGraph:
    """What the runner's worker and the batch actors load (``graph="evals.bench_scale:timed_graph"``): the
    packaged graph, timed; the wrappers are installed here, before the actor's first embedding call."""
    install()
    return TimedGraph()


GRAPH_REF = "evals.bench_scale:timed_graph"


def timing_of(trace: list[dict] | None) -> dict | None:
    """The ``bench_timing`` entry of a mention's trace."""
    return next((t for t in reversed(trace or []) if t.get("step") == TIMING_STEP), None)


# ---- the configurations ---------------------------------------------------------------------

@contextmanager
def _env(**values: str) -> Any:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def ray_session(cpus: int, env: dict[str, str]) -> Any:
    """A local Ray session with ``cpus`` CPUs whose workers see ``env``; an existing session is used as it is
    (then ``env`` reaches the actors only if it did already: the result notes it)."""
    import ray

    if ray.is_initialized():
        yield False
        return
    path = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, **env}})
    try:
        yield True
    finally:
        ray.shutdown()


def _row(rid: str, entity: Any, error: Any, timing: dict | None, gold: Any) -> dict[str, Any]:
    from evals.metrics import match

    return {"id": rid, "entity": None if not entity else {"qid": entity.get("qid"), "name": entity.get("name")},
            "error": error, "correct": None if gold is None else bool(match(entity, gold)) and not error,
            "seconds": None if timing is None else timing["seconds"] - (timing.get("parts") or {}).get("load", 0.0),
            "end": None if timing is None else timing["end"],
            "llm": None if timing is None else timing["llm_calls"] > 0,
            "llm_calls": None if timing is None else timing["llm_calls"], "timing": timing}


def run_eval_config(data: Path, labels: str | None, run_dir: Path, ctx: Any, gold: dict[str, Any],
                    store: str, progress: bool) -> tuple[list[dict], dict[str, Any]]:
    """``i2cr eval`` (one worker process, concurrency 1) over the mentions of ``data``."""
    from evals.runner import run_eval
    from evals.store import read_predictions

    with _env(**{STORE_ENV: store, KB_VECTORS_ENV: "off"}), RssSampler() as mem:
        t = time.perf_counter()
        summary = run_eval(str(data), labels, run_dir, context=ctx, concurrency=1, progress=progress,
                           report=False, graph=GRAPH_REF, fail_fast=0, max_failure_share=None)
        wall = time.perf_counter() - t
    recs, _ = read_predictions(run_dir)
    rows = [_row(r["id"], r.get("prediction"), r.get("error"), timing_of(r.get("trace")), gold.get(r["id"]))
            for r in recs]
    return rows, {"wall_s": wall, "memory": mem.as_dict(), "worker_restarts": summary.get("worker_restarts"),
                  "llama_threads_per_actor": os.environ.get(THREADS_ENV) or os.cpu_count()}


ONNX_CONFIGS = {"text-kb-onnx": "onnx", "text-kb-onnx-int8": "onnx-int8"}
"""The KB configurations that run the embedding model on ONNX Runtime, and their provider."""


def onnx_spec(spec: Any, provider: str = "onnx") -> str | None:
    """The ``onnx:`` (or ``onnx-int8:``, ``provider``) form of an embedding spec (``embedded`` ->
    ``onnx:embedded``; ``onnx:X`` <-> ``onnx-int8:X``); ``None`` when it has none."""
    if not isinstance(spec, str):
        return None
    if spec == "embedded":
        return f"{provider}:embedded"
    head, sep, name = spec.partition(":")
    if sep and head in ("huggingface", "onnx", "onnx-int8"):
        return f"{provider}:{name}"
    return None


def ingest_kb(entities: Path, folder: Path, ctx: Any, log: Any) -> tuple[Any, dict[str, Any]]:
    """A KB of ``entities`` in ``folder`` (made with the linker's embedding model); the context pointing
    to it, and the ingest's figures (done once per KB, so timed apart from the linking)."""
    from tools.kb import KnowledgeBase

    log(f"[bench_scale] ingesting {entities} into {folder.name} ({ctx.embedding_model}) ...")
    t = time.perf_counter()
    stats = KnowledgeBase(path=folder, embeddings=ctx.embedding_model, base_url=ctx.openai_base_url,
                          api_key=ctx.openai_api_key).ingest_file(entities)
    wall = time.perf_counter() - t
    return ctx.model_copy(update={"kb_path": str(folder), "kb_host": None}), {
        "entities": str(entities), "seconds": round(wall, 1), "added": stats.added,
        "entities_per_s": round(stats.added / wall, 1) if wall > 0 else None}


def run_batch_config(data: Path, out_dir: Path, ctx: Any, gold: dict[str, Any], *, actors: int, cpus: int,
                     batch_size: int, store: str, progress: bool,
                     kb_vectors: str = "off") -> tuple[list[dict], dict[str, Any]]:
    """``i2cr batch`` with ``actors`` actors over the mentions of ``data`` (Ray started here)."""
    from evals.batch import link_batch, read_results

    threads = os.environ.get(THREADS_ENV) or str(max(1, cpus // actors))
    env = {STORE_ENV: store, THREADS_ENV: threads, KB_VECTORS_ENV: kb_vectors}
    with _env(**env), RssSampler() as mem:
        t = time.perf_counter()
        with ray_session(cpus, env) as own:
            summary = link_batch(data, out_dir, context=ctx, concurrency=actors, batch_size=batch_size,
                                 graph=GRAPH_REF, trace=True, progress=progress)
        wall = time.perf_counter() - t
    rows = [_row(r["id"], r.get("entity"), r.get("error"), timing_of(r.get("trace")), gold.get(r["id"]))
            for r in read_results(out_dir)]
    return rows, {"wall_s": wall, "memory": mem.as_dict(), "ray_started_here": own, "errors": summary["errors"],
                  "llama_threads_per_actor": int(threads) if threads.isdigit() else threads}


def summarize(name: str, rows: list[dict], extra: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """The figures of one configuration from its rows."""
    ok = [r for r in rows if not r["error"] and r["seconds"] is not None]
    text = [r["seconds"] for r in ok if not r["llm"]]
    llm = [r["seconds"] for r in ok if r["llm"]]
    scored = [r for r in rows if r["correct"] is not None]
    return {"name": name, "n": len(rows), "errors": sum(bool(r["error"]) for r in rows),
            "throughput": throughput([r["end"] for r in ok], [r["seconds"] for r in ok], seed=seed),
            "per_process": rate_interval([r["seconds"] for r in ok], seed=seed),
            "text_decided": rate_interval(text, seed=seed), "llm_asked": rate_interval(llm, seed=seed),
            "top1": wilson(sum(bool(r["correct"]) for r in scored), len(scored)),
            "time": time_shares([r["timing"] for r in ok]), **extra}


# ---- the run --------------------------------------------------------------------------------

def select_records(data: Path, labels: str | None, sample: int | None, seed: int) -> tuple[dict, dict, list]:
    """The raw records of the chosen mentions (as the runner chooses them), their gold answers, their ids."""
    from evals.datasets import load_dataset
    from evals.runner import select
    from tools.files import read_json_file

    ds = load_dataset(str(data), labels)
    chosen = [ex for ex in select(ds.examples, sample=sample, seed=seed) if ex.inputs is not None]
    raw = read_json_file(data, "data")
    if not isinstance(raw, dict):
        from tools.errors import InputError

        raise InputError(f"data: {data} must be an I2CR {{id: record}} dataset (WikiMEL, RichpediaMEL, WikiDiverse)")
    records = {ex.id: raw[ex.id] for ex in chosen if ex.id in raw}
    return records, {ex.id: ex.gold for ex in chosen}, [ex.id for ex in chosen]


def write_subset(records: dict, ids: list[str], path: Path) -> Path:
    """An I2CR dataset file of the records ``ids`` (the same input for eval and batch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({i: records[i] for i in ids}, ensure_ascii=False), encoding="utf-8")
    return path


def benchmark(data: Path, labels: str | None, ctx: Any, *, sample: int | None = None, seed: int = 0,
              configs: tuple[str, ...] = CONFIGS, cpus: int = 2, batch_size: int = 16, text_actors: int = 2,
              workdir: Path | None = None, progress: bool = False, log: Any = print,
              kb: Path | None = None) -> dict[str, Any]:
    """Run the configurations on the same mentions; the raw results (see the module's doc)."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        from tools.errors import InputError

        raise InputError(f"--configs: unknown {unknown}; expected some of {list(CONFIGS)}")
    if set(TEXT_CONFIGS) & set(configs) and "eval" not in configs:
        from tools.errors import InputError

        raise InputError("--configs: 'text' and 'text-kb' need 'eval' (they link the mentions eval decided "
                         "without the LLM)")
    if set(KB_CONFIGS) & set(configs) and not (kb and Path(kb).is_file()):
        from tools.errors import InputError

        raise InputError(f"--kb: 'text-kb' needs the knowledge base's entities (JSONL): {kb} is not a file")
    tmp = tempfile.TemporaryDirectory(prefix="bench-scale-") if workdir is None else None
    work = Path(tmp.name if tmp else workdir)
    try:
        records, gold, ids = select_records(data, labels, sample, seed)
        subset = write_subset(records, ids, work / "mentions.json")
        labels_file = None
        if labels:
            from tools.files import read_json_file

            raw_labels = read_json_file(labels, "labels")
            labels_file = work / "mentions_label.json"
            labels_file.write_text(json.dumps({i: raw_labels[i] for i in ids if i in raw_labels},
                                              ensure_ascii=False), encoding="utf-8")
        result: dict[str, Any] = {"data": str(data), "mentions": len(ids), "sample": sample, "seed": seed,
                                  "cpus": cpus, "batch_size": batch_size, "machine": machine(),
                                  "loadavg_start": list(os.getloadavg()), "configs": {}, "started": time.time()}
        rows_of: dict[str, list[dict]] = {}
        stores = {c: str(work / f"store-{c}.sqlite") for c in configs}
        stores["batch2-warm"] = stores.get("batch2", str(work / "store-batch2.sqlite"))
        for name in configs:
            log(f"[bench_scale] {name}: {len(ids)} mentions ...")
            if name == "eval":
                rows, extra = run_eval_config(subset, labels_file and str(labels_file), work / "eval-run", ctx, gold, stores[name],
                                              progress)
                extra["store"] = "cold (empty at the start)"
            elif name in TEXT_CONFIGS:
                text_ids = [r["id"] for r in rows_of["eval"] if r["llm"] is False and not r["error"]]
                extra = {"store": "cold (empty at the start)", "actors": text_actors,
                         "source": "a re-run through i2cr batch of the mentions eval decided without the LLM"}
                if not text_ids:
                    log(f"[bench_scale] {name}: eval decided no mention without the LLM; skipped")
                    result["configs"][name] = {"name": name, "n": 0, "skipped": "no text-decided mention", **extra}
                    continue
                part = write_subset(records, text_ids, work / "text.json")
                run_ctx, vectors = ctx, "off"
                if name in KB_CONFIGS:
                    if name in ONNX_CONFIGS:
                        spec = onnx_spec(ctx.embedding_model, ONNX_CONFIGS[name])
                        if spec is None:
                            result["configs"][name] = {"name": name, "n": 0, **extra, "skipped":
                                                       f"no {ONNX_CONFIGS[name]}: form of {ctx.embedding_model!r}"}
                            continue
                        run_ctx = ctx.model_copy(update={"embedding_model": spec})
                        extra["embedding_model"] = spec
                    run_ctx, extra["ingest"] = ingest_kb(kb, work / name, run_ctx, log)
                    extra["source"] += f"; listed candidates' vectors from a KB of {kb.name}"
                    vectors = "on"
                rows, more = run_batch_config(part, work / f"out-{name}", run_ctx, gold, actors=text_actors,
                                              cpus=cpus, batch_size=batch_size, store=stores[name],
                                              progress=progress, kb_vectors=vectors)
                extra.update(more)
                own = [r["id"] for r in rows if r["llm"] is False and not r["error"]]
                if name in KB_CONFIGS and 0 < len(own) < len(rows):
                    # another embedding model moves the gate: a few of eval's text-decided mentions ask the
                    # LLM here (each actor then loads it). Its own text-decided mentions, run again alone:
                    own_name = f"{name}{OWN}"
                    log(f"[bench_scale] {own_name}: {len(rows) - len(own)} of {len(rows)} asked the LLM; "
                        f"the {len(own)} it decided alone, again ...")
                    own_rows, own_extra = run_batch_config(
                        write_subset(records, own, work / f"own-{name}.json"), work / f"out-{own_name}", run_ctx,
                        gold, actors=text_actors, cpus=cpus, batch_size=batch_size,
                        store=str(work / f"store-{name}-own.sqlite"), progress=progress, kb_vectors=vectors)
                    own_extra.update(store="cold (empty at the start)", actors=text_actors,
                                     embedding_model=extra.get("embedding_model"),
                                     source=f"a re-run of the mentions {name} decided without the LLM (same KB)")
                    rows_of[own_name] = own_rows
                    result["configs"][own_name] = summarize(own_name, own_rows, own_extra, seed=seed)
                    log(f"[bench_scale] {own_name}: done in {own_extra['wall_s']:.1f} s")
            else:
                actors = 1 if name == "batch1" else 2
                if name == "batch2-warm" and not Path(stores[name]).is_file():
                    log("[bench_scale] batch2-warm: no store from batch2 (run batch2 first): it starts cold")
                rows, extra = run_batch_config(subset, work / f"out-{name}", ctx, gold, actors=actors, cpus=cpus,
                                               batch_size=batch_size, store=stores[name], progress=progress)
                extra.update(actors=actors, store="warm (filled by batch2)" if name == "batch2-warm"
                             else "cold (empty at the start)")
            rows_of[name] = rows
            result["configs"][name] = summarize(name, rows, extra, seed=seed)
            log(f"[bench_scale] {name}: done in {extra['wall_s']:.1f} s")
        if "eval" in rows_of:
            ref = {r["id"]: r["entity"] for r in rows_of["eval"]}
            for name, rows in rows_of.items():
                if name != "eval":
                    part_ref = {i: e for i, e in ref.items() if name.removesuffix(OWN) not in TEXT_CONFIGS
                                or i in {r["id"] for r in rows}}
                    result["configs"][name]["same_as_eval"] = diff_predictions(part_ref, {r["id"]: r["entity"]
                                                                                         for r in rows})
            result["text_decided_ids"] = [r["id"] for r in rows_of["eval"] if r["llm"] is False and not r["error"]]
        result["loadavg_end"] = list(os.getloadavg())
        result["rows"] = {n: [{k: v for k, v in r.items() if k != "timing"} | {"parts": (r["timing"] or {}).get("parts")}
                              for r in rows] for n, rows in rows_of.items()}
        result["targets"] = targets(result)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def fastest_kb_config(configs: dict[str, Any]) -> str | None:
    """The :data:`KB_CONFIGS` configuration of ``configs`` (a result's) with the highest measured rate, if any
    (a configuration's re-run of its own text-decided mentions, ``<name>/own``, included)."""
    rates = {n: ((configs.get(n) or {}).get("throughput") or {}).get("rate")
             for n in (*KB_CONFIGS, *(f"{c}{OWN}" for c in KB_CONFIGS))}
    return max((n for n in rates if rates[n]), key=lambda n: rates[n], default=None)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against the measured figures (``None`` when a configuration was not run)."""
    cfg = result["configs"]
    text = (cfg.get("text") or {}).get("throughput", {}).get("rate")
    kb_best = fastest_kb_config(cfg)
    text_kb = cfg[kb_best]["throughput"]["rate"] if kb_best else None
    overall = max((c.get("throughput", {}).get("rate") or 0.0 for n, c in cfg.items()
                   if n in ("batch1", "batch2")), default=0.0) or None  # cold store: no help from an earlier run
    ev = cfg.get("eval") or {}
    same = [c["same_as_eval"] for n, c in cfg.items() if n.startswith("batch") and "same_as_eval" in c]
    top1 = {n: c["top1"]["p"] for n, c in cfg.items() if "top1" in c and n != "text"}
    return {"text_decided_mps": {"target": TARGETS["text_decided_mps"], "measured": text,
                                 "today": (ev.get("text_decided") or {}).get("rate"),
                                 "met": None if text is None else text >= TARGETS["text_decided_mps"],
                                 "measured_kb": text_kb, "kb_config": kb_best,
                                 "kb_same_as_eval": _same(cfg[kb_best]) if kb_best else None,
                                 "met_kb": None if text_kb is None else text_kb >= TARGETS["text_decided_mps"]},
            "overall_mps": {"target": TARGETS["overall_mps"], "measured": overall,
                            "today": (ev.get("throughput") or {}).get("rate"),
                            "met": None if overall is None else overall >= TARGETS["overall_mps"]},
            "top1_unchanged": {"top1": top1, "identical": [f"{s['identical']}/{s['compared']}" for s in same],
                               "met": (None if not same or "eval" not in cfg else
                                       all(not s["differs"] and not s["missing"] for s in same))}}


# ---- printing -------------------------------------------------------------------------------

def _rate(s: dict | None) -> str:
    if not s or s.get("rate") is None:
        return "-"
    if s.get("lo") is None:
        return f"{s['rate']:.2f}"
    return f"{s['rate']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"


def table(result: dict[str, Any]) -> str:
    """The markdown table of a result."""
    lines = [f"{result['mentions']} mentions of {Path(result['data']).name}; {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores; Ray CPUs {result['cpus']}, batch size {result['batch_size']}; "
             f"load average {result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end", "",
             "| config | store | mentions/s (steady, 95%) | text-decided /s per process | LLM-asked /s per process "
             "| peak RSS MB (all / linking processes) | Top-1 [95%] | same as eval | embeddings | features | LLM "
             "| clues | other | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in result["configs"].items():
        if c.get("skipped"):
            lines.append(f"| {name} | {c.get('store', '')} | skipped: {c['skipped']} |" + " |" * 11)
            continue
        t = c["top1"]
        top1 = "-" if t["p"] is None else f"{t['p']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]"
        same = c.get("same_as_eval")
        same_s = "-" if not same else f"{same['identical']}/{same['compared']}"
        share = c["time"]["share"]
        pct = {k: "-" if v is None else f"{100 * v:.0f}%" for k, v in share.items()}
        mem = c["memory"]
        lines.append(f"| {name} | {c['store'].split(' ')[0]} | {_rate(c['throughput'])} | {_rate(c['text_decided'])} "
                     f"(n={c['text_decided']['n']}) | {_rate(c['llm_asked'])} (n={c['llm_asked']['n']}) | "
                     f"{mem['total_mb']:.0f} / {mem['linkers_mb']:.0f} | {top1} | {same_s} | "
                     f"{pct['embeddings']} | {pct['features']} | {pct['llm']} | {pct['clues']} | {pct['other']} | "
                     f"{c['wall_s']:.0f} |")
    tg = result["targets"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines += ["", "Targets (issue #16):",
              f"- text-decided >= {tg['text_decided_mps']['target']:.0f} mentions/s: measured "
              f"{fmt(tg['text_decided_mps']['measured'])} (config text, every entity embedded) -> "
              f"{_met(tg['text_decided_mps']['met'])}; {fmt(tg['text_decided_mps'].get('measured_kb'))} (config "
              f"{tg['text_decided_mps'].get('kb_config')}, entity vectors from the KB; predictions as eval's: "
              f"{tg['text_decided_mps'].get('kb_same_as_eval') or '-'}) -> {_met(tg['text_decided_mps'].get('met_kb'))}; today "
              f"{fmt(tg['text_decided_mps']['today'])} (eval, per process)",
              f"- overall >= {tg['overall_mps']['target']:.0f} mentions/s: measured {fmt(tg['overall_mps']['measured'])} "
              f"(best cold batch), today {fmt(tg['overall_mps']['today'])} (eval) -> {_met(tg['overall_mps']['met'])}",
              f"- Top-1 unchanged: {tg['top1_unchanged']['top1']}; identical predictions "
              f"{tg['top1_unchanged']['identical']} -> {_met(tg['top1_unchanged']['met'])}"]
    for name, c in result["configs"].items():
        for d in (c.get("same_as_eval") or {}).get("differs", []):
            lines.append(f"  - {name} differs on {d['id']}: eval {_ent(d['eval'])}, {name} {_ent(d['other'])}")
    return "\n".join(lines)


def _same(c: dict[str, Any]) -> str | None:
    """``identical/compared`` of a configuration's predictions against eval's (``None``: not compared)."""
    same = c.get("same_as_eval")
    return f"{same['identical']}/{same['compared']}" if same else None


def _met(v: Any) -> str:
    return "not measured" if v is None else "met" if v else "NOT met"


def _ent(e: Any) -> str:
    return "nil" if not e else f"{e.get('name')} ({e.get('qid')})"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the raw JSON."""
    from evals.common import data_dir, default_labels, run_main

    p = argparse.ArgumentParser(prog="python -m evals.bench_scale", description=__doc__.split("\n")[0],
                                epilog="See the module's documentation and docs/scale-out.md.")
    p.add_argument("data", nargs="?", default=None, help="I2CR dataset (default: WikiMEL dev in the data folder)")
    p.add_argument("--labels", help="gold labels (default: <data>_label.json beside it)")
    p.add_argument("--sample", type=int, help="a seeded sample of this many mentions (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {','.join(CONFIGS)}")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray session (default 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--text-actors", type=int, default=2, help="actors of the text-decided run (default 2)")
    p.add_argument("--kb", help="entities JSONL of the text-kb configuration (default: kb_entities.jsonl beside the data)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workdir", help="keep the run folders here (default: a temporary folder, removed)")
    p.add_argument("--progress", action="store_true", help="show the runs' progress bars")
    p.add_argument("--out", default=str(RESULTS), help=f"raw JSON (default {RESULTS})")
    a = p.parse_args(argv)
    if (a.sample is not None and a.sample < 1) or a.cpus < 1 or a.batch_size < 1 or a.text_actors < 1:
        p.error("--sample, --cpus, --batch-size and --text-actors must be positive")
    configs = tuple(c.strip() for c in a.configs.split(",") if c.strip())
    if any(c in ("batch2", "batch2-warm", *TEXT_CONFIGS) for c in configs) and a.cpus < 2:
        p.error("--cpus must be at least 2 for the 2-actor configurations")

    def run() -> int:
        from graph.context import Context, parse_settings

        data = Path(a.data) if a.data else data_dir() / "wikimel" / "WikiMEL_dev.json"
        if not data.is_file():
            from tools.errors import InputError

            raise InputError(f"data: file not found: {data} (set I2CR_DATA_DIR or pass the dataset)")
        labels = a.labels or default_labels(data)
        ctx = Context(**parse_settings(a.settings)) if a.settings else Context()
        result = benchmark(data, labels, ctx, sample=a.sample, seed=a.seed, configs=configs, cpus=a.cpus,
                           batch_size=a.batch_size, text_actors=a.text_actors,
                           workdir=Path(a.workdir) if a.workdir else None, progress=a.progress,
                           log=lambda m: print(m, file=sys.stderr, flush=True),
                           kb=Path(a.kb) if a.kb else data.parent / "kb_entities.jsonl")
        result["settings"] = a.settings
        print(table(result))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        print(f"wrote {a.out}")
        return 0

    return run_main("bench_scale", run)


if __name__ == "__main__":
    sys.exit(main())
