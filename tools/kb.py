"""Knowledge base of entities on Chroma, with hybrid (lexical + dense) retrieval.

Storage — two Chroma collections, so the same code runs on an embedded store
(``chromadb.PersistentClient``) or a Chroma server (``chromadb.HttpClient``):

* ``<collection>``: one row per entity, id = qid, the dense embedding of
  ``"name. desc"`` (from ``embedding_model``) and metadata ``{name, desc,
  aliases (JSON list or ""), image, hash}``, and for an entity whose name alone is another text
  (:func:`tools.texts.name_text`: it has a description, or its name is cleaned) the name-alone vector
  too, in ``name_vec`` (base64 of the float32 bytes, exact) with ``name_vec_text`` the text embedded:
  the fused linker's ``name_sim`` compares each name alone with the mention, and those vectors are
  shared like the entity vectors. A KB ingested before has no ``name_vec``: its names are embedded
  by the linker, as before (re-ingest into a new collection to store them; an unchanged record is
  not rewritten). ``hash`` is a digest of the record: re-ingesting
  an unchanged record is a no-op, a changed one is re-embedded and upserted. The collection's
  metadata records the model: ``i2cr_embedding_model`` (the spec, checked on open) and
  ``i2cr_embedding_id`` (the exact model, :func:`tools.embeddings.embedding_id`; ``unknown`` or
  absent when the stored vectors may come from another model): the graph's retrieval hands the
  stored vectors to the linker's embedder only when that id is the linker's
  (:func:`share_entity_vectors`).
* ``<collection>__names``: one row per name and alias, id = ``qid#i``, whose
  vector is a hashed character-trigram profile of the normalised name
  (:func:`name_vector`) — a lexical index that lives in Chroma too.

Search (:meth:`KnowledgeBase.search`) pulls the top ``depth`` entities by dense
similarity of ``"mention. context"`` and the top ``depth`` names by trigram
similarity of the mention, re-scores the union exactly (dense cosine from the
stored vectors, exact trigram cosine of the mention against name and aliases)
and ranks by ``0.5 * lexical + 0.5 * dense``. Names alone miss "Marx" among many
Marxes; context alone misses rare names; the sum keeps both. (On WikiMEL dev
this beats reciprocal-rank fusion: R@10 96.5% vs 94.9% with k=60 — the many
same-surname entities tie on the name signal, and RRF turns ties into noise.)

Writes are ordered names-first, entity-row last (the row carries the hash), in
batches that commit as they go: an interrupted ingest loses nothing already
written, and a re-run redoes only what is missing or changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import sys
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from tools.candidates import MAX_NAME_CHARS, check_text
from tools.errors import ConfigError, I2CRError, InputError, ModelError

log = logging.getLogger(__name__)

NAMES_SUFFIX = "__names"
LEXICAL_DIM = 256
LEXICAL_SCHEME = "char3-hash256-v1"
LEXICAL_WEIGHT = 0.5  # weight of the name signal in the hybrid score (0.3-0.5 within 0.5 pt on WikiMEL dev)
ON_ERROR = ("skip", "fail")
KB_VECTORS_ENV = "I2CR_KB_VECTORS"  # on (default) | off: hand the KB's stored entity vectors to the linker
TEXT_FORMAT = "text:prose-v1"
"""How :func:`entity_text` writes an entity before it is embedded (attribute lists as prose, session 15). Part
of the recorded vectors id: a KB ingested when texts were written otherwise keeps its vectors for its own
search, but they are not handed to the linker, which embeds the texts as it writes them."""
UNKNOWN_ID = "unknown"  # i2cr_embedding_id of a collection whose vectors may come from several models
MODES = ("hybrid", "dense", "lexical")
# HNSW settings, fixed at collection creation. Lighter than Chroma's defaults
# (ef_construction 100) so that ingest stays ~3x faster on small machines; the
# names index is only a candidate generator (exact re-scoring follows) so it is lighter still.
DENSE_HNSW = {"space": "cosine", "ef_construction": 48, "max_neighbors": 16, "ef_search": 100}
NAMES_HNSW = {"space": "cosine", "ef_construction": 32, "max_neighbors": 12, "ef_search": 100}


# ---------------------------------------------------------------- lexical ----
def normalize_name(text: str) -> str:
    """Lower-case, strip accents and punctuation: ``"Périer, C."`` -> ``"perier c"``."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " ".join(re.findall(r"\w+", text))


def trigrams(text: str) -> Counter:
    """Character trigrams of each word of the normalised text, padded with spaces."""
    grams: Counter = Counter()
    for word in normalize_name(text).split():
        padded = f" {word} "
        grams.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return grams


