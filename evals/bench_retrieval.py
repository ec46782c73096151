"""Benchmark of KB retrieval (``tools/kb.py``): quality on WikiMEL, then scale.

Quality — WikiMEL dev (1000 mentions, KB of 15,066 entities): Recall@1/5/10/50
of the hybrid retriever (and of its dense-only and lexical-only halves), gold
matched by name, beside the recall of the benchmark's own 10-candidate lists;
ingest throughput, query latency p50/p95, on-disk size, peak RSS.

Scale — synthetic KBs of generated names/descriptions with random 384-d
vectors (the embedder is replaced by a random one to isolate the index):
ingest time, query p50/p95, disk, memory for each size.

Every measured phase runs in its own subprocess so peak RSS belongs to it.

    python -m evals.bench_retrieval wikimel   [--data DIR] [--workdir /tmp/i2cr_bench] [--embedding-model embedded]

``--data`` is the WikiMEL folder (``WikiMEL_dev.json``, its labels, ``kb_entities.jsonl``); default
``$I2CR_DATA_DIR/wikimel``, else ``../shared/data/wikimel`` beside the repository (``evals/common.py``).
    python -m evals.bench_retrieval synthetic [--sizes 10000,100000,1000000]
    python -m evals.bench_retrieval all       # both, then the markdown tables
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from evals.common import data_dir, default_labels, defaults, run_main

WORKDIR = Path("/tmp/i2cr_bench")


class RandomEmbeddings(Embeddings):
    """Random unit vectors of ``dim`` dimensions (near-free: isolates the index from the embedder)."""

    def __init__(self, dim: int = 384, seed: int = 0):
        self.dim, self.rng = dim, np.random.default_rng(seed)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        v = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def du_mb(path: Path) -> float:
    """Size on disk of a directory tree, MiB."""
    return sum(f.stat().st_blocks * 512 for f in Path(path).rglob("*") if f.is_file()) / 2**20


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(values, q)) if values else float("nan")


# ------------------------------------------------------------------ phases ----
def phase_wikimel_ingest(a: argparse.Namespace) -> dict[str, Any]:
    """Ingest the WikiMEL KB (then again, unchanged): throughput, disk, peak RSS."""
    from tools.kb import KnowledgeBase

    path = Path(a.workdir) / "wikimel_kb"
    shutil.rmtree(path, ignore_errors=True)
    kb = KnowledgeBase(path=path, embeddings=a.embedding_model)
    kb.embeddings  # load the model outside the timed part
    t = time.perf_counter()
    stats = kb.ingest_file(Path(a.data) / "kb_entities.jsonl", batch_size=a.batch_size, progress=True)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    again = kb.ingest_file(Path(a.data) / "kb_entities.jsonl", batch_size=a.batch_size)
    out = {"entities": kb.count(), "added": stats.added, "ingest_s": dt, "ingest_per_s": stats.added / dt,
           "reingest_s": time.perf_counter() - t, "reingest_unchanged": again.unchanged,
           "disk_mb": du_mb(path), "peak_rss_mb": peak_rss_mb()}
    (Path(a.workdir) / "wikimel.ingest.json").write_text(json.dumps(out))
    return out


def phase_wikimel_query(a: argparse.Namespace) -> dict[str, Any]:
    """Recall@k of each retriever on WikiMEL dev, and query latency."""
    from tools.kb import KnowledgeBase, query_text

    data = json.loads((Path(a.data) / "WikiMEL_dev.json").read_text())
    labels = json.loads(Path(default_labels(Path(a.data) / "WikiMEL_dev.json")
                             or Path(a.data) / "WikiMEL_dev_label.json").read_text())
    kb = KnowledgeBase(path=Path(a.workdir) / "wikimel_kb", embeddings=a.embedding_model)
    ks = (1, 5, 10, 50)
    hits = {m: {k: 0 for k in ks} for m in ("hybrid", "dense", "lexical")}
    lists = 0
    lat: list[float] = []
    emb: list[float] = []
    kb.search("warm up", "", k=10)
    dump = []
    for key, ex in data.items():
        gold = labels[key]
        lists += any(c["name"] == gold for c in ex["Candentity"])
        t = time.perf_counter()  # the query embedding, timed apart (search() reuses it from its cache)
        kb._query_vector(query_text(ex["mention"], ex["mention_context"]))
        emb.append((time.perf_counter() - t) * 1000)
        for mode in hits:
            t = time.perf_counter()  # k=10 with the default depth: what the graph's retrieval node does
            res = kb.search(ex["mention"], ex["mention_context"], k=10, mode=mode)
            if mode == "hybrid":
                lat.append((time.perf_counter() - t) * 1000)
                if a.dump:
                    dump.append({"id": key, "gold": gold, "rows": kb.search(
                        ex["mention"], ex["mention_context"], k=1000, mode="hybrid", depth=100)})
            names = [r["name"] for r in res]
            names50 = [r["name"] for r in kb.search(ex["mention"], ex["mention_context"], k=50, mode=mode)]
            for k in ks:
                hits[mode][k] += gold in (names if k <= 10 else names50)[:k]
    if a.dump:
        Path(a.dump).write_text(json.dumps(dump))
    n = len(data)
    return {"mentions": n, "lists_recall": lists / n,
            "recall": {m: {k: v / n for k, v in h.items()} for m, h in hits.items()},
            "search_p50_ms": pct(lat, 50), "search_p95_ms": pct(lat, 95),
            "embed_p50_ms": pct(emb, 50), "embed_p95_ms": pct(emb, 95), "peak_rss_mb": peak_rss_mb()}


SYL = ["ka", "ro", "mi", "ta", "na", "ke", "shi", "lo", "ber", "an", "son", "vi", "el", "dra", "mar",
       "tin", "go", "ra", "le", "us", "jo", "han", "sen", "ov", "ich", "ez", "ma", "ri", "ko", "da"]
JOBS = ["politician", "actor", "footballer", "painter", "singer", "writer", "lawyer", "physicist", "monk"]


def synthetic_records(n: int, seed: int = 1):
    """``n`` entity records with generated names and descriptions (deterministic)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        parts = rng.integers(0, len(SYL), size=6)
        first = "".join(SYL[p] for p in parts[:2]).capitalize()
        last = "".join(SYL[p] for p in parts[2:2 + 2 + i % 3]).capitalize()
        name = f"{first} {last}"
        yield {"qid": f"S{i}", "name": name,
               "desc": f"Name: {name}. Birth: {1800 + i % 200}. Occupation: {JOBS[i % len(JOBS)]}."}


