"""Shared services under concurrent clients on loopback, and the projection to 10 million mentions
(issue #16, section 3).

    python -m evals.bench_servers                                   # Chroma + LLM server, 1,2,4,8 clients
    python -m evals.bench_servers --kb-size 300 --clients 1,2 --queries 40 --llm-calls 4   # a small check
    python -m evals.bench_servers --skip-llm --kb-path ~/.local/share/i2cr/kb  # an already ingested KB
    python -m evals.bench_servers --project-only --scale evals/results/bench_scale.json

Measured (this script starts and stops each server itself: a subprocess on a free 127.0.0.1
port, waited for, killed in ``finally``):

* **Chroma** (``chroma run --path DIR --host 127.0.0.1 --port P``) holding a knowledge base:
  ``--kb-path DIR`` (a folder ``i2cr kb ingest`` wrote), else a seeded subset of ``--kb-size``
  entities of ``<data>/wikimel/kb_entities.jsonl`` ingested through the server with the
  project's :class:`tools.kb.KnowledgeBase` (the entities of the queried mentions' candidates
  first, then random ones). The query is the graph's retrieve step,
  ``KnowledgeBase.search(mention, context, k=top_k)``, for seeded WikiMEL dev mentions, from
  1, 2, 4, 8 client threads (each its own client). Two figures per client count:
  ``server``: the query vectors computed beforehand (what the Chroma server and the fusion
  cost), ``retrieve``: the query embedded in the client thread too, as the retrieve node does.
* **LLM server** (``python -m llama_cpp.server``, the embedded Qwen GGUF of
  :func:`tools.embedded_llm.embedded_gguf_path` or ``--model PATH``): linker calls/s through
  the project's ``openai:`` path (:func:`tools.fused_linker.ask_llm` with ``llm_scoring=auto``:
  the likelihood route of :mod:`tools.choice` when the server passes its probe, else lettered
  choices; the route taken is recorded), from the same client counts.

Both run on the machine the clients run on (2 cores here): the clients' CPU competes with the
server's, so these are lower bounds for a server on its own machine.

Projected (printed apart): core-hours for 10 million mentions, actors per core and per model
server, and the first bottleneck — from the per-core rate that ``evals.bench_scale`` measured
(``--scale JSON``, default ``evals/results/bench_scale.json``; or ``--per-core-rate`` and the
other flags) and the service rates above. See :func:`project`.
Raw JSON: ``evals/results/bench_servers.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "bench_servers.json"
SCALE = Path(__file__).resolve().parent / "results" / "bench_scale.json"
MENTIONS = 10_000_000


# ---- servers --------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nothing listens on now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess in its own process group: started, waited for (``ready_url`` answers), always stopped."""

    def __init__(self, name: str, cmd: list[str], ready_url: str, log: Path, *, timeout: float = 180.0,
                 env: dict[str, str] | None = None):
        self.name, self.cmd, self.ready_url, self.log_path, self.timeout = name, cmd, ready_url, log, timeout
        self.env = env
        self.proc: subprocess.Popen | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def __enter__(self) -> Server:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        from tools.errors import ConfigError

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"{self.name}: the server exited with status {self.proc.returncode} "
                                  f"({' '.join(self.log().split())[-300:]})")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise ConfigError(f"{self.name}: not ready on {self.ready_url} after {self.timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def chroma_command(path: Path, port: int) -> list[str]:
    """``chroma run`` (the chromadb CLI beside this Python, else on PATH)."""
    exe = Path(sys.executable).with_name("chroma")
    cli = str(exe) if exe.exists() else shutil.which("chroma")
    if not cli:
        from tools.errors import ConfigError

        raise ConfigError("the chroma command is not installed (pip install chromadb)")
    return [cli, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]


def llm_command(model: Path, port: int, *, n_threads: int, n_ctx: int, alias: str) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on ``model``."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
            "--seed", "0"]


# ---- clients --------------------------------------------------------------------------------