def name_vector(text: str, dim: int = LEXICAL_DIM) -> np.ndarray:
    """Unit vector of hashed, signed trigram counts: the lexical index's embedding of a name."""
    vec = np.zeros(dim, dtype=np.float32)
    for gram, n in trigrams(text).items():
        h = zlib.crc32(gram.encode("utf-8"))
        vec[h % dim] += n if (h >> 16) & 1 else -n
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:  # no letters or digits: a fixed vector keeps Chroma happy
        vec[0], norm = 1.0, 1.0
    return vec / norm


# ---------------------------------------------------------------- records ----
def validate_record(obj: Any) -> dict[str, Any]:
    """Return the clean record ``{qid, name, desc, aliases, image}``; ``ValueError`` says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("qid", "name"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    if len(obj["name"].strip()) > MAX_NAME_CHARS:
        raise ValueError(f"'name' has {len(obj['name'].strip()):,} characters; a name has at most {MAX_NAME_CHARS:,}")
    desc = obj.get("desc", "")
    if desc is None:
        desc = ""
    if not isinstance(desc, str):
        raise ValueError("'desc' must be a string")
    aliases = obj.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError("'aliases' must be a list of strings")
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError("'image' must be a string (path or URL)")
    return {"qid": obj["qid"].strip(), "name": obj["name"].strip(), "desc": desc.strip(),
            "aliases": [a.strip() for a in aliases if a.strip()], "image": image or ""}


def record_hash(rec: dict[str, Any]) -> str:
    """Digest of a clean record (what decides 'unchanged' on re-ingest)."""
    blob = json.dumps([rec["qid"], rec["name"], rec["desc"], rec["aliases"], rec["image"]],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def entity_text(rec: dict[str, Any]) -> str:
    """Text embedded for an entity: ``"name. desc"``, an attribute-list description written as prose
    (:func:`tools.descriptions.embedding_description`, as the linker writes it)."""
    from tools.descriptions import embedding_description

    return f"{rec['name']}. {embedding_description(rec['desc'], rec['name'])}".strip()


def query_text(mention: str, context: str) -> str:
    """Text embedded for a query: ``"mention. context"``."""
    return f"{mention}. {context}".strip() if context else mention


def own_name_text(rec: dict[str, Any]) -> str | None:
    """The name-alone text the linker embeds for ``rec`` (:func:`tools.texts.name_text`, compared with the
    mention by ``name_sim``) when it is not :func:`entity_text` (whose vector the row holds), else ``None``."""
    from tools.texts import name_text

    text = name_text(rec)
    return text if text and text != entity_text(rec) else None


def stored_vectors_id(model_id: str | None) -> str | None:
    """The id a KB records for vectors of ``model_id`` over texts written as :data:`TEXT_FORMAT` says."""
    return f"{model_id}|{TEXT_FORMAT}" if model_id else None


def pack_vector(vec: np.ndarray) -> str:
    """A float32 vector as a metadata string (base64 of its bytes: read back bitwise)."""
    return base64.b64encode(np.asarray(vec, dtype=np.float32).tobytes()).decode("ascii")


def unpack_vector(raw: Any, dim: int | None = None) -> np.ndarray | None:
    """:func:`pack_vector`'s vector (``None`` when ``raw`` is not one, or not ``dim`` long)."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        vec = np.frombuffer(base64.b64decode(raw.encode("ascii"), validate=True), dtype=np.float32)
    except (ValueError, TypeError):
        return None
    return vec if vec.size and (dim is None or vec.size == dim) else None


def stored_name_vector(meta: dict[str, Any], dim: int | None = None) -> tuple[str, np.ndarray] | None:
    """``(text, vector)`` of a row's stored name-alone vector (``None`` when it has none: an older KB)."""
    text, vec = meta.get("name_vec_text"), unpack_vector(meta.get("name_vec"), dim)
    return (text, vec) if isinstance(text, str) and text and vec is not None else None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | ValueError]]:
    """Yield ``(line number, clean record or ValueError)`` for each non-blank line of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"KB file {path}: not found")
    with path.open("rb") as fh:  # decoded line by line: a line that is not UTF-8 is one bad line
        for no, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield no, ValueError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield no, validate_record(json.loads(line))
            except json.JSONDecodeError as exc:
                yield no, ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")
            except RecursionError:
                yield no, ValueError("JSON nested too deeply to read")
            except ValueError as exc:
                yield no, exc


# ------------------------------------------------------------------ stats ----
@dataclass
class IngestStats:
    """What one ingest did. ``errors`` lists ``(line or record number, reason)``."""

    seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0  # records whose qid an earlier record of the same ingest had (the last one wins)
    duplicate_examples: list[tuple[int, str]] = field(default_factory=list)  # the first few (line, qid)

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "added": self.added, "updated": self.updated,
                "unchanged": self.unchanged, "skipped": self.skipped,
                "errors": [{"line": n, "error": e} for n, e in self.errors],
                "duplicates": self.duplicates,
                "duplicate_examples": [{"line": n, "qid": q} for n, q in self.duplicate_examples]}

    def duplicates_note(self, source: str = "") -> str | None:
        """One line on repeated qids (``None`` when there were none)."""
        if not self.duplicates:
            return None
        shown = ", ".join(f"{q} ({source + ':' if source else 'line '}{n})" for n, q in self.duplicate_examples)
        more = ", ..." if self.duplicates > len(self.duplicate_examples) else ""
        return (f"{self.duplicates} record(s) repeat a qid of an earlier record and replaced it "
                f"(the last one wins): {shown}{more}")


# ---------------------------------------------------------------- the KB -----
def default_kb_path() -> Path:
    """``<user data dir>/i2cr/kb``."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("i2cr")) / "kb"