def phase_syn_ingest(a: argparse.Namespace) -> dict[str, Any]:
    """Ingest a synthetic KB of ``a.size`` entities (random vectors): time, disk, peak RSS."""
    from tools.kb import KnowledgeBase

    path = Path(a.workdir) / f"syn_{a.size}"
    done = Path(a.workdir) / f"syn_{a.size}.ingest.json"
    before: dict[str, Any] = {"ingest_s": 0.0, "added": 0, "sittings": 0}
    if a.resume and path.is_dir() and done.is_file():  # continue a stopped ingest: unchanged rows are skipped
        before.update({"sittings": 1, **json.loads(done.read_text())})
    else:
        shutil.rmtree(path, ignore_errors=True)
    kb = KnowledgeBase(path=path, embeddings=RandomEmbeddings())
    t = time.perf_counter()

    def records():  # stop early (at a batch boundary) after --max-seconds, if given
        for i, rec in enumerate(synthetic_records(a.size)):
            if a.max_seconds and i % a.batch_size == 0 and time.perf_counter() - t > a.max_seconds:
                return
            yield rec

    stats = kb.ingest(records(), batch_size=a.batch_size, total=a.size, progress=bool(a.progress))
    dt = time.perf_counter() - t
    added, total_s = before["added"] + stats.added, before["ingest_s"] + dt
    out = {"size": a.size, "added": added, "reached": kb.count(), "ingest_s": total_s,
           "ingest_per_s": added / total_s, "disk_mb": du_mb(path), "peak_rss_mb": peak_rss_mb(),
           "sittings": before["sittings"] + 1, "last_sitting_per_s": stats.added / dt}
    (Path(a.workdir) / f"syn_{a.size}.ingest.json").write_text(json.dumps(out))
    return out


def phase_syn_query(a: argparse.Namespace) -> dict[str, Any]:
    """Query latency and surname recall on a synthetic KB."""
    from tools.kb import KnowledgeBase

    kb = KnowledgeBase(path=Path(a.workdir) / f"syn_{a.size}", embeddings=RandomEmbeddings(seed=7))
    t = time.perf_counter()
    kb.search("warm up", "", k=10)
    first = (time.perf_counter() - t) * 1000
    rng = np.random.default_rng(3)
    picks = set(rng.integers(0, kb.count(), size=a.queries).tolist())
    recs = [r for i, r in enumerate(synthetic_records(max(picks) + 1)) if i in picks]
    lat, found = [], 0
    for r in recs:
        mention = r["name"].split()[-1]
        t = time.perf_counter()
        res = kb.search(mention, "a person mentioned in the news", k=10)
        lat.append((time.perf_counter() - t) * 1000)
        found += any(x["qid"] == r["qid"] for x in res)
    return {"size": a.size, "entities": kb.count(), "queries": len(recs), "first_query_ms": first,
            "query_p50_ms": pct(lat, 50),
            "query_p95_ms": pct(lat, 95), "surname_recall10": found / len(recs), "peak_rss_mb": peak_rss_mb()}


PHASES = {"wikimel-ingest": phase_wikimel_ingest, "wikimel-query": phase_wikimel_query,
          "syn-ingest": phase_syn_ingest, "syn-query": phase_syn_query}


