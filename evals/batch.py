"""``i2cr batch``: link a whole corpus on Ray Data, durably, from one machine to a cluster.

    python -m evals.batch IN --out OUT [--set KEY=VALUE ...] [--concurrency N] [--cpus-per-actor C]
                          [--batch-size B] [--address ADDR] [--format jsonl|parquet] [--trace] [--images DIR]

    from evals.batch import link_batch
    summary = link_batch("mentions.jsonl", "out/", settings={"linker_model": "openai:qwen"}, concurrency=2)

Input (``IN``): JSON lines in the documented record shape ``{id, mention,
context, image?, candidates?, image_desc?}``, a JSON list of such records, an
I2CR JSON dataset ``{id: record}`` (what :mod:`evals.datasets` loads), or
Parquet (a file or a folder of files, one column per field).

Output (``OUT``, a folder): ``part-*.jsonl`` (or ``part-*.parquet``), one
result per mention ``{id, mention, entity {qid, name}, status, stop_round,
confidence, error[, trace]}``, and ``batch.json`` (the settings of the run).
:func:`read_results` reads them back.

How it runs (see docs/scale-out.md):

* the input is read in blocks by Ray Data (``read_text`` for JSON lines: each
  line is parsed and validated by the actor, so a malformed line becomes a
  result with its reason instead of failing the read; ``read_parquet``);
  an I2CR ``{id: record}`` file is one JSON object that cannot be split, so it
  is converted once into JSON lines in ``OUT/.input/`` (memory: the file once)
  and read from there;
* ``map_batches`` over :class:`Linker`, an actor class that builds the models
  once per actor (``concurrency`` actors, ``num_cpus=cpus_per_actor`` each), and
  links each mention with the same compiled graph and settings as ``i2cr
  link`` / ``i2cr eval``; :meth:`Linker.link_many` is the one place that links
  a batch: its round-1 texts embedded in one call (:func:`warm_embeddings`),
  then the graph per mention (docs/batch-speed.md);
* the driver writes each batch that comes back as one part file, written to a
  temporary name, fsync'd and renamed: a part is in the output whole or not at
  all. Rerunning with the same ``OUT`` reads the ids of the parts (ids only,
  streamed) and skips them, so a killed driver loses the batches in flight
  and doubles none;
* the folder is locked while a run uses it (a second run on it is refused);
* a mention that raises is written with its ``error``; an actor that dies is
  restarted by Ray (``max_restarts``) and its batch retried (``max_task_retries``)
  — its results reach the driver once, so nothing is doubled; a mention during
  which the actor died twice is written as failed (:class:`_DeathLog`).

Local by default: ``ray.init`` inside this process (all cores, no dashboard, worker
logs not forwarded). ``--address`` / ``RAY_ADDRESS`` runs on a cluster; the
package must then be installed on its nodes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evals.worker import MENTION_TIMEOUT, mention_limit
from tools.errors import ConfigError, I2CRError, InputError
from tools.files import read_json_file

CONFIG = "batch.json"
PART_PREFIX = "part-"
FORMATS = ("jsonl", "parquet")
RESULT_FIELDS = ("id", "mention", "entity", "status", "stop_round", "confidence", "error")
MAX_RESTARTS = 3
"""Times Ray restarts a dead actor (then the run fails with Ray's error)."""
MAX_TASK_RETRIES = 3
"""Times a batch whose actor died is sent again."""
MAX_DEATHS = 2
"""Deaths of its actor that a mention may cause; then it is recorded as failed and its batch goes on."""


class BatchError(I2CRError):
    """The Ray run stopped (an actor kept dying, the cluster went away); what was written stays."""


# ---- reading the input ----------------------------------------------------------------------

def input_kind(path: Path) -> str:
    """``parquet``, ``i2cr`` (one ``{id: record}`` object), ``json-list`` or ``jsonl``; ``InputError`` otherwise."""
    if path.is_dir():
        if any(path.glob("*.parquet")):
            return "parquet"
        raise InputError(f"input: {path} is a folder without .parquet files")
    if not path.is_file():
        raise InputError(f"input: file not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    if head.startswith(b"["):
        return "json-list"
    if head.startswith(b"{"):
        # JSON lines hold one object per line; an I2CR file is one object whose values are records
        first = head.split(b"\n", 1)[0]
        try:
            obj = json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "i2cr"
        return "jsonl" if isinstance(obj, dict) and "mention" in obj else "i2cr"
    if not head:
        return "jsonl"
    raise InputError(f"input: {path} is neither JSON lines, a JSON dataset nor Parquet")


def spool_json(path: Path, kind: str, folder: Path) -> Path:
    """Write the records of a one-object JSON file (I2CR ``{id: record}`` or a list) as JSON lines.

    Each line is ``{"id": key, "record": record}`` (I2CR) or the record itself (list).
    Written once, to a temporary name then renamed, and reused while the input is unchanged.
    """
    from evals.runner import _sha256

    digest = _sha256(path)[:16]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{path.stem}-{digest}.jsonl"
    if out.is_file():
        return out
    data = read_json_file(path, "input")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        if kind == "i2cr":
            if not isinstance(data, dict):
                raise InputError(f"input: {path} must hold an I2CR {{id: record}} object")
            for key, rec in data.items():
                fh.write(json.dumps({"id": str(key), "record": rec, "i2cr": True}, ensure_ascii=False) + "\n")
        else:
            if not isinstance(data, list):
                raise InputError(f"input: {path} must hold a JSON list of records")
            for rec in data:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


def parse_line(text: str, *, base: Path, images: Path | None) -> tuple[str, dict | None, str | None]:
    """``(id, graph input or None, error)`` of one JSON line of the input (never raises).

    A record without an ``id`` gets ``h<sha1 of the line>`` (stable across reruns).
    """
    from evals.datasets import _Bad, _example

    line = text.strip()
    fallback = "h" + hashlib.sha1(line.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    try:
        rec: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        rec = _Bad(f"record {fallback}: not valid JSON ({exc.msg})")
    except RecursionError:
        rec = _Bad(f"record {fallback}: JSON nested too deeply to read")
    i2cr = isinstance(rec, dict) and rec.get("i2cr") is True and "record" in rec
    key = str(rec["id"]) if i2cr else None
    if i2cr:
        rec = rec["record"]
    if isinstance(rec, dict):
        rec = {k: v for k, v in rec.items() if k != "gold"}  # linking, not scoring
        if key is None and rec.get("id") not in (None, ""):
            key = str(rec["id"])
    key = fallback if key is None else key
    ex = _example(key, rec, f"record {key!r}", index=0, labels={}, image_dir=images, base=base, i2cr=i2cr)
    return key, ex.inputs, ex.error


def parse_row(row: dict, *, base: Path, images: Path | None) -> tuple[str, dict | None, str | None]:
    """``(id, graph input or None, error)`` of one Parquet row (never raises)."""
    clean = {k: _plain(v) for k, v in row.items() if v is not None}
    if "text" in clean and "mention" not in clean and isinstance(clean["text"], str):
        return parse_line(clean["text"], base=base, images=images)
    return parse_line(json.dumps(clean, ensure_ascii=False, default=str), base=base, images=images)


def _plain(value: Any) -> Any:
    """Arrow/numpy values as JSON values (lists of structs become lists of dicts; nulls dropped)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---- linking (in the actors) ----------------------------------------------------------------

def result_of(rid: str, inputs: dict | None, out: dict | None, error: str | None, *, trace: bool) -> dict:
    """One output record."""
    rec: dict[str, Any] = {"id": rid, "mention": (inputs or {}).get("mention"), "entity": None, "status": None,
                           "stop_round": None, "confidence": None, "error": error}
    if out:
        ent = out.get("entity")
        rec["entity"] = None if ent is None else {"qid": ent.get("qid"), "name": ent.get("name")}
        rec["status"], rec["stop_round"] = out.get("status"), out.get("stop_round")
        rec["confidence"] = _confidence(out, ent)
        if trace:
            rec["trace"] = out.get("trace") or []
    elif trace:
        rec["trace"] = []
    return rec


def _confidence(out: dict, entity: dict | None) -> float | None:
    """The linker's probability of the final entity: its last pick of that entity in the trace."""
    if entity is None:
        return None
    for step in reversed(out.get("trace") or []):
        pick = step.get("pick") or step.get("entity")
        if step.get("confidence") is not None and isinstance(pick, dict) and (
                (pick.get("qid") and pick.get("qid") == entity.get("qid")) or pick.get("name") == entity.get("name")):
            return float(step["confidence"])
    return None


class Linker:
    """A Ray Data actor: builds the graph and models once, then links batches of input rows.

    ``context`` is the pickled :class:`graph.context.Context`; ``graph`` ``None``
    (the packaged graph), ``"module:attribute"`` or a picklable object; ``done`` the
    ids already in the output (skipped). Each batch comes back as two columns,
    ``id`` and ``json`` (the result record), so the driver writes it unchanged.
    """

    def __init__(self, context: bytes, graph: Any, kind: str, base: str, images: str | None, trace: bool,
                 done: Any = None, mention_timeout: float | None = None):
        from evals.worker import load_graph

        self.ctx = pickle.loads(context)
        self.graph = load_graph(graph)
        self.kind, self.base = kind, Path(base)
        self.images = Path(images) if images else None
        self.trace = trace
        if done is not None and type(done).__name__ == "ObjectRef":  # the ids to skip, shared by the actors
            import ray

            done = ray.get(done)
        self.done = done if done is not None else frozenset()
        self._deaths = _DeathLog()
        self.mention_timeout = mention_timeout  # seconds > 0 or None, as link_batch checked it


    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        columns = list(batch)
        n = len(batch[columns[0]]) if columns else 0
        items = []
        for i in range(n):
            if self.kind == "parquet":
                row = {c: batch[c][i] for c in columns}
                items.append(parse_row(row, base=self.base, images=self.images))
            else:
                items.append(parse_line(str(batch["text"][i]), base=self.base, images=self.images))
        items = [it for it in items if it[0] not in self.done]
        recs = self.link_many(items)
        return {"id": [r["id"] for r in recs],
                "json": [json.dumps(r, ensure_ascii=False, default=str) for r in recs]}

    batch_embed = True
    """Embed the texts of a whole batch in one call before linking it (:func:`warm_embeddings`)."""

    def link_many(self, items: list[tuple[str, dict | None, str | None]]) -> list[dict]:
        """Results of a batch ``[(id, inputs or None, parse error)]``, in order; never raises.

        The batch's round-1 texts (every mention's query text, every listed candidate's
        entity text) are embedded first, together (:func:`warm_embeddings`); then the graph
        links each mention as ``i2cr eval`` does, finding those vectors in the embedder's
        memory. The graph stays the one place that decides; only the mentions its gate
        leaves undecided ask the LLM.
        """
        if self.batch_embed:
            warm_embeddings(self.ctx, [inputs for _, inputs, _ in items if inputs is not None])
        return [self.link_one(rid, inputs, error) for rid, inputs, error in items]

    def link_one(self, rid: str, inputs: dict | None, error: str | None) -> dict:
        """The result of one mention: the graph's answer, or the error that stopped it."""
        if inputs is None:
            return result_of(rid, None, None, error, trace=self.trace)
        deaths = self._deaths.deaths.get(rid, 0)
        if deaths >= MAX_DEATHS:
            if self._deaths.hangs.get(rid, 0) >= MAX_DEATHS:
                why = (f"linking this mention took longer than --mention-timeout {self.mention_timeout:g} s "
                       f"{deaths} times (a hang?); the actor was ended and restarted each time; skipped")
            else:
                why = (f"the actor died {deaths} times while linking this mention "
                       "(a crash in a model runtime?); skipped")
            return result_of(rid, inputs, None, why, trace=self.trace)
        self._deaths.start(rid)
        watchdog = self._watchdog(rid)
        try:
            out = self.graph.invoke(dict(inputs), context=self.ctx)
        except I2CRError as exc:
            return result_of(rid, inputs, None, str(exc), trace=self.trace)
        except Exception as exc:  # a bug or an unexpected model failure: record it, keep going
            return result_of(rid, inputs, None, f"{type(exc).__name__}: {exc}", trace=self.trace)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._deaths.end()
        return result_of(rid, inputs, out, None, trace=self.trace)

    def _watchdog(self, rid: str) -> threading.Timer | None:
        """A started timer that ends the actor when ``rid`` runs past :attr:`mention_timeout` (a hang: a native
        call that never returns; Ray restarts the actor). ``None`` without a limit, or with one too long for a
        timer (``inf``): no limit either, as ``i2cr eval`` reads it."""
        if self.mention_timeout is None or self.mention_timeout >= threading.TIMEOUT_MAX:
            return None
        watchdog = threading.Timer(self.mention_timeout, self._hung, args=(rid,))
        watchdog.daemon = True
        watchdog.start()
        return watchdog

    def _hung(self, rid: str) -> None:
        """The watchdog: ``rid`` has run past the timeout. Its death is recorded as a hang, then the process
        ends at once (a thread stuck in native code cannot be stopped otherwise); Ray restarts the actor and
        redoes the batch, and the restarted actor skips ``rid`` after :data:`MAX_DEATHS` such deaths."""
        try:
            self._deaths.hung(rid)
        finally:
            os._exit(3)


def visual_parts(ctx: Any, inp: dict) -> tuple[list[str], list[str]]:
    """The texts the graph embeds for a mention's precomputed image description (no image file), in two
    parts: the offline verifier's image text (round 1: every mention with a description needs it), and
    each clue round's clue text (the clues of ``clue_order`` so far, joined: needed only when the image
    does not back the round-1 answer); made by the same tools the nodes call. Both empty when there is
    an image file (its clues come from models, extracted round by round)."""
    from tools.clues import extract_clue
    from tools.verifiers.text import TextEmbeddingScorer
    from tools.verify import get_scorer

    desc = inp.get("image_desc")
    if not desc or inp.get("image"):
        return [], []
    scorer = get_scorer(ctx)
    verifier = [scorer.image_text(None, desc, ctx)] if isinstance(scorer, TextEmbeddingScorer) else []
    gathered: dict = {}
    clues: list[str] = []
    rounds: list[str] = []
    for clue_type in ctx.clue_order:
        clue = extract_clue(clue_type, image=None, image_desc=desc, ctx=ctx, gathered=gathered)
        if clue is not None and clue.text:
            gathered[clue_type] = clue
            clues.append(clue.text)
            rounds.append(". ".join(clues))
    return [t for t in verifier if t], [t for t in rounds if t]


def visual_texts(ctx: Any, inp: dict) -> list[str]:
    """Both parts of :func:`visual_parts`, the verifier's text first."""
    verifier, rounds = visual_parts(ctx, inp)
    return verifier + rounds


def warm_embeddings(ctx: Any, inputs: list[dict]) -> int:
    """Embed the texts of a batch of mentions at once: their query texts and the mentions alone, their
    listed candidates' entity texts and names alone (the last two for ``name_sim``; entity vectors
    through the persistent cache of ``tools/embeddings.py``, or the knowledge base's stored ones) and
    the offline verifier's text of their precomputed image descriptions (:func:`visual_parts`).

    A mention's clue-round texts are not embedded now: they are handed to the embedder as a group
    (``CachedEmbedder.defer``), embedded together when the mention's first clue round asks for one of
    them. A mention whose image backs its round-1 answer (about a fifth of WikiMEL's text-decided ones)
    never embeds them.

    The graph then finds those vectors in memory (same texts, same embedder); retrieval from a
    knowledge base and the clues of image files embed as before. Returns the number of texts the
    model embedded; a failure here is left to the per-mention linking to report.
    """
    if not inputs or getattr(ctx, "linker_mode", "fused") != "fused":
        return 0
    try:
        from graph.inputs import clip_context, normalize_candidates
        from tools.embeddings import get_embedder
        from tools.kb import share_listed_vectors
        from tools.texts import entity_text, mention_text, name_text, query_text

        queries, entities, listed, later = [], [], [], []
        for inp in inputs:  # the texts as the retrieve node cleans them (a bad record is skipped here)
            try:
                mention, context = inp["mention"].strip(), inp["context"].strip()
                context = clip_context(context, mention, ctx.max_context_chars)[0]
                cands = normalize_candidates(inp.get("candidates"))
            except Exception:  # noqa: BLE001
                continue
            queries += [query_text(mention, context), mention_text(mention)]
            entities += [entity_text(c) for c in cands] + [name_text(c) for c in cands]
            listed += cands
            try:
                verifier, rounds = visual_parts(ctx, inp)
            except Exception:  # noqa: BLE001 - a clue tool's problem is the mention's own to report
                verifier, rounds = [], []
            queries += verifier
            if rounds:
                later.append(rounds)
        share_listed_vectors(listed, ctx)  # one KB lookup for the batch's listed entities
        embedder = get_embedder(ctx.embedding_model, base_url=ctx.openai_base_url, api_key=ctx.openai_api_key)
        for rounds in later:  # a mention's clue texts: together, when its first clue round needs one
            embedder.defer(rounds)
        return embedder.warm(queries, entities)
    except Exception:  # noqa: BLE001 - the mentions' own linking reports the error, one by one
        return 0


class _DeathLog:
    """The mention an actor is linking, kept in a file, so that its restart knows which one killed it.

    The file is in the node's temporary folder, named by the Ray actor id (a restarted
    actor keeps its id): ``{"current": id or null, "deaths": {id: n}}``.
    """

    def __init__(self):
        import tempfile

        try:
            import ray

            name = ray.get_runtime_context().get_actor_id() or f"pid{os.getpid()}"
        except Exception:
            name = f"pid{os.getpid()}"
        folder = Path(tempfile.gettempdir()) / "i2cr-batch"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.json"
        state = {}
        if self.path.is_file():
            try:
                state = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                state = {}
        self.deaths: dict[str, int] = dict(state.get("deaths") or {})
        self.hangs: dict[str, int] = dict(state.get("hangs") or {})  # those of the deaths its watchdog caused
        if state.get("current") is not None:  # this actor died while linking it
            self.deaths[state["current"]] = self.deaths.get(state["current"], 0) + 1
        self._save(None)

    def _save(self, current: str | None) -> None:
        tmp = self.path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"current": current, "deaths": self.deaths, "hangs": self.hangs}), encoding="utf-8")
        os.replace(tmp, self.path)

    def hung(self, rid: str) -> None:
        """``rid`` ran past the timeout: its coming death is a hang (the restart counts the death itself)."""
        self.hangs[rid] = self.hangs.get(rid, 0) + 1
        self._save(rid)

    def start(self, rid: str) -> None:
        self._save(rid)

    def end(self) -> None:
        self._save(None)


# ---- the output folder ----------------------------------------------------------------------

def part_files(out: Path) -> list[Path]:
    """The committed part files of an output folder (temporary files excluded)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name.startswith(PART_PREFIX) and p.suffix in (".jsonl", ".parquet"))


def done_ids(out: Path) -> set[str]:
    """The ids already written in ``out`` (read streaming: the ids column / each line's id)."""
    ids: set[str] = set()
    for part in part_files(out):
        if part.suffix == ".parquet":
            import pyarrow.parquet as pq

            ids.update(str(x) for x in pq.read_table(part, columns=["id"]).column("id").to_pylist())
        else:
            with open(part, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        ids.add(str(json.loads(line)["id"]))
    return ids


def read_results(out: str | Path) -> Iterator[dict]:
    """Every result record of an output folder, part by part (streamed)."""
    for part in part_files(Path(out)):
        if part.suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(part).iter_batches():
                for row in batch.to_pylist():
                    if row.get("trace") is not None:
                        row["trace"] = json.loads(row["trace"])
                    yield row
        else:
            with open(part, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(out: Path, name: str, records: list[dict], fmt: str, *, trace: bool) -> Path:
    """Write ``records`` as one part file: to a temporary name, fsync'd, then renamed (atomic)."""
    final = out / f"{PART_PREFIX}{name}.{fmt}"
    tmp = out / f".tmp-{name}.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [pa.field("id", pa.string()), pa.field("mention", pa.string()),
                  pa.field("entity", pa.struct([("qid", pa.string()), ("name", pa.string())])),
                  pa.field("status", pa.string()), pa.field("stop_round", pa.int64()),
                  pa.field("confidence", pa.float64()), pa.field("error", pa.string())]
        if trace:
            fields.append(pa.field("trace", pa.string()))
        rows = [{**{k: r.get(k) for k in RESULT_FIELDS},
                 **({"trace": json.dumps(r.get("trace") or [], ensure_ascii=False, default=str)} if trace else {})}
                for r in records]
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    else:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(out)
    return final


def _check_config(out: Path, config: dict) -> None:
    """Refuse to resume a folder written with other settings or another format."""
    path = out / CONFIG
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            for key in ("input", "format", "settings", "trace"):
                if old.get(key) != config.get(key):
                    raise ConfigError(f"--out {out}: holds a run with another {key} "
                                      f"({json.dumps(old.get(key), default=str)[:200]}); use a new folder")
            return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


# ---- the run --------------------------------------------------------------------------------

def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("i2cr batch needs Ray: pip install 'i2cr[ray]' (ray[data])") from None
    return ray


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start Ray in this process; ``True`` if started here.

    A Ray session already running in this process is used as it is.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as exc:
            raise ConfigError(f"--address {address}: cannot connect to the Ray cluster "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        return True
    # the workers import this code from the driver's path (a source checkout needs no install)
    path = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


def _map(ds: Any, ray: Any, *, concurrency: int, cpus_per_actor: float, batch_size: int, max_restarts: int,
         max_task_retries: int, ctor: dict) -> Any:
    """``map_batches`` over :class:`Linker`: ``concurrency`` actors of ``cpus_per_actor`` CPUs each, whose
    native libraries use that many threads (:func:`actor_env`)."""
    return ds.map_batches(Linker, batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_actor,
                          compute=ray.data.ActorPoolStrategy(size=concurrency), fn_constructor_kwargs=ctor,
                          max_restarts=max_restarts, max_task_retries=max_task_retries,
                          runtime_env={"env_vars": actor_env(cpus_per_actor)})


def actor_env(cpus_per_actor: float, environ: Any = None) -> dict[str, str]:
    """Thread counts for an actor's native libraries: the CPUs Ray reserved for it (at least 1), so that N
    actors on a node do not each start one llama.cpp/torch thread per core. ``I2CR_LLAMA_THREADS`` and
    ``OMP_NUM_THREADS`` already set in the driver's environment win."""
    environ = os.environ if environ is None else environ
    n = str(max(1, int(cpus_per_actor)))
    return {k: environ.get(k) or n for k in ("I2CR_LLAMA_THREADS", "OMP_NUM_THREADS")}


def link_batch(inp: str | Path, out: str | Path, *, settings: dict | None = None, context: Any = None,
               concurrency: int = 1, cpus_per_actor: float = 1.0, batch_size: int = 16,
               address: str | None = None, fmt: str | None = None, trace: bool = False,
               images: str | Path | None = None, graph: Any = None, progress: bool = True,
               max_restarts: int = MAX_RESTARTS, max_task_retries: int = MAX_TASK_RETRIES,
               mention_timeout: float | None = MENTION_TIMEOUT) -> dict[str, Any]:
    """Link every mention of ``inp`` into the folder ``out`` on Ray Data; resumable. Returns a summary.

    ``settings`` are :class:`graph.context.Context` fields (as ``--set`` gives them),
    or ``context`` a ready ``Context`` (its objects must be picklable and importable
    by the actors). ``fmt`` is the output format (``jsonl`` default, ``parquet``).
    ``mention_timeout``: seconds one mention may take before its actor is ended and restarted
    (a hang); twice, and the mention is recorded as failed (0 or ``None``: no limit).
    """
    from evals.runner import context_settings
    from graph.context import Context

    ctx = context if isinstance(context, Context) else Context(**(settings or {}))
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InputError(f"--concurrency: expected a positive number, got {concurrency}")
    if not cpus_per_actor or cpus_per_actor <= 0:
        raise InputError(f"--cpus-per-actor: expected a positive number, got {cpus_per_actor}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size: expected a positive number, got {batch_size}")
    mention_timeout = mention_limit(mention_timeout)
    inp, out = Path(inp), Path(out)
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images: not a folder: {images}")
    kind = input_kind(inp)
    fmt = fmt or next((p.suffix[1:] for p in part_files(out)), "jsonl")
    if fmt not in FORMATS:
        raise InputError(f"--format: expected one of {list(FORMATS)}, got {fmt!r}")
    if any(p.suffix[1:] != fmt for p in part_files(out)):
        raise ConfigError(f"--out {out}: holds parts of another format than {fmt}")
    from evals.worker import graph_ref

    graph = graph_ref(graph)
    try:
        context_blob = pickle.dumps(ctx)
        pickle.dumps(graph)
    except Exception as exc:
        raise ConfigError(f"the settings cannot be sent to the Ray actors (not picklable: {exc})") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    from evals.store import RunLock

    with RunLock(out):  # a second run on the same folder is refused (it would link and write every id again)
        _check_config(out, {"input": str(inp.resolve()), "format": fmt, "trace": trace,
                            "settings": context_settings(ctx)})
        return _run(ctx_blob=context_blob, graph=graph, inp=inp, out=out, kind=kind, fmt=fmt, trace=trace,
                    images=images, address=address, progress=progress, concurrency=concurrency,
                    cpus_per_actor=cpus_per_actor, batch_size=batch_size, max_restarts=max_restarts,
                    max_task_retries=max_task_retries, mention_timeout=mention_timeout)


def _run(*, ctx_blob: bytes, graph: Any, inp: Path, out: Path, kind: str, fmt: str, trace: bool, images: Any,
         address: str | None, progress: bool, concurrency: int, cpus_per_actor: float, batch_size: int,
         max_restarts: int, max_task_retries: int, mention_timeout: float | None = None) -> dict[str, Any]:
    """:func:`link_batch` once the output folder is locked and its settings checked."""
    for stale in out.glob(".tmp-*"):  # a part a killed run did not finish
        stale.unlink(missing_ok=True)

    ray = _ray()
    started = start_ray(address)
    try:
        from ray.data import DataContext

        cpus = float(ray.cluster_resources().get("CPU", 0))
        if concurrency * cpus_per_actor > cpus:
            raise InputError(f"--concurrency {concurrency} x --cpus-per-actor {cpus_per_actor:g} needs "
                             f"{concurrency * cpus_per_actor:g} CPUs; the Ray cluster has {cpus:g}: lower one of them")
        dctx = DataContext.get_current()
        dctx.enable_progress_bars = progress
        dctx.max_errored_blocks = 0
        done = done_ids(out)
        done_ref = ray.put(frozenset(done))  # held here for the whole run: a restarted actor reads it again
        source = inp
        if kind in ("i2cr", "json-list"):
            source = spool_json(inp, kind, out / ".input")
        # reading is light I/O: its tasks reserve no CPU, or N one-CPU actors on N cores would starve it
        read_args = {"num_cpus": 0}
        if kind == "parquet":
            ds = ray.data.read_parquet(str(source), **read_args)
        else:
            ds = ray.data.read_text(str(source), drop_empty_lines=True, **read_args)
        with warnings.catch_warnings():  # max_restarts / max_task_retries reach Ray as remote args
            warnings.simplefilter("ignore")
            ds = _map(ds, ray, concurrency=concurrency, cpus_per_actor=cpus_per_actor, batch_size=batch_size,
                      max_restarts=max_restarts, max_task_retries=max_task_retries, ctor={
                          "context": ctx_blob, "graph": graph, "kind": "parquet" if kind == "parquet" else "lines",
                          "base": str(inp.parent.resolve()), "images": str(Path(images).resolve()) if images else None,
                          "trace": trace, "done": done_ref, "mention_timeout": mention_timeout})
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        written = errors = 0
        seq = 0
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                recs = [json.loads(s) for s in batch["json"]]
                if not recs:
                    continue
                write_part(out, f"{stamp}-{seq:06d}", recs, fmt, trace=trace)
                seq += 1
                written += len(recs)
                errors += sum(1 for r in recs if r.get("error"))
        except (I2CRError, KeyboardInterrupt):
            raise
        except Exception as exc:  # Ray gave up (an actor kept dying, the cluster went away): one line, resumable
            why = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise BatchError(f"the batch stopped after {written} mentions ({type(exc).__name__}: {why[:300]}); "
                             f"the finished ones are saved in {out}: run the same command again to resume") from None
    finally:
        if started:
            ray.shutdown()
    return {"out": str(out), "resumed_from": len(done), "written": written, "errors": errors,
            "done": len(done) + written, "parts": seq, "format": fmt}


# ---- command line ---------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """The arguments of ``i2cr batch``."""
    p = argparse.ArgumentParser(prog="i2cr batch",
                                description="Link a corpus on Ray Data (local or a cluster); resumable.")
    p.add_argument("input", help="mentions: JSON lines, an I2CR JSON dataset, or Parquet (file or folder)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of graph/context.py, as for i2cr link / eval (repeatable)")
    p.add_argument("--concurrency", type=int, default=1, help="actors (each loads the models once; default 1)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs Ray reserves per actor (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="mentions per batch sent to an actor (default 16)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else Ray started locally)")
    p.add_argument("--format", choices=FORMATS, help="output format (default jsonl, or that of --out's parts)")
    p.add_argument("--trace", action="store_true", help="keep each mention's trace in the output")
    p.add_argument("--images", help="folder holding the images the records name")
    p.add_argument("--mention-timeout", type=float, default=MENTION_TIMEOUT, metavar="S",
                   help="end and restart an actor that spends more than S seconds on one mention (a hang); the "
                        f"mention is tried once more, then recorded as failed (default {MENTION_TIMEOUT:g}; 0 = no limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``i2cr batch``; returns the exit code."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from graph.context import parse_settings

        summary = link_batch(args.input, args.out, settings=parse_settings(args.set), concurrency=args.concurrency,
                             cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size, address=args.address,
                             fmt=args.format, trace=args.trace, images=args.images, progress=not args.no_progress,
                             mention_timeout=args.mention_timeout)
    except I2CRError as exc:
        print(f"i2cr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ni2cr batch: interrupted; the finished batches are in {args.out}. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    print(f"{summary['done']} mentions in {summary['out']} ({summary['resumed_from']} from before, "
          f"{summary['written']} now, {summary['errors']} failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