class KnowledgeBase:
    """Entities in Chroma (embedded or server), searchable by mention and context.

    Args:
        path: persistent directory (embedded mode; default :func:`default_kb_path`).
        host, port: a Chroma server (``chroma run``); when ``host`` is set, ``path`` is unused.
        collection: collection name (3-505 chars of ``[a-zA-Z0-9._-]``; ``<name>__names`` is the second one).
        embeddings: a spec (``embedded``, ``huggingface:...``, ``openai:...``) or a
            LangChain ``Embeddings`` object.
        base_url, api_key: for ``openai:`` specs.
        client: an already-open Chroma client (overrides path/host).
    """

    def __init__(self, *, path: str | Path | None = None, host: str | None = None, port: int = 8000,
                 collection: str = "entities", embeddings: str | Embeddings = "embedded",
                 base_url: str | None = None, api_key: str | None = None, client: Any = None):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,503}[A-Za-z0-9]", str(collection or "")):
            raise ConfigError(f"kb_collection: {collection!r} is not a valid collection name (3-505 "
                              "letters, digits, '.', '_' or '-', starting and ending with a letter or digit)")
        self.collection_name = collection
        self.host, self.port = host, int(port)
        self.path = None if host else Path(path).expanduser() if path else default_kb_path()
        self._spec = embeddings
        self._base_url, self._api_key = base_url, api_key
        self._embeddings: Embeddings | None = embeddings if isinstance(embeddings, Embeddings) else None
        self.model_name = (embeddings if isinstance(embeddings, str)
                           else getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
                           or type(embeddings).__name__)
        self._id_checked = False  # this ingest's model id reconciled with the collection's (see _write)
        self._client = client or (self._connect() if host else None)  # a local store opens on first use
        self._entities = None
        self._names = None
        self._qcache: dict[str, np.ndarray] = {}

    @classmethod
    def from_context(cls, ctx: Any, embeddings: str | Embeddings | None = None) -> KnowledgeBase:
        """Open the KB a ``Context`` (or any object with ``kb_*`` fields) points to."""
        return cls(path=getattr(ctx, "kb_path", None), host=getattr(ctx, "kb_host", None),
                   port=getattr(ctx, "kb_port", 8000), collection=getattr(ctx, "kb_collection", "entities"),
                   embeddings=embeddings or getattr(ctx, "embedding_model", "embedded"),
                   base_url=getattr(ctx, "openai_base_url", None), api_key=getattr(ctx, "openai_api_key", None))

    # ------------------------------------------------------------ plumbing --
    @property
    def where(self) -> str:
        """Human-readable location of the store, for messages."""
        return f"Chroma server {self.host}:{self.port}" if self.host else f"{self.path}"

    @property
    def client(self) -> Any:
        """The Chroma client (a local store is created on the first write or read that needs it)."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        """Open the Chroma client for ``host``/``port`` or ``path``; ConfigError naming the setting on failure."""
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        try:
            if self.host:
                client = chromadb.HttpClient(host=self.host, port=self.port, settings=settings)
                client.heartbeat()
                return client
            if self.path.exists() and not self.path.is_dir():
                raise ConfigError(f"kb_path: {self.path} is a file, not a knowledge base folder")
            self.path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.path), settings=settings)
        except I2CRError:
            raise
        except Exception as exc:
            setting = "kb_host/kb_port" if self.host else "kb_path"
            raise ConfigError(f"{setting}: cannot open the knowledge base at {self.where}: "
                              f"{type(exc).__name__}: {exc}") from exc

    def _collections(self, create: bool) -> bool:
        """Open (or create) both collections; False when they do not exist and ``create`` is False."""
        if self._entities is not None:
            return True
        if not create and self._client is None and self.path is not None and not self.path.exists():
            return False  # do not leave an empty store behind a search or count
        try:
            existing = {getattr(c, "name", c) for c in self.client.list_collections()}
        except I2CRError:
            raise
        except Exception as exc:
            raise ConfigError(f"knowledge base at {self.where}: cannot list collections: {exc}") from exc
        name, names = self.collection_name, self.collection_name + NAMES_SUFFIX
        if name not in existing or names not in existing:
            if not create:
                return False
            meta = {"i2cr_embedding_model": str(self.model_name), "i2cr_lexical": LEXICAL_SCHEME,
                    "i2cr_embedding_id": self.model_id or UNKNOWN_ID}
            self._entities = self.client.get_or_create_collection(
                name, metadata=meta, configuration={"hnsw": dict(DENSE_HNSW)}, embedding_function=None)
            self._names = self.client.get_or_create_collection(
                names, metadata={"i2cr_lexical": LEXICAL_SCHEME}, configuration={"hnsw": dict(NAMES_HNSW)},
                embedding_function=None)
        else:
            self._entities = self.client.get_collection(name, embedding_function=None)
            self._names = self.client.get_collection(names, embedding_function=None)
        built_with = (self._entities.metadata or {}).get("i2cr_embedding_model")
        if built_with and built_with != str(self.model_name):
            raise ConfigError(f"embedding_model: the knowledge base '{name}' at {self.where} was built with "
                              f"'{built_with}', not '{self.model_name}'; use the same model or ingest into "
                              "another collection (--collection / kb_collection)")
        return True

    @property
    def model_id(self) -> str | None:
        """What decides the vectors this KB stores: the exact id of its embedder
        (:func:`tools.embeddings.embedding_id`) and how entity texts are written (:data:`TEXT_FORMAT`),
        as :func:`stored_vectors_id` writes them; ``None`` for an embedder given as an object."""
        from tools.embeddings import embedding_id

        return stored_vectors_id(embedding_id(self._spec, self._base_url))

    @property
    def vectors_id(self) -> str | None:
        """The model id the stored entity vectors were made with (``None``: not recorded, or unknown).

        Recorded at ingest since the KB shares its vectors with the linker; a KB written before
        has none, and one ingested with two different model ids is ``unknown``.
        """
        if not self._collections(create=False):
            return None
        recorded = (self._entities.metadata or {}).get("i2cr_embedding_id")
        return None if recorded in (None, "", UNKNOWN_ID) else str(recorded)

    def _reconcile_id(self) -> None:
        """Before vectors are written: keep ``i2cr_embedding_id`` true of every stored vector.

        An empty collection takes this ingest's id; one holding vectors of another (or an unrecorded)
        model becomes ``unknown`` (its vectors are then never shared with the linker).
        """
        if self._id_checked:
            return
        meta = dict(self._entities.metadata or {})
        recorded, mine = meta.get("i2cr_embedding_id"), self.model_id or UNKNOWN_ID
        new = mine if self._entities.count() == 0 else recorded if recorded == mine else UNKNOWN_ID
        if new != recorded:
            self._chroma(self._entities.modify, metadata={**meta, "i2cr_embedding_id": new})
        self._id_checked = True

    @property
    def embeddings(self) -> Embeddings:
        """The dense embedder (loaded on first use)."""
        if self._embeddings is None:
            from tools.embeddings import load_embeddings

            self._embeddings = load_embeddings(self._spec, base_url=self._base_url, api_key=self._api_key)
        return self._embeddings

    def _embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        try:
            raw = self.embeddings.embed_query(texts[0]) if query else self.embeddings.embed_documents(texts)
        except I2CRError:
            raise
        except Exception as exc:
            from tools.models import failure_message

            raise ModelError(failure_message("embedding_model", self.model_name, self.embeddings, exc)) from exc
        vecs = np.atleast_2d(np.asarray(raw, dtype=np.float32))
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)

    def _query_vector(self, text: str) -> np.ndarray:
        """Unit query embedding of ``text`` (a few recent ones are cached: graph rounds repeat them)."""
        if text not in self._qcache:
            if len(self._qcache) >= 256:
                self._qcache.pop(next(iter(self._qcache)))
            self._qcache[text] = self._embed([text], query=True)[0]
        return self._qcache[text]

    def count(self) -> int:
        """Entities stored (0 when the collection does not exist yet)."""
        return self._entities.count() if self._collections(create=False) else 0

    # -------------------------------------------------------------- ingest --
    def ingest(self, records: Iterable[dict[str, Any] | tuple[int, Any]], *, batch_size: int = 256,
               on_error: str = "skip", progress: bool | Any = False, total: int | None = None,
               report: Callable[[int, str], None] | None = None, source: str | None = None) -> IngestStats:
        """Add or update ``records`` in batches; return :class:`IngestStats`.

        ``records`` yields dicts, or ``(line number, dict | Exception)`` pairs as
        :func:`read_jsonl` does. A malformed record is skipped and reported
        (``report(line, reason)``, default: a log warning) when ``on_error='skip'``;
        with ``on_error='fail'`` every record is checked first and an
        ``InputError`` listing the bad lines (``source:line`` when ``source`` names the file)
        is raised before anything is written. A qid repeated within the ingest is counted in
        ``stats.duplicates`` (the last record wins).
        Each batch is committed before the next is read: when the source fails
        mid-way, what came before it (the pending partial batch included) is kept.
        """
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error: expected one of {list(ON_ERROR)}, got {on_error!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
        report = report or (lambda no, msg: log.warning("line %d: skipped: %s", no, msg))
        items: Iterable[tuple[int, Any]] = _numbered(records)
        if on_error == "fail":
            items = list(items)
            bad = [(no, str(r)) for no, r in items if isinstance(r, Exception)]
            if bad:
                shown = "; ".join(f"{source + ':' if source else 'line '}{n}: {m}" for n, m in bad[:5])
                more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
                raise InputError(f"{len(bad)} malformed record(s), nothing ingested: {shown}{more}")
            total = total or len(items)
        self._collections(create=True)
        self._id_checked = False
        stats = IngestStats()
        bar = progress if progress not in (True, False) else None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="entity", desc=f"ingest -> {self.collection_name}", file=sys.stderr,
                       mininterval=0.1 if sys.stderr.isatty() else 30)
        batch: dict[str, dict[str, Any]] = {}
        qids: set[str] = set()
        try:
            for no, rec in items:
                stats.seen += 1
                if isinstance(rec, Exception):
                    stats.skipped += 1
                    stats.errors.append((no, str(rec)))
                    report(no, str(rec))
                    if bar is not None:
                        bar.update(1)
                    continue
                if rec["qid"] in qids:  # repeated: the last one wins (in its batch, or by a later upsert)
                    stats.duplicates += 1
                    if len(stats.duplicate_examples) < 5:
                        stats.duplicate_examples.append((no, rec["qid"]))
                    if batch.pop(rec["qid"], None) is not None and bar is not None:  # keep the batch in file order
                        bar.update(1)
                qids.add(rec["qid"])
                batch[rec["qid"]] = rec
                if len(batch) >= batch_size:
                    self._write(batch, stats, bar)
                    batch = {}
        finally:
            if batch:  # commit what was read, also when the source failed mid-way
                self._write(batch, stats, bar)
            if bar is not None and progress is True:
                bar.close()
        return stats

    def ingest_file(self, path: str | Path, **kwargs: Any) -> IngestStats:
        """:meth:`ingest` the JSONL file at ``path`` (errors carry its line numbers)."""
        path = Path(path)
        if path.is_dir():
            raise InputError(f"KB file {path}: is a folder, not a JSONL file")
        if not path.is_file():
            raise InputError(f"KB file {path}: not found" if not path.exists() else
                             f"KB file {path}: not a regular file (it is read twice: copy it to a file first)")
        if kwargs.get("total") is None:
            with path.open("rb") as fh:
                kwargs["total"] = sum(1 for line in fh if line.strip())
        kwargs.setdefault("source", str(path))
        return self.ingest(read_jsonl(path), **kwargs)

    def _write(self, batch: dict[str, dict[str, Any]], stats: IngestStats, bar: Any) -> None:
        """Upsert the new or changed records of one batch (names first, entity rows last)."""
        ids = list(batch)
        hashes = {qid: record_hash(rec) for qid, rec in batch.items()}
        old = self._entities.get(ids=ids, include=["metadatas"])
        old_meta = {i: (m or {}) for i, m in zip(old["ids"], old["metadatas"])}
        todo = [q for q in ids if old_meta.get(q, {}).get("hash") != hashes[q]]
        stats.unchanged += len(ids) - len(todo)
        if todo:
            self._reconcile_id()
            recs = [batch[q] for q in todo]
            vectors = self._embed([entity_text(r) for r in recs])
            # the names alone, where another text (a pass of their own: short texts are not padded to long ones)
            own = {r["qid"]: t for r in recs if (t := own_name_text(r))}
            name_alone = dict(zip(own, self._embed(list(own.values())))) if own else {}
            changed = [q for q in todo if q in old_meta]
            stale = [f"{q}#{i}" for q in changed  # name rows of aliases the new record no longer has
                     for i in range(1 + len(batch[q]["aliases"]), 1 + len(json.loads(old_meta[q].get("aliases") or "[]")))]
            if stale:
                self._names.delete(ids=stale)
            name_ids, name_vecs = [], []
            for r in recs:
                for i, nm in enumerate([r["name"], *r["aliases"]]):
                    name_ids.append(f"{r['qid']}#{i}")
                    name_vecs.append(name_vector(nm))
            self._chunked(self._names.upsert, ids=name_ids, embeddings=np.asarray(name_vecs, np.float32))
            # every key every time: Chroma's upsert merges metadata, a missing key would keep its old value
            metas = [{"name": r["name"], "desc": r["desc"], "hash": hashes[r["qid"]], "image": r["image"],
                      "aliases": json.dumps(r["aliases"], ensure_ascii=False) if r["aliases"] else "",
                      "name_vec_text": own.get(r["qid"], ""),
                      "name_vec": pack_vector(name_alone[r["qid"]]) if r["qid"] in name_alone else ""}
                     for r in recs]
            self._chunked(self._entities.upsert, ids=todo, embeddings=vectors, metadatas=metas)
            stats.updated += len(changed)
            stats.added += len(todo) - len(changed)
        if bar is not None:
            bar.update(len(ids))

    def _chunked(self, fn: Callable[..., Any], *, ids: list[str], embeddings: Any,
                 metadatas: list[dict] | None = None) -> None:
        """Call ``fn`` on slices no larger than the client's maximum batch size."""
        try:
            limit = int(self.client.get_max_batch_size())
        except Exception:
            limit = 1000
        for s in range(0, len(ids), limit):
            try:
                fn(ids=ids[s:s + limit], embeddings=embeddings[s:s + limit],
                   metadatas=metadatas[s:s + limit] if metadatas else None)
            except Exception as exc:
                if "dimension" in str(exc).lower():
                    raise ConfigError(f"embedding_model '{self.model_name}': {exc}; the collection "
                                      f"'{self.collection_name}' holds vectors of another size") from exc
                raise

    # -------------------------------------------------------------- search --
    def search(self, mention: str, context: str = "", k: int = 10, *, mode: str = "hybrid",
               depth: int | None = None, with_vectors: bool = False) -> list[dict[str, Any]]:
        """Top ``k`` entities for ``mention`` in ``context``, best first.

        Each result is ``{qid, name, desc, aliases, image, score, dense, lexical, rank}``:
        ``dense`` = cosine(mention. context, name. desc), ``lexical`` = trigram cosine
        of the mention with the best-matching name or alias, ``score`` = the fused
        score (``LEXICAL_WEIGHT``-weighted sum in ``hybrid`` mode, else the single signal).
        ``depth`` = candidates pulled from each index before fusion (default max(30, 3k)).
        ``with_vectors``: each result also has ``vector``, the stored unit embedding of its
        :func:`entity_text` (a float32 array; not JSON), and ``name_vector``, ``(text, vector)`` of its
        stored name-alone embedding, or ``None`` (:func:`stored_name_vector`).
        """
        if not isinstance(mention, str) or not mention.strip():
            raise InputError("mention: empty; give the entity mention to look up")
        check_text(mention, "mention")  # not UTF-8: named here, not blamed on the embedding model
        check_text(context or "", "context")
        if mode not in MODES:
            raise ConfigError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"top_k: expected a positive integer, got {k!r}")
        if not self._collections(create=False):
            raise self._empty_error()
        depth = depth or max(30, 3 * k)
        ids: dict[str, None] = {}
        qvec = None
        if mode != "lexical":
            qvec = self._query_vector(query_text(mention, context or ""))
            res = self._chroma(self._entities.query, query_embeddings=[qvec], n_results=depth, include=[])
            ids.update(dict.fromkeys(res["ids"][0]))
        if mode != "dense":
            res = self._chroma(self._names.query, query_embeddings=[name_vector(mention)], n_results=depth,
                               include=[])
            ids.update(dict.fromkeys(i.rsplit("#", 1)[0] for i in res["ids"][0]))
        if not ids:
            raise self._empty_error()
        got = self._chroma(self._entities.get, ids=list(ids),
                           include=["metadatas", "embeddings"] if qvec is not None or with_vectors
                           else ["metadatas"])
        dense = np.zeros(len(got["ids"]), dtype=np.float32)
        emb = np.asarray(got["embeddings"], dtype=np.float32) if got.get("embeddings") is not None else None
        if qvec is not None and len(got["ids"]):
            dense = emb @ qvec / np.linalg.norm(emb, axis=1).clip(min=1e-12)
        mgrams = _profile(mention)
        rows = []
        for i, qid in enumerate(got["ids"]):
            meta = got["metadatas"][i] or {}
            aliases = json.loads(meta.get("aliases") or "[]")
            lex = max(_cosine(mgrams, _profile(nm)) for nm in [meta.get("name", ""), *aliases])
            rows.append({"qid": qid, "name": meta.get("name", ""), "desc": meta.get("desc", ""),
                         "aliases": aliases, "image": meta.get("image", ""), "dense": float(dense[i]),
                         "lexical": lex})
            if with_vectors:
                rows[-1]["vector"] = emb[i]
                rows[-1]["name_vector"] = stored_name_vector(meta, emb.shape[1])
        _fuse(rows, mode)
        rows.sort(key=lambda r: (-r["score"], -r["dense"], -r["lexical"], r["qid"]))
        for rank, row in enumerate(rows[:k], 1):
            row["rank"] = rank
        return rows[:k]

    def stored_rows(self, qids: list[str]) -> list[dict[str, Any]]:
        """The stored entities of ``qids`` (those present), each ``{qid, name, desc, vector, name_vector}``:
        ``vector`` is the stored unit embedding of its :func:`entity_text`, ``name_vector`` ``(text, vector)``
        of its name alone or ``None`` (:func:`stored_name_vector`). Empty when the KB does not exist."""
        if not qids or not self._collections(create=False):
            return []
        got = self._chroma(self._entities.get, ids=list(dict.fromkeys(qids)), include=["metadatas", "embeddings"])
        emb = got.get("embeddings")
        if emb is None or not len(got["ids"]):
            return []
        emb = np.asarray(emb, dtype=np.float32)
        return [{"qid": qid, "name": (meta or {}).get("name", ""), "desc": (meta or {}).get("desc", ""),
                 "vector": emb[i], "name_vector": stored_name_vector(meta or {}, emb.shape[1])}
                for i, (qid, meta) in enumerate(zip(got["ids"], got["metadatas"]))]

    def _chroma(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Call a Chroma collection method; a failure becomes a ConfigError naming the store."""
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise ConfigError(f"knowledge base '{self.collection_name}' at {self.where}: {fn.__name__} "
                              f"failed: {type(exc).__name__}: {exc}") from exc

    def _empty_error(self) -> InputError:
        """The error telling the user to fill the KB."""
        return InputError(f"the knowledge base '{self.collection_name}' at {self.where} is empty or "
                          "missing; fill it first with: i2cr kb ingest ENTITIES.jsonl")


@lru_cache(maxsize=200_000)
def _profile(name: str) -> tuple[dict[str, int], float]:
    """Trigram counts of a name and their norm (cached: candidate names repeat across queries)."""
    grams = trigrams(name)
    return dict(grams), math.sqrt(sum(n * n for n in grams.values()))


def _cosine(a: tuple[dict[str, int], float], b: tuple[dict[str, int], float]) -> float:
    """Cosine of two :func:`_profile` results (0 when either is empty)."""
    if not a[1] or not b[1]:
        return 0.0
    small, big = (a[0], b[0]) if len(a[0]) <= len(b[0]) else (b[0], a[0])
    return sum(n * big.get(g, 0) for g, n in small.items()) / (a[1] * b[1])


def _fuse(rows: list[dict[str, Any]], mode: str) -> None:
    """Set each row's ``score``: ``LEXICAL_WEIGHT * lexical + (1 - LEXICAL_WEIGHT) * dense`` in hybrid mode."""
    for r in rows:
        r["score"] = (LEXICAL_WEIGHT * r["lexical"] + (1 - LEXICAL_WEIGHT) * r["dense"]
                      if mode == "hybrid" else r[mode])


def _numbered(records: Iterable[Any]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """Turn dicts into ``(position, clean record or ValueError)``; pass ``(n, x)`` pairs through."""
    for pos, item in enumerate(records, 1):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
            no, rec = item
            if isinstance(rec, Exception):
                yield no, rec
                continue
        else:
            no, rec = pos, item
        try:
            yield no, validate_record(rec)
        except ValueError as exc:
            yield no, exc


# ------------------------------------------------------------ graph entry ----
_open: dict[tuple, KnowledgeBase] = {}


def open_kb(ctx: Any) -> KnowledgeBase:
    """The (cached) :class:`KnowledgeBase` a context points to."""
    key = (getattr(ctx, "kb_path", None), getattr(ctx, "kb_host", None), getattr(ctx, "kb_port", 8000),
           getattr(ctx, "kb_collection", "entities"), str(getattr(ctx, "embedding_model", "embedded")),
           getattr(ctx, "openai_base_url", None))
    if key not in _open:
        _open[key] = KnowledgeBase.from_context(ctx)
    return _open[key]


def kb_vectors_on() -> bool:
    """``$I2CR_KB_VECTORS``: ``on`` (default) shares the KB's stored entity vectors with the linker."""
    from tools.embeddings import env_switch

    return env_switch(KB_VECTORS_ENV)


def share_entity_vectors(kb: KnowledgeBase, rows: list[dict[str, Any]], ctx: Any) -> int:
    """Hand the stored vectors of ``rows`` (from ``search(with_vectors=True)``) to the embedder of
    ``ctx.embedding_model``, so that the linker does not embed those entity texts again.

    Only vectors that are what that embedder would compute: the KB's recorded model id
    (:attr:`KnowledgeBase.vectors_id`) equals the linker's (:func:`tools.embeddings.embedding_id`),
    and the text the KB embedded (:func:`entity_text`) equals the text the linker embeds
    (:func:`tools.texts.entity_text`, which cleans the name). The stored name-alone vectors too
    (``name_vector``), where their text is the linker's :func:`tools.texts.name_text` of the row: then
    ``name_sim`` embeds only the mention alone. Removes ``vector`` and ``name_vector`` from every row;
    returns how many texts the embedder took (in memory only: :meth:`CachedEmbedder.prime`).
    """
    from tools.embeddings import embedding_id, get_embedder
    from tools.texts import entity_text as linker_text
    from tools.texts import name_text

    vectors = [r.pop("vector", None) for r in rows]
    names = [r.pop("name_vector", None) for r in rows]
    spec = getattr(ctx, "embedding_model", "embedded")
    base_url = getattr(ctx, "openai_base_url", None)
    linker_id = embedding_id(spec, base_url)
    if linker_id is None or kb.vectors_id != stored_vectors_id(linker_id):
        return 0
    texts, rows_kept = [], []
    for row, vec, named in zip(rows, vectors, names):
        text = linker_text(row)
        if vec is not None and text == entity_text(row):
            texts.append(text)
            rows_kept.append(vec)
        if named is not None and named[0] == name_text(row) and (vec is None or len(named[1]) == len(vec)):
            texts.append(named[0])
            rows_kept.append(named[1])
    if not texts:
        return 0
    embedder = get_embedder(spec, base_url=base_url, api_key=getattr(ctx, "openai_api_key", None))
    return embedder.prime(texts, np.stack(rows_kept))


def share_listed_vectors(candidates: list[dict[str, Any]], ctx: Any) -> int:
    """Hand the linker's embedder the knowledge base's stored vectors of candidates given with the input.

    A candidate with a ``qid`` that the KB of ``ctx`` holds, with the same text and a vector of the
    linker's embedding model (the checks of :func:`share_entity_vectors`), is not embedded again:
    a corpus whose candidate lists name KB entities costs one query embedding per mention (and the
    mention alone, for ``name_sim``: the names alone come from the KB too when it stores them). Silent
    and free when there is no KB, when ``$I2CR_KB_VECTORS=off``, or for an embedder given as an
    object (no model id); a KB that cannot be read leaves the texts to be embedded as usual.
    Candidates whose texts the embedder already holds (a batch's warm-up took them) are not looked
    up again. Returns how many texts the embedder took.
    """
    from tools.embeddings import embedding_id, get_embedder
    from tools.texts import entity_text as linker_text
    from tools.texts import name_text

    listed = [c for c in candidates if isinstance(c, dict) and c.get("qid")]
    spec, base_url = getattr(ctx, "embedding_model", "embedded"), getattr(ctx, "openai_base_url", None)
    if not listed or not kb_vectors_on() or embedding_id(spec, base_url) is None:
        return 0
    try:
        embedder = get_embedder(spec, base_url=base_url, api_key=getattr(ctx, "openai_api_key", None))
        missing = set(embedder.missing([t for c in listed for t in (linker_text(c), name_text(c))]))
        qids = [str(c["qid"]) for c in listed if linker_text(c) in missing or name_text(c) in missing]
        if not qids:
            return 0
        kb = open_kb(ctx)
        if kb.vectors_id is None:
            return 0
        return share_entity_vectors(kb, kb.stored_rows(qids), ctx)
    except Exception:  # noqa: BLE001 - an optimisation only: the linker embeds the texts itself
        return 0


def retrieve_candidates(mention: str, context: str, ctx: Any) -> list[dict[str, Any]]:
    """Top ``ctx.top_k`` KB candidates ``{qid, name, desc, score, ...}`` for the graph's retrieval node.

    Their stored vectors go to the linker's embedder (:func:`share_entity_vectors`; not into the
    result, which is graph state) unless ``$I2CR_KB_VECTORS=off``.
    Raises ``InputError`` when the KB is empty or missing (run ``i2cr kb ingest``).
    """
    kb = open_kb(ctx)
    share = kb_vectors_on()
    rows = kb.search(mention, context or "", k=int(getattr(ctx, "top_k", 10)), with_vectors=share)
    if share:
        share_entity_vectors(kb, rows, ctx)
    return rows