# ----------------------------------------------------------------- driver ----
def run_phase(name: str, a: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; return its JSON result."""
    cmd = [sys.executable, "-m", "evals.bench_retrieval", "--phase", name, "--workdir", str(a.workdir),
           "--data", str(a.data), "--embedding-model", a.embedding_model, "--batch-size", str(a.batch_size),
           "--queries", str(a.queries)]
    for k, v in extra.items():
        cmd += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    if a.dump and name == "wikimel-query":
        cmd += ["--dump", a.dump]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode:  # the phase printed its own one-line error on stderr: stop with its status, no traceback
        raise SystemExit(proc.returncode)
    out = proc.stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def tables(res: dict[str, Any]) -> str:
    """The markdown tables of the results."""
    lines = []
    if "wikimel" in res:
        w, q = res["wikimel"]["ingest"], res["wikimel"]["query"]
        lines += ["R@1/5/10 from the k=10 search the graph does (default depth), R@50 from a k=50 search.", "",
                  "| retriever (WikiMEL dev, 1000 mentions, 15,066-entity KB) | R@1 | R@5 | R@10 | R@50 |",
                  "|---|---|---|---|---|"]
        for m in ("hybrid", "dense", "lexical"):
            r = q["recall"][m]
            lines.append(f"| {m} | {r['1']:.1%} | {r['5']:.1%} | {r['10']:.1%} | {r['50']:.1%} |")
        lines += [f"| benchmark's own 10-candidate lists | | | {q['lists_recall']:.1%} | |", "",
                  f"ingest {w['added']} entities in {w['ingest_s']:.1f} s ({w['ingest_per_s']:.0f} entities/s, "
                  f"embedding included); re-ingest (all unchanged) {w['reingest_s']:.1f} s; disk {w['disk_mb']:.0f} MiB; "
                  f"peak RSS ingest {w['peak_rss_mb']:.0f} MiB, query {q['peak_rss_mb']:.0f} MiB; "
                  f"query embedding p50 {q['embed_p50_ms']:.0f} ms (p95 {q['embed_p95_ms']:.0f}); hybrid search "
                  f"given the embedding p50 {q['search_p50_ms']:.1f} ms (p95 {q['search_p95_ms']:.1f})", ""]
    if res.get("synthetic"):
        lines += ["| entities | ingest s | ingest entities/s | query p50 ms | query p95 ms | first query ms "
                  "| disk MiB | peak RSS ingest MiB | peak RSS query MiB | surname R@10 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in res["synthetic"]:
            i, q = s["ingest"], s["query"]
            size = f"{i['size']:,}" if i.get("reached", i["size"]) >= i["size"] else \
                f"{i['reached']:,} of {i['size']:,} (stopped)"
            lines.append(f"| {size} | {i['ingest_s']:.0f} | {i['ingest_per_s']:.0f} | {q['query_p50_ms']:.1f} "
                         f"| {q['query_p95_ms']:.1f} | {q['first_query_ms']:.0f} | {i['disk_mb']:.0f} "
                         f"| {i['peak_rss_mb']:.0f} | {q['peak_rss_mb']:.0f} | {q['surname_recall10']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, each phase in its own process; print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=("wikimel", "synthetic", "all"), default="all")
    p.add_argument("--data", default=None, help="WikiMEL folder (default: $I2CR_DATA_DIR/wikimel, "
                   "else ../shared/data/wikimel beside the repository)")
    p.add_argument("--workdir", default=str(WORKDIR))
    p.add_argument("--embedding-model", default=None, help="default: the embedding_model setting")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--reuse", action="store_true", help="keep KBs already ingested in --workdir (query phases only)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--dump", default=None, help="write WikiMEL per-mention candidate scores here (tuning)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=0,
                   help="stop each synthetic ingest after this long (0 = never) and measure what was reached")
    p.add_argument("--resume", action="store_true",
                   help="continue a synthetic ingest stopped by --max-seconds or a kill (times add up)")
    p.add_argument("--progress", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.data = str(a.data or data_dir() / "wikimel")
    if a.embedding_model is None:
        model = defaults().embedding_model
        a.embedding_model = model if isinstance(model, str) else "embedded"
    if a.phase:
        print(json.dumps(PHASES[a.phase](a)))
        return 0
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    if a.what in ("wikimel", "all"):
        done = Path(a.workdir) / "wikimel.ingest.json"
        ing = (json.loads(done.read_text()) if a.reuse and done.exists() and (Path(a.workdir) / "wikimel_kb").is_dir()
               else run_phase("wikimel-ingest", a))
        res["wikimel"] = {"ingest": ing, "query": run_phase("wikimel-query", a)}
    if a.what in ("synthetic", "all"):
        res["synthetic"] = []
        for size in [int(s) for s in a.sizes.split(",") if s.strip()]:
            done = Path(a.workdir) / f"syn_{size}.ingest.json"
            ing = (json.loads(done.read_text()) if a.reuse and done.exists()
                   else run_phase("syn-ingest", a, size=size, progress=1, **{"max-seconds": a.max_seconds},
                                  **({"resume": True} if a.resume else {})))
            res["synthetic"].append({"ingest": ing, "query": run_phase("syn-query", a, size=size)})
            if a.out:
                Path(a.out).write_text(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(tables(res))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench_retrieval", main))
