"""Fast on each machine (issue #16, section 2): batched work inside a batch actor gives the same answers.

- several candidate names scored in ONE llama.cpp batch (one sequence each, sharing the prompt's KV
  cells) == one decode per name, on tiny random GGUFs (F32 and Q4_0) built in the test;
- the embedder's batched embedding == per-text embedding; its persistent entity-vector cache survives
  the process and returns the same vectors;
- ``Linker.link_many`` with the batch path gives the same predictions as ``graph.invoke`` per mention.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

sys.path.insert(0, str(Path(__file__).parent))
from tools import embedded_llm  # noqa: E402

from providers_helpers import write_tiny_gguf, write_tiny_quantized_gguf  # noqa: E402

MESSAGES = [SystemMessage("Answer with the name of the entity."), HumanMessage("the river in paris is the")]
NAMES = ["the river", "a", "paris is the king", "Seine", "Michael Jordan (basketball)", "the river of kings",
         "x", "Paris Saint-Germain", "Jordan", "Q"]


@pytest.fixture
def isolated_llama(tmp_path, monkeypatch):
    from tools import llama_cpp_chat
    from tools import llama_cpp_runtime as lc

    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(llama_cpp_chat, "_LOADED", type(llama_cpp_chat._LOADED)())
    monkeypatch.setattr(lc, "_PROBED", set())
    return tmp_path


@pytest.mark.parametrize("kind", ["f32", "q4_0"])
def test_names_scored_in_one_batch_equal_one_decode_per_name(isolated_llama, kind):
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    path = isolated_llama / f"tiny-{kind}.gguf"
    gguf = write_tiny_gguf(path) if kind == "f32" else write_tiny_quantized_gguf(path)
    model = load_llama_cpp_chat_model(gguf, model_name=f"embedded:tiny-{kind}", temperature=0.0, max_tokens=4,
                                      n_ctx=256)
    llama = model._shared().llama
    assert llama.context_params.n_seq_max >= 2 and llama.context_params.kv_unified
    seq, n_seq = model.continuation_logprobs_sequential(MESSAGES, NAMES)
    multi, n_multi = model.continuation_logprobs(MESSAGES, NAMES)
    assert n_multi == n_seq
    assert [len(s) for s in multi] == [len(s) for s in seq]
    diff = np.abs(np.concatenate(multi) - np.concatenate(seq))
    assert diff.max() <= 1e-3, diff.max()
    n_prompt = len(model._prompt_tokens(model._shared(), MESSAGES))
    assert llama.n_tokens == n_prompt  # the cache holds the prompt only, as before
    # the other sequences are gone: scoring again (prompt from the cache) gives the same numbers
    again, _ = model.continuation_logprobs(MESSAGES, NAMES)
    assert np.abs(np.concatenate(again) - np.concatenate(multi)).max() <= 1e-4
    # a longer prompt sharing the prefix, then generation, still work on sequence 0
    longer = [MESSAGES[0], HumanMessage("the river in paris is the one that")]
    a, _ = model.continuation_logprobs(longer, NAMES[:3])
    b, _ = model.continuation_logprobs_sequential(longer, NAMES[:3])
    assert np.abs(np.concatenate(a) - np.concatenate(b)).max() <= 1e-3
    assert isinstance(model.invoke(MESSAGES).content, str)


def test_more_names_than_sequences_are_scored_in_groups(isolated_llama, monkeypatch):
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    gguf = write_tiny_gguf(isolated_llama / "tiny.gguf")
    model = load_llama_cpp_chat_model(gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=4, n_ctx=256)
    llama = model._shared().llama
    monkeypatch.setattr(llama.context_params, "n_seq_max", 4)  # 3 names per decode
    seq, _ = model.continuation_logprobs_sequential(MESSAGES, NAMES)
    multi, _ = model.continuation_logprobs(MESSAGES, NAMES)
    assert np.abs(np.concatenate(multi) - np.concatenate(seq)).max() <= 1e-3


# ------------------------------------------------------------- embeddings ---
TEXTS = ["Jordan. Jordan scored 30 points for the Bulls.", "Michael Jordan. Name: Michael Jordan. Occupation: "
         "basketball player. Team: Chicago Bulls.", "Jordan. Country in Western Asia.", "Paris",
         "Jordan River. River in the Middle East.", "a much longer text " * 20]


@pytest.fixture
def fresh_embedders(tmp_path, monkeypatch):
    from tools import embeddings

    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(embeddings.EMBED_CACHE_ENV, raising=False)
    monkeypatch.setattr(embeddings, "_cached", {})
    return tmp_path


def test_batched_embedding_equals_one_text_at_a_time(fresh_embedders, monkeypatch):
    from tools.embeddings import CachedEmbedder, load_embeddings

    emb = load_embeddings("embedded")
    together = CachedEmbedder(emb).embed(TEXTS)
    alone = np.stack([CachedEmbedder(emb).embed([t])[0] for t in TEXTS])
    assert together.shape == (len(TEXTS), 384)
    assert np.abs(together - alone).max() <= 1e-6


def test_entity_vectors_persist_across_processes(fresh_embedders):
    import json
    import subprocess

    code = ("import json, sys; import numpy as np; from tools.embeddings import get_embedder\n"
            "e = get_embedder('embedded'); v = e.embed_query_entities(sys.argv[1], json.loads(sys.argv[2]))\n"
            "print(json.dumps({'computed': e.computed, 'hex': v.tobytes().hex()}))")
    env = {**__import__("os").environ, "I2CR_CACHE_DIR": str(fresh_embedders / "cache")}
    root = Path(__file__).resolve().parents[1]

    def run(query: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code, query, json.dumps(TEXTS[1:])], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run(TEXTS[0])
    assert first["computed"] == len(TEXTS)  # a cold cache: the query and every entity text
    stores = list((fresh_embedders / "cache" / "embeddings").glob("*.sqlite"))
    assert len(stores) == 1
    second = run("another query about Jordan")
    assert second["computed"] == 1  # only the new query: the entity texts came from the store
    n = 384 * 4
    a, b = bytes.fromhex(first["hex"]), bytes.fromhex(second["hex"])
    assert a[n:] == b[n:]  # the entity vectors, bitwise


def test_cache_off_and_bad_setting(fresh_embedders, monkeypatch):
    from tools import embeddings
    from tools.errors import ConfigError

    monkeypatch.setenv(embeddings.EMBED_CACHE_ENV, "off")
    assert embeddings.vector_store_for("embedded") is None
    monkeypatch.setenv(embeddings.EMBED_CACHE_ENV, "maybe")
    with pytest.raises(ConfigError, match="I2CR_EMBED_CACHE='maybe': expected on or off"):
        embeddings.vector_store_for("embedded")


def test_store_is_a_langchain_byte_store(tmp_path):
    from tools.embeddings import SqliteByteStore

    store = SqliteByteStore(tmp_path / "s.sqlite")
    store.mset([("a1", b"x"), ("a2", b"yy"), ("b", b"z")])
    assert store.mget(["a2", "nope", "b"]) == [b"yy", None, b"z"]
    assert sorted(store.yield_keys(prefix="a")) == ["a1", "a2"]
    store.mdelete(["a1"])
    assert SqliteByteStore(tmp_path / "s.sqlite").mget(["a1", "a2"]) == [None, b"yy"]


# ------------------------------------------------------------- link_many ---
def _linker(ctx, monkeypatch):
    """The batch actor as Ray builds it (its context pickled), here in-process without starting Ray."""
    import pickle

    from evals.batch import Linker

    monkeypatch.setitem(sys.modules, "ray", None)  # the death log then names itself by pid
    return Linker(pickle.dumps(ctx), None, "jsonl", ".", None, False)


@pytest.mark.parametrize("embedding", ["bag", "embedded"])
def test_link_many_batch_path_equals_graph_invoke_per_mention(fresh_embedders, monkeypatch, embedding):
    from test_fused import name_model

    from evals.datasets import load_dataset
    from graph import Context, graph
    from tools import embeddings

    from fakes import BagOfWordsEmbeddings, TableScorer

    data = Path(__file__).parent / "data"
    examples = [ex for ex in load_dataset(str(data / "wikimel_small.json"), None).examples if ex.inputs]
    llm = name_model(Michael_Jordan=-0.5, Paris_Hilton=-0.2, Jordan=-3.0)
    emb = BagOfWordsEmbeddings() if embedding == "bag" else "embedded"
    ctx = Context(linker_model=llm, embedding_model=emb, verifier=TableScorer({}), gate_threshold=0.97)
    reference = [graph.invoke(dict(ex.inputs), context=ctx) for ex in examples]
    llm_calls = len(llm.calls)
    assert 0 < llm_calls  # some mentions ask the LLM, so the comparison covers both kinds

    embeddings._cached.clear()  # a fresh actor: nothing in memory
    llm.calls.clear()
    linker = _linker(ctx, monkeypatch)
    embedder = embeddings.get_embedder(linker.ctx.embedding_model)
    items = [(ex.id, dict(ex.inputs), None) for ex in examples]
    got = linker.link_many(items)
    after_warm = embedder.computed
    assert after_warm > 0
    from evals.batch import result_of

    want = [result_of(ex.id, dict(ex.inputs), out, None, trace=False) for ex, out in zip(examples, reference)]
    assert [(r["id"], r["entity"], r["status"], r["stop_round"], r["confidence"], r["error"]) for r in got] == \
        [(r["id"], r["entity"], r["status"], r["stop_round"], r["confidence"], r["error"]) for r in want]
    assert len(linker.ctx.linker_model.calls) == llm_calls  # the same mentions asked the LLM


def test_warm_embeds_round_one_texts_once(fresh_embedders):
    from evals.batch import warm_embeddings
    from evals.datasets import load_dataset
    from graph import Context
    from tools import embeddings

    from fakes import BagOfWordsEmbeddings

    data = Path(__file__).parent / "data"
    inputs = [ex.inputs for ex in load_dataset(str(data / "wikimel_small.json"), None).examples if ex.inputs]
    ctx = Context(embedding_model=BagOfWordsEmbeddings())
    n = warm_embeddings(ctx, inputs + [{"mention": 3}])  # a bad record is skipped, not raised
    emb = embeddings.get_embedder(ctx.embedding_model)
    assert n == emb.computed > len(inputs)
    from tools.features import candidate_features
    from tools.texts import query_text

    for inp in inputs:  # round 1 of every mention now embeds nothing
        candidate_features(inp["mention"], inp["context"], inp["candidates"], emb)
    assert emb.computed == n
    assert warm_embeddings(ctx, inputs) == 0
    assert query_text("a", "") == "a"


def test_warm_embeds_the_verifier_texts_and_defers_each_mentions_clue_texts(fresh_embedders, monkeypatch):
    """With precomputed image descriptions: the batch's one pass embeds the verifier's texts; a mention's
    clue-round texts are embedded together (one model call) when its first clue round asks, and never for
    a mention that stops at round 1; the answers are those of the graph without the warm-up."""
    from test_fused import name_model

    from evals.batch import visual_parts, visual_texts, warm_embeddings
    from evals.datasets import load_dataset
    from graph import Context, graph
    from tools import embeddings

    from fakes import BagOfWordsEmbeddings

    data = Path(__file__).parent / "data"
    examples = [ex for ex in load_dataset(str(data / "wikimel_small.json"), None).examples if ex.inputs]
    ctx = Context(linker_model=name_model(Michael_Jordan=-0.5, Paris_Hilton=-0.2, Jordan=-3.0),
                  embedding_model=BagOfWordsEmbeddings(), gate_threshold=0.97)  # the offline text verifier
    reference = [graph.invoke(dict(ex.inputs), context=ctx) for ex in examples]
    rounds = [max(t["round"] for t in out["trace"]) for out in reference]
    assert max(rounds) > 1 and min(rounds) == 1  # some mentions ran clue rounds, some did not
    texts = {ex.id: visual_texts(ctx, ex.inputs) for ex in examples}
    assert texts["101"] == ["a man holding a basketball. person. basketball, sport. BULLS 23",  # the verifier's
                            "BULLS 23", "BULLS 23. person", "BULLS 23. person. basketball, sport",  # the rounds'
                            "BULLS 23. person. basketball, sport. a man holding a basketball"]
    assert visual_parts(ctx, examples[0].inputs) == (texts[examples[0].id][:1], texts[examples[0].id][1:])
    assert texts["105"] == []  # an empty description
    assert visual_texts(ctx, {**examples[0].inputs, "image": "a.jpg"}) == []  # image files: extracted per round

    embeddings._cached.clear()
    emb = embeddings.get_embedder(ctx.embedding_model)
    warm_embeddings(ctx, [ex.inputs for ex in examples])
    calls = []
    real = emb._compute
    monkeypatch.setattr(emb, "_compute", lambda missing: (calls.append(list(missing)), real(missing))[1])
    deferred = {t for ex in examples for t in visual_parts(ctx, ex.inputs)[1]}
    got = []
    for ex, r in zip(examples, rounds):
        calls.clear()
        got.append(graph.invoke(dict(ex.inputs), context=ctx))
        if r == 1:
            assert calls == [], ex.id  # round 1 found everything in memory; no clue text was embedded
        else:  # at most one call (none when another mention's group held its texts), of clue texts only
            assert len(calls) <= 1 and all(set(c) <= deferred for c in calls), ex.id
    needed = {t for ex, r in zip(examples, rounds) if r > 1 for t in visual_parts(ctx, ex.inputs)[1]}
    assert not emb.missing(sorted(needed))
    # a round-1 mention's group that shares no text with a needed one is never embedded
    alone = {t for ex, r in zip(examples, rounds) if r == 1
             for t in visual_parts(ctx, ex.inputs)[1] if not set(visual_parts(ctx, ex.inputs)[1]) & needed}
    assert "BULLS 23" in alone and set(emb.missing(sorted(alone))) == alone
    assert [(o["entity"], o["status"], o.get("confidence")) for o in got] == \
        [(o["entity"], o["status"], o.get("confidence")) for o in reference]


def test_deferred_texts_are_embedded_together_once(fresh_embedders):
    from tools.embeddings import CachedEmbedder

    from fakes import BagOfWordsEmbeddings

    emb = CachedEmbedder(BagOfWordsEmbeddings(), maxsize=100)
    emb.defer(["a b", "a b c", "", "a b c d"])
    assert emb.computed == 0
    one = emb.embed(["a b c"])[0]
    assert emb.computed == 3 and not emb.missing(["a b", "a b c", "a b c d"])  # the group, in one call
    emb.embed(["a b c d", "a b"])
    assert emb.computed == 3  # nothing again
    emb.defer(["x", "x y"])
    emb.defer(["x", "x z"])  # "x" in two groups: both come with it
    emb.embed(["x"])
    assert emb.computed == 6 and not emb.missing(["x y", "x z"])
    assert np.allclose(one, CachedEmbedder(BagOfWordsEmbeddings()).embed(["a b c"])[0])
    for i in range(80):  # beyond the memory's size: forgotten, not kept forever
        emb.defer([f"t{i}", f"t{i} u"])
    assert 0 < len(emb._later) <= 100


def test_an_unwritable_cache_folder_degrades_to_memory(tmp_path, monkeypatch):
    from tools import embeddings

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("I2CR_CACHE_DIR", str(blocker))  # <blocker>/embeddings cannot be created
    monkeypatch.delenv(embeddings.EMBED_CACHE_ENV, raising=False)
    with pytest.warns(UserWarning, match="entity-vector cache .* cannot be used"):
        assert embeddings.vector_store_for("embedded") is None
