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


# ------------------------------------------------------------------ onnx-int8: ----
RELATED = [("Jordan scored 30 points for the Bulls", "Michael Jordan. American basketball player",
            "Jordan River. river in the Middle East"),
           ("Stoltenberg speaks at NATO headquarters", "Jens Stoltenberg. Norwegian politician, NATO secretary general",
            "Nero. Roman emperor"),
           ("a man in a suit speaking into a microphone", "a politician giving a speech",
            "a river flowing through a desert")]


def test_int8_vectors_are_close_to_the_float_ones_not_equal(cache):
    folder = embeddings.embedded_model_dir()
    flt = OnnxEmbeddings("embedded", folder)
    q8 = OnnxEmbeddings("embedded", folder, int8=True)
    assert q8.path != flt.path and q8.path.parent == flt.path.parent and q8.path.name.endswith("-int8pc.onnx")
    assert q8.path.stat().st_size < flt.path.stat().st_size / 3  # 8-bit weights
    texts = [t for t in TEXTS if t] + [t for triple in RELATED for t in triple]
    a, b = np.asarray(flt.embed_documents(texts)), np.asarray(q8.embed_documents(texts))
    cos = (a * b).sum(axis=1)
    # measured 2026-12-02: min 0.984, mean 0.992 on 500 WikiMEL texts (per-tensor scales gave 0.91 / 0.95)
    assert cos.min() > 0.98 and cos.mean() > 0.985
    assert np.abs(a - b).max() > 1e-3  # quantized: not the float vectors up to rounding
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    for query, related, unrelated in RELATED:  # what is close stays closer
        q, r, u = np.asarray(q8.embed_documents([query, related, unrelated]))
        assert q @ r > q @ u + 0.1


def test_int8_is_quantized_once_and_a_damaged_file_is_made_again(cache, monkeypatch):
    import tools.onnx_embeddings as oe

    calls = []
    real = oe.quantize
    monkeypatch.setattr(oe, "quantize", lambda *a: (calls.append(a), real(*a)))
    first = OnnxEmbeddings("embedded", embeddings.embedded_model_dir(), int8=True)
    want = first.embed_query("Jordan scored for the Bulls")
    assert len(calls) == 1 and first.path.is_file()
    stamp = first.path.stat().st_mtime_ns
    again = OnnxEmbeddings("embedded", embeddings.embedded_model_dir(), int8=True)  # another process, say
    assert len(calls) == 1 and again.path == first.path and first.path.stat().st_mtime_ns == stamp
    first.path.write_bytes(b"not an onnx model")
    mended = OnnxEmbeddings("embedded", embeddings.embedded_model_dir(), int8=True)
    assert len(calls) == 2 and first.path.stat().st_size > 1_000_000
    assert mended.embed_query("Jordan scored for the Bulls") == pytest.approx(want, abs=1e-6)
    # a damaged float export under a missing int8 file: exported again, then quantized
    flt = oe._export_path(embeddings.embedded_model_dir())
    flt.write_bytes(b"not an onnx model either")
    first.path.unlink()
    remade = OnnxEmbeddings("embedded", embeddings.embedded_model_dir(), int8=True)
    assert flt.stat().st_size > 1_000_000
    assert remade.embed_query("Jordan scored for the Bulls") == pytest.approx(want, abs=1e-6)


def test_int8_has_its_own_embedding_id_and_spec(cache, monkeypatch):
    from graph import Context

    ids = {embeddings.embedding_id(s) for s in ("embedded", "onnx:embedded", "onnx-int8:embedded")}
    assert len(ids) == 3
    assert embeddings.embedding_id("onnx-int8:embedded").startswith("onnx-int8:embedded:")
    assert embeddings.embedding_id("onnx-int8:/some/dir") != embeddings.embedding_id("onnx:/some/dir")
    assert embeddings.vector_store_for("onnx-int8:embedded").path != embeddings.vector_store_for("onnx:embedded").path
    assert Context(embedding_model="onnx-int8:embedded").embedding_model == "onnx-int8:embedded"
    with pytest.raises(ConfigError, match="embedding_model 'onnx-int8:/no/such/dir': no such file or folder"):
        Context(embedding_model="onnx-int8:/no/such/dir")
    monkeypatch.setattr(embeddings, "_cached", {})
    emb = embeddings.get_embedder("onnx-int8:embedded")
    assert emb.embeddings.int8 and emb.embeddings is not embeddings.load_embeddings("onnx:embedded")
    assert emb.cosine("Jordan scored for the Bulls", ["Michael Jordan. basketball player", "Jordan River"])[0] > 0


def test_a_texts_vector_does_not_depend_on_the_texts_beside_it(cache):
    """Runs of texts of about the same token count: a text alone or among others (padding, other lengths)
    gets its own vector: exactly with 8-bit weights (one text per run: the activation scale is per run),
    up to float rounding with float weights; and the output keeps the input's order."""
    folder = embeddings.embedded_model_dir()
    texts = [t for t in TEXTS if t] + [t for triple in RELATED for t in triple] + ["Nero"] * 3
    for model, tol in ((OnnxEmbeddings("embedded", folder), 1e-6), (OnnxEmbeddings("embedded", folder, int8=True), 0)):
        together = np.asarray(model.embed_documents(texts))
        alone = np.asarray([model.embed_documents([t])[0] for t in texts])
        assert np.abs(together - alone).max() <= tol, model.int8
        shuffled = np.asarray(model.embed_documents(texts[::-1]))
        assert np.abs(shuffled[::-1] - together).max() <= tol
        assert np.array_equal(together[-1], together[-2])  # duplicates alike


def test_runs_are_sorted_by_token_count_and_sized_by_weights(cache, monkeypatch):
    import tools.onnx_embeddings as oe

    folder = embeddings.embedded_model_dir()
    texts = ["a", "a b c d e f g h i j k l", "a b c", "a b c d e f", "a b"] * 4
    for int8, size in ((False, oe.BATCH), (True, oe.INT8_BATCH)):
        model = OnnxEmbeddings("embedded", folder, int8=int8)
        runs = []
        real = model._batch
        monkeypatch.setattr(model, "_batch", lambda rows, real=real: (runs.append([len(r) for r in rows]), real(rows))[1])
        model.embed_documents(texts)
        assert all(len(r) <= size for r in runs) and sum(len(r) for r in runs) == len(texts)
        flat = [n for r in runs for n in r]
        assert flat == sorted(flat, reverse=True)  # longest first: little padding in each run
    assert embeddings.embedding_id("onnx-int8:embedded").endswith(f"#{oe.INT8_ID}")
