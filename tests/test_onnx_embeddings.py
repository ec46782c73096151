"""The ``onnx:`` embedding provider (tools/onnx_embeddings.py) on the packaged MiniLM: the same vectors
as sentence-transformers up to float rounding, exported once, its own embedding id, clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tools import embeddings
from tools.errors import ConfigError, ModelError
from tools.onnx_embeddings import OnnxEmbeddings, _pooling

TEXTS = ["Jens Stoltenberg. Name: Jens Stoltenberg. Sex: male. Birth: 1959, Oslo. Occupation: economist, politician.",
         "Jordan. Jordan scored 30 points for the Bulls",
         "a man in a suit speaking into a microphone",
         "Nero", "", "Stoltenberg speaks at a service commemorating the one year anniversary of the 2011 attacks. " * 20]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_onnx_vectors_equal_the_sentence_transformers_ones(cache):
    onnx = OnnxEmbeddings("embedded", embeddings.embedded_model_dir())
    torch_model = embeddings.load_embeddings("embedded")
    got = np.asarray(onnx.embed_documents(TEXTS))
    want = np.asarray(torch_model.embed_documents(TEXTS))
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert np.abs(got - want).max() < 1e-5  # float rounding only (the long text is truncated alike)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.asarray(onnx.embed_query(TEXTS[1])) == pytest.approx(got[1], abs=1e-6)
    assert onnx.embed_documents([]) == []
    # exported once: a second model (another process, say) loads the same file
    stamp = onnx.path.stat().st_mtime_ns
    again = OnnxEmbeddings("embedded", embeddings.embedded_model_dir())
    assert again.path == onnx.path and onnx.path.stat().st_mtime_ns == stamp
    assert str(onnx.path).startswith(str(cache))


def test_onnx_has_its_own_embedding_id_and_loads_by_spec(cache, monkeypatch):
    monkeypatch.setattr(embeddings, "_cached", {})
    assert embeddings.embedding_id("onnx:embedded") != embeddings.embedding_id("embedded")
    assert embeddings.embedding_id("onnx:embedded").startswith("onnx:embedded:")
    emb = embeddings.get_embedder("onnx:embedded")
    assert emb.cosine("Jordan scored for the Bulls", ["Michael Jordan. basketball player", "Jordan River"])[0] > 0


def test_bad_onnx_specs_are_clear_errors(cache, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="'onnx:/no/such/folder': not a sentence-transformers folder"):
        embeddings._load("onnx", "/no/such/folder", None, None, "embedding_model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no model.safetensors"):
        OnnxEmbeddings(str(empty))
    pool = tmp_path / "maxpool" / "1_Pooling"
    pool.mkdir(parents=True)
    (pool / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(ConfigError, match="supports mean or CLS pooling"):
        _pooling(pool.parent)
    monkeypatch.setitem(sys.modules, "onnx", None)  # the export needs the onnx package: named, not a traceback
    with pytest.raises(ModelError, match="the onnx package is needed"):
        OnnxEmbeddings("embedded", embeddings.embedded_model_dir())


def test_the_context_checks_onnx_specs_early():
    from graph import Context

    assert Context(embedding_model="onnx:embedded").embedding_model == "onnx:embedded"
    with pytest.raises(ConfigError, match="embedding_model 'onnx:/no/such/dir': no such file or folder"):
        Context(embedding_model="onnx:/no/such/dir")


def test_a_damaged_export_in_the_cache_is_made_again(cache):
    first = OnnxEmbeddings("embedded", embeddings.embedded_model_dir())
    want = first.embed_query("Jordan scored for the Bulls")
    first.path.write_bytes(b"not an onnx model")
    again = OnnxEmbeddings("embedded", embeddings.embedded_model_dir())
    assert again.path == first.path and first.path.stat().st_size > 1000
    assert again.embed_query("Jordan scored for the Bulls") == pytest.approx(want, abs=1e-6)