def percentile(xs: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation, numpy's default), ``None`` when empty."""
    import numpy as np

    return float(np.percentile(xs, q)) if len(xs) else None


def run_clients(clients: int, items: list[Any], work: Callable[[int, Any], Any],
                setup: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """``items`` shared among ``clients`` threads (round robin); each calls ``work(state, item)``.

    ``setup(i)`` builds a thread's state before the clock starts. Returns calls/s over the wall
    time, the latencies' p50/p95 and the errors (``work`` raising counts one, with its first message).
    """
    states = [setup(i) if setup else i for i in range(clients)]
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def loop(i: int) -> None:
        barrier.wait()
        for item in items[i::clients]:
            t = time.perf_counter()
            try:
                work(states[i], item)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                continue
            lat[i].append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    flat = [x for xs in lat for x in xs]
    return {"clients": clients, "calls": len(flat), "wall_s": wall, "per_s": len(flat) / wall if wall > 0 else None,
            "p50_s": percentile(flat, 50), "p95_s": percentile(flat, 95), "errors": len(errors),
            "first_error": errors[0] if errors else None}


def sample_mentions(data: Path, n: int, seed: int) -> list[dict]:
    """``n`` seeded mentions (inputs) of a dataset that have two or more candidates."""
    from evals.datasets import load_dataset

    exs = [ex.inputs for ex in load_dataset(str(data), None).examples
           if ex.inputs and len(ex.inputs.get("candidates") or []) > 1]
    random.Random(seed).shuffle(exs)
    return exs[:n]


def kb_subset(kb_file: Path, mentions: list[dict], size: int, seed: int) -> list[dict]:
    """``size`` entity records: the candidates of ``mentions`` first, then seeded random ones."""
    wanted = {c.get("qid") for m in mentions for c in m.get("candidates") or [] if isinstance(c, dict)}
    first, rest = [], []
    with open(kb_file, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                (first if rec.get("qid") in wanted else rest).append(rec)
    random.Random(seed).shuffle(rest)
    return (first + rest)[:size] if size >= len(first) else first[:size]


def bench_chroma(a: argparse.Namespace, mentions: list[dict], work: Path, log: Callable[[str], None]) -> dict:
    """The Chroma server's queries/s of the retrieve step, per client count."""
    from graph.context import Context
    from tools.kb import KnowledgeBase

    ctx = Context(**_settings(a.settings))
    port = free_port()
    if a.kb_path:
        path, ingest = Path(a.kb_path).expanduser(), None
        if not path.is_dir():
            from tools.errors import InputError

            raise InputError(f"--kb-path: not a folder: {path}")
    else:
        path = work / "kb"
        path.mkdir(parents=True, exist_ok=True)
        kb_file = Path(a.kb_file) if a.kb_file else _data(a) / "wikimel" / "kb_entities.jsonl"
        if not kb_file.is_file():
            from tools.errors import InputError

            raise InputError(f"--kb-file: file not found: {kb_file} (set I2CR_DATA_DIR or pass --kb-file)")
        ingest = kb_subset(kb_file, mentions, a.kb_size, a.seed)
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"server": "chroma run", "path": str(path), "top_k": ctx.top_k}
    with Server("chroma", chroma_command(path, port), f"{url}/api/v2/heartbeat", work / "chroma.log"):
        def kb() -> KnowledgeBase:
            return KnowledgeBase(host="127.0.0.1", port=port, collection=ctx.kb_collection,
                                 embeddings=ctx.embedding_model, base_url=ctx.openai_base_url,
                                 api_key=ctx.openai_api_key)

        if ingest is not None:
            log(f"[bench_servers] chroma: ingesting {len(ingest)} entities through the server ...")
            t = time.perf_counter()
            stats = kb().ingest(ingest, batch_size=256)
            out["ingest"] = {"entities": len(ingest), "seconds": time.perf_counter() - t,
                             "stats": stats.as_dict() if hasattr(stats, "as_dict") else str(stats)}
        out["entities"] = kb().count()
        queries = [(m["mention"], m.get("context") or "") for m in mentions]
        warm = kb()
        t = time.perf_counter()
        vectors = {q: warm._query_vector(q) for q in {_qtext(m, c) for m, c in queries}}
        out["query_embedding_s"] = (time.perf_counter() - t) / max(1, len(vectors))

        def server_state(_: int) -> KnowledgeBase:
            k = kb()
            k._qcache = dict(vectors)  # the query vectors known: only the server and the fusion are timed
            k._collections(create=False)
            return k

        def fresh_state(_: int) -> KnowledgeBase:
            k = kb()
            k._collections(create=False)
            k._embeddings = warm.embeddings  # the model loaded, its vectors not
            return k

        def query(k: KnowledgeBase, q: tuple[str, str]) -> Any:
            return k.search(q[0], q[1], k=ctx.top_k)

        out["server"], out["retrieve"] = [], []
        for c in a.client_counts:
            items = (queries * (1 + a.queries // max(1, len(queries))))[:a.queries]
            r = run_clients(c, items, query, server_state)
            out["server"].append(r)
            log(f"[bench_servers] chroma, {c} clients, vectors given: {r['per_s']:.1f} queries/s "
                f"(p50 {1e3 * (r['p50_s'] or 0):.0f} ms, {r['errors']} errors)")
            if not a.no_retrieve:
                r = run_clients(c, items, query, fresh_state)
                out["retrieve"].append(r)
                log(f"[bench_servers] chroma, {c} clients, query embedded in the client: {r['per_s']:.1f} "
                    f"queries/s (p50 {1e3 * (r['p50_s'] or 0):.0f} ms)")
    return out


def _qtext(mention: str, context: str) -> str:
    from tools.kb import query_text

    return query_text(mention, context)


def bench_llm(a: argparse.Namespace, mentions: list[dict], work: Path, log: Callable[[str], None]) -> dict:
    """The LLM server's linker calls/s through the project's ``openai:`` path, per client count."""
    from graph.context import Context
    from tools.fused_linker import ask_llm
    from tools.linker import load_linker

    model_path = Path(a.model) if a.model else None
    if model_path is None:
        from tools.embedded_llm import embedded_gguf_path

        model_path = embedded_gguf_path()
    if not model_path.is_file():
        from tools.errors import InputError

        raise InputError(f"--model: file not found: {model_path}")
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    cmd = llm_command(model_path, port, n_threads=a.n_threads, n_ctx=a.n_ctx, alias="qwen")
    out: dict[str, Any] = {"server": "llama_cpp.server", "model": str(model_path), "n_threads": a.n_threads,
                           "n_ctx": a.n_ctx, "runs": []}
    log(f"[bench_servers] llm: starting {' '.join(cmd[1:4])} ... on {base}")
    with Server("llama_cpp.server", cmd, f"{base}/models", work / "llm.log", timeout=600):
        ctx = Context(**{**_settings(a.settings), "linker_model": "openai:qwen", "openai_base_url": base,
                         "openai_api_key": "none"})
        model = load_linker(ctx)

        def call(_: Any, m: dict) -> dict:
            _, rec = ask_llm(model, m["mention"], m.get("context") or "", m["candidates"], [],
                             llm_scoring=ctx.llm_scoring, spec=ctx.linker_model, max_desc_chars=ctx.max_desc_chars)
            return rec

        first = call(None, mentions[0])  # the probe (once per server) and the first prompt, outside the timings
        out["route"] = first.get("method")
        out["route_kind"] = ("likelihood (names scored by the server's log-probabilities)" if out["route"] == "likelihood"
                             else "lettered choices (the fallback)")
        try:
            from tools.choice import server_probe

            probe = server_probe(model)
            out["probe"] = {"echo_ok": probe.echo_ok, "offset": probe.offset, "template": probe.template,
                            "reason": probe.reason}
        except Exception as exc:  # noqa: BLE001 - the route above is what counts
            out["probe"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"[bench_servers] llm: route {out['route']}: {out['route_kind']}; probe {out['probe']}")
        for c in a.client_counts:
            items = (mentions * (1 + a.llm_calls // max(1, len(mentions))))[:max(a.llm_calls, c)]
            r = run_clients(c, items, call)
            out["runs"].append(r)
            log(f"[bench_servers] llm, {c} clients: {r['per_s']:.3f} linker calls/s "
                f"(p50 {r['p50_s'] or 0:.2f} s, {r['errors']} errors)")
    return out


# ---- projection -----------------------------------------------------------------------------

def scale_inputs(path: Path | None) -> dict[str, Any] | None:
    """The per-core figures of a ``bench_scale`` result: the best cold batch configuration's steady rate per CPU,
    the text-decided rate per CPU (the faster of ``text-kb``/``text-kb-onnx`` when run: with shared services
    the entity vectors come from the KB; else ``text``), the LLM calls per mention and the LLM-asked share
    (config ``eval``'s rows), the LLM call's mean seconds in-process."""
    if path is None or not path.is_file():
        return None
    res = json.loads(path.read_text(encoding="utf-8"))
    cfg, cpus = res.get("configs", {}), res.get("cpus") or 1
    batches = {n: c for n, c in cfg.items() if n in ("batch1", "batch2") and (c.get("throughput") or {}).get("rate")}
    best = max(batches, key=lambda n: batches[n]["throughput"]["rate"], default=None)
    rows = (res.get("rows") or {}).get("eval") or (res.get("rows") or {}).get(best or "", [])
    ok = [r for r in rows if not r.get("error")]
    llm_rows = [r for r in ok if r.get("llm")]
    # with shared services the KB is a Chroma server holding the entity vectors: its local work is text-kb's
    from evals.bench_scale import fastest_kb_config

    kb_name = fastest_kb_config(cfg)
    text = (cfg.get(kb_name or "text") or {}).get("throughput") or {}
    llm_s = [float((r.get("parts") or {}).get("llm", 0.0)) for r in llm_rows]
    return {"source": str(path), "mentions": res.get("mentions"), "cpus": cpus, "best_batch": best,
            "per_core_rate": batches[best]["throughput"]["rate"] / cpus if best else None,
            "text_rate_per_core": text["rate"] / cpus if text.get("rate") else None,
            "text_rate_source": kb_name or ("text" if text.get("rate") else None),
            "llm_share": len(llm_rows) / len(ok) if ok else None,
            "llm_calls_per_mention": (sum(int(r.get("llm_calls") or 0) for r in ok) / len(ok)
                                      if ok and all("llm_calls" in r for r in ok) else None),
            "llm_s_in_process": sum(llm_s) / len(llm_s) if llm_s else None,
            "loadavg": [res.get("loadavg_start"), res.get("loadavg_end")]}


def project(*, per_core_rate: float, text_rate_per_core: float | None, llm_share: float,
            llm_calls_per_mention: float | None, kb_qps: float | None, llm_calls_s: float | None,
            llm_latency_s: float | None, llm_server_threads: int, kb_queries_per_mention: float = 1.0,
            mentions: int = MENTIONS) -> dict[str, Any]:
    """The 10-million-mention projection (every output is projected; the inputs are measured).

    * embedded models in every actor: ``mentions / per_core_rate`` core-seconds;
    * shared services: an actor's core does the local work (embeddings, features: the text-decided
      rate ``text_rate_per_core``) and waits on the LLM server for the LLM-asked mentions. Per
      mention: local ``1 / text_rate`` s of CPU, plus ``llm_calls`` × the server latency of waiting;
      actors per core = (local + wait) / local. One LLM server answers ``llm_calls_s`` calls/s:
      ``llm_calls_s / llm_calls`` mentions/s, i.e. the local work of that many / text_rate cores;
      one Chroma server ``kb_qps / kb_queries_per_mention`` mentions/s. The first bottleneck is the
      service that feeds the fewest cores. Core-hours with shared services: actor cores plus the LLM
      server's busy threads (its calls × latency at one client × its threads) — the Chroma server's
      CPU is not measured apart (it shared the machine with its clients) and is left out.
    """
    calls = llm_calls_per_mention if llm_calls_per_mention is not None else llm_share
    out: dict[str, Any] = {"mentions": mentions, "embedded": {
        "core_hours": mentions / per_core_rate / 3600, "actors_per_core": 1,
        "note": "every actor holds the embedder and the GGUF; one actor per core"}}
    if not text_rate_per_core:
        out["shared"] = {"note": "no text-decided rate measured: run bench_scale with the text configuration"}
        return out
    local_s = 1.0 / text_rate_per_core
    wait_s = calls * llm_latency_s if llm_latency_s else None
    shared: dict[str, Any] = {"local_s_per_mention": local_s, "llm_calls_per_mention": calls,
                              "wait_s_per_mention": wait_s}
    if wait_s is not None:
        shared["actors_per_core"] = (local_s + wait_s) / local_s
        per_actor_calls = calls / (local_s + wait_s)
        shared["actors_per_llm_server"] = llm_calls_s / per_actor_calls if llm_calls_s else None
    caps = {}
    if llm_calls_s and calls > 0:
        caps["llm_server"] = llm_calls_s / calls
    if kb_qps:
        caps["chroma_server"] = kb_qps / kb_queries_per_mention
    shared["mentions_per_s_one_server"] = caps
    shared["cores_fed_by_one_server"] = {k: v * local_s for k, v in caps.items()}
    shared["first_bottleneck"] = min(caps, key=caps.get) if caps else "the actors' cores"
    actor_core_hours = mentions * local_s / 3600
    llm_busy_h = (mentions * calls / llm_calls_s / 3600) if llm_calls_s else None
    shared["core_hours"] = {"actors": actor_core_hours,
                            "llm_server": None if llm_busy_h is None else llm_busy_h * llm_server_threads,
                            "total": actor_core_hours + (llm_busy_h * llm_server_threads if llm_busy_h else 0.0)}
    shared["servers_needed_for"] = {k: f"{mentions / v / 3600:.1f} server-hours" for k, v in caps.items()}
    out["shared"] = shared
    return out


def projection_text(p: dict[str, Any], inputs: dict[str, Any]) -> str:
    """The projection, marked as such, with its measured inputs."""
    lines = ["", "MEASURED inputs of the projection:"]
    for k, v in inputs.items():
        lines.append(f"  - {k}: {v if not isinstance(v, float) else f'{v:.4g}'}")
    e = p["embedded"]
    lines += ["PROJECTED for 10,000,000 mentions (not measured):",
              f"  - embedded models in every actor: {e['core_hours']:,.0f} core-hours (1 actor per core)"]
    s = p.get("shared") or {}
    if "core_hours" in s:
        ch = s["core_hours"]
        llm = "-" if ch["llm_server"] is None else f"{ch['llm_server']:,.0f}"
        lines.append(f"  - shared LLM + Chroma servers: {ch['total']:,.0f} core-hours "
                     f"(actors {ch['actors']:,.0f}, LLM server threads {llm}; Chroma's CPU not included)")
        if s.get("actors_per_core"):
            lines.append(f"  - actors per core: {s['actors_per_core']:.1f}; actors per LLM server: "
                         f"{s['actors_per_llm_server']:.1f}" if s.get("actors_per_llm_server") else
                         f"  - actors per core: {s['actors_per_core']:.1f}")
        for k, v in s["mentions_per_s_one_server"].items():
            lines.append(f"  - one {k} serves {v:.2f} mentions/s = the local work of "
                         f"{s['cores_fed_by_one_server'][k]:.1f} cores")
        lines.append(f"  - first bottleneck: {s['first_bottleneck']}")
    elif s.get("note"):
        lines.append(f"  - shared services: {s['note']}")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------

def _data(a: argparse.Namespace) -> Path:
    from evals.common import data_dir

    return data_dir(a.data_dir)


def _settings(pairs: list[str]) -> dict[str, Any]:
    from graph.context import parse_settings

    return parse_settings(pairs) if pairs else {}


def main(argv: list[str] | None = None) -> int:
    """Measure the servers, project, print, write the raw JSON."""
    from evals.common import run_main
    from evals.machine import machine

    p = argparse.ArgumentParser(prog="python -m evals.bench_servers", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="data folder (default: $I2CR_DATA_DIR, else ../shared/data)")
    p.add_argument("--clients", default="1,2,4,8", help="client thread counts (default 1,2,4,8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kb-path", help="serve this ingested KB folder instead of ingesting a subset")
    p.add_argument("--kb-file", help="entities to ingest (default <data>/wikimel/kb_entities.jsonl)")
    p.add_argument("--kb-size", type=int, default=2000, help="entities of the ingested subset (default 2000)")
    p.add_argument("--queries", type=int, default=200, help="KB queries per client count (default 200)")
    p.add_argument("--no-retrieve", action="store_true", help="skip the runs that embed the query in the client")
    p.add_argument("--model", help="GGUF for the LLM server (default: the embedded Qwen)")
    p.add_argument("--n-threads", type=int, default=2, help="the LLM server's threads (default 2)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--llm-calls", type=int, default=16, help="linker calls per client count (default 16)")
    p.add_argument("--skip-kb", action="store_true")
    p.add_argument("--skip-llm", action="store_true")
    p.add_argument("--project-only", action="store_true", help="no server: project from --scale and the flags")
    p.add_argument("--scale", default=str(SCALE), help=f"bench_scale's JSON (default {SCALE})")
    p.add_argument("--per-core-rate", type=float, help="mentions/s per core, embedded models (else from --scale)")
    p.add_argument("--text-rate-per-core", type=float, help="text-decided mentions/s per core (else from --scale)")
    p.add_argument("--llm-share", type=float, help="share of mentions that ask the LLM (else from --scale)")
    p.add_argument("--kb-qps", type=float, help="Chroma queries/s (else measured here)")
    p.add_argument("--llm-calls-s", type=float, help="LLM server linker calls/s (else measured here)")
    p.add_argument("--llm-latency-s", type=float, help="LLM server seconds per call at one client (else measured)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    try:
        a.client_counts = [int(x) for x in a.clients.split(",") if x.strip()]
    except ValueError:
        p.error(f"--clients: expected comma-separated numbers, got {a.clients!r}")
    if not a.client_counts or min(a.client_counts) < 1:
        p.error("--clients: expected positive numbers")
    if a.kb_size < 1 or a.queries < 1 or a.llm_calls < 1 or a.n_threads < 1:
        p.error("--kb-size, --queries, --llm-calls and --n-threads must be positive")
    for flag in ("per_core_rate", "text_rate_per_core", "kb_qps", "llm_calls_s", "llm_latency_s"):
        if getattr(a, flag) is not None and getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')}: expected a positive number")
    if a.llm_share is not None and not 0 <= a.llm_share <= 1:
        p.error("--llm-share: expected a number in [0, 1]")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def run() -> int:
        result: dict[str, Any] = {"machine": machine(), "loadavg_start": list(os.getloadavg()),
                                  "clients": a.client_counts, "settings": a.settings}
        if not a.project_only and not (a.skip_kb and a.skip_llm):
            data = _data(a) / "wikimel" / "WikiMEL_dev.json"
            if not data.is_file():
                from tools.errors import InputError

                raise InputError(f"data: file not found: {data} (set I2CR_DATA_DIR or --data-dir)")
            mentions = sample_mentions(data, max(a.queries, a.llm_calls), a.seed)
            with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp:
                if not a.skip_kb:
                    result["chroma"] = bench_chroma(a, mentions[:a.queries], Path(tmp), log)
                if not a.skip_llm:
                    result["llm"] = bench_llm(a, mentions, Path(tmp), log)
        result["loadavg_end"] = list(os.getloadavg())
        result["projection"] = projection(a, result)
        print(report(result))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        print(f"wrote {a.out}")
        return 0

    return run_main("bench_servers", run)


def _best(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r.get("per_s")]
    return max(ok, key=lambda r: r["per_s"]) if ok else None


def projection(a: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """The projection's measured inputs (from this run, ``--scale`` and the flags) and its figures."""
    scale = scale_inputs(Path(a.scale)) if a.scale else None
    chroma = _best((result.get("chroma") or {}).get("server", []))
    runs = (result.get("llm") or {}).get("runs", [])
    llm_best = _best(runs)
    one = next((r for r in runs if r["clients"] == 1 and r.get("p50_s")), None)
    inputs = {
        "per_core_rate": a.per_core_rate or (scale or {}).get("per_core_rate"),
        "text_rate_per_core": a.text_rate_per_core or (scale or {}).get("text_rate_per_core"),
        "llm_share": a.llm_share if a.llm_share is not None else (scale or {}).get("llm_share"),
        "llm_calls_per_mention": None if a.llm_share is not None else (scale or {}).get("llm_calls_per_mention"),
        "kb_qps": a.kb_qps or (chroma or {}).get("per_s"),
        "llm_calls_s": a.llm_calls_s or (llm_best or {}).get("per_s"),
        "llm_latency_s": a.llm_latency_s or (one or {}).get("p50_s"),
        "llm_server_threads": a.n_threads,
        "scale_source": (scale or {}).get("source"),
        "scale_loadavg": (scale or {}).get("loadavg"),
    }
    missing = [k for k in ("per_core_rate", "llm_share") if inputs[k] is None]
    if missing:
        return {"inputs": inputs, "skipped": f"no {', '.join(missing)}: run evals.bench_scale first "
                                             f"(its JSON at --scale) or pass --per-core-rate and --llm-share"}
    figures = project(per_core_rate=inputs["per_core_rate"], text_rate_per_core=inputs["text_rate_per_core"],
                      llm_share=inputs["llm_share"], llm_calls_per_mention=inputs["llm_calls_per_mention"], kb_qps=inputs["kb_qps"],
                      llm_calls_s=inputs["llm_calls_s"], llm_latency_s=inputs["llm_latency_s"],
                      llm_server_threads=a.n_threads)
    return {"inputs": inputs, **figures}


def report(result: dict[str, Any]) -> str:
    """Printed figures: what was measured, then what is projected."""
    m = result["machine"]
    lines = [f"MEASURED on {m['cpu']}, {m['cores']} cores, loopback; load average "
             f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end"]
    ch = result.get("chroma")
    if ch:
        ing = ch.get("ingest")
        lines.append(f"Chroma server ({ch['entities']} entities"
                     + (f", ingested at {ing['entities'] / ing['seconds']:.1f} entities/s" if ing else "")
                     + f"; top_k {ch['top_k']}); queries/s of KnowledgeBase.search:")
        lines += ["| clients | vectors given: q/s | p50 ms | p95 ms | query embedded in client: q/s | p50 ms |",
                  "| --- | --- | --- | --- | --- | --- |"]
        retr = {r["clients"]: r for r in ch.get("retrieve", [])}
        for r in ch["server"]:
            q = retr.get(r["clients"])
            q_rate = "-" if not q else f"{q['per_s']:.1f}"
            q_p50 = "-" if not q else f"{1e3 * (q['p50_s'] or 0):.0f}"
            lines.append(f"| {r['clients']} | {r['per_s']:.1f} | {1e3 * (r['p50_s'] or 0):.0f} | "
                         f"{1e3 * (r['p95_s'] or 0):.0f} | {q_rate} | {q_p50} |")
    llm = result.get("llm")
    if llm:
        lines.append(f"LLM server (llama_cpp.server, {Path(llm['model']).name}, {llm['n_threads']} threads); "
                     f"route: {llm.get('route_kind')} (method {llm.get('route')!r}; probe: {llm.get('probe')}):")
        lines += ["| clients | linker calls/s | p50 s | p95 s | errors |", "| --- | --- | --- | --- | --- |"]
        for r in llm["runs"]:
            lines.append(f"| {r['clients']} | {r['per_s'] or 0:.3f} | {r['p50_s'] or 0:.2f} | {r['p95_s'] or 0:.2f} "
                         f"| {r['errors']} |")
    pr = result["projection"]
    if pr.get("skipped"):
        lines.append(f"\nPROJECTION skipped: {pr['skipped']}")
    else:
        lines.append(projection_text(pr, pr["inputs"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
