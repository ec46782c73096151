"""The knowledge base's stored entity vectors handed to the linker (tools/kb.py: share_entity_vectors).

A fake bag-of-words embedder is registered under a model spec (``huggingface:bag``, or ``embedded``
with a chosen package version), so that the KB and the linker name the same model by its spec, as
in a real run; it records every text it embeds. The persistent entity-vector store is off, so that
every vector the linker does not compute comes from the KB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graph import Context, graph
from tools import embeddings
from tools import kb as kbmod
from tools.candidates import normalize_candidates
from tools.errors import ConfigError
from tools.features import ALL_FEATURES, candidate_features
from tools.kb import KnowledgeBase, retrieve_candidates
from tools.texts import entity_text, mention_text, name_text

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

RECORDS = [
    {"qid": "Q1", "name": "Anna Berg", "desc": "Name: Anna Berg. Sex: female. Occupation: politician."},
    {"qid": "Q2", "name": "Carl Berg", "desc": "Name: Carl Berg. Sex: male. Occupation: painter."},
    {"qid": "Q3", "name": "Berg", "desc": "Name: Berg. a mountain in the Alps"},
    {"qid": "Q4", "name": "Ingrid_Berg_(singer)", "desc": "Name: Ingrid Berg. Sex: female. Occupation: singer."},
    {"qid": "Q5", "name": "Berg River", "desc": ""},
]
MENTIONS = [("Berg", "Berg said in 2011 that she would run again for the party."),
            ("Berg", "the painter Carl Berg showed his landscapes"),
            ("Berg", "they climbed the Berg in the Alps"),
            ("Ingrid Berg", "Ingrid Berg sang at the festival")]


class RecordingBag(BagOfWordsEmbeddings):
    """Bag of words that records what it embeds (documents: the linker's path; queries: the KB search)."""

    def __init__(self):
        self.documents: list[str] = []
        self.queries: list[str] = []

    def embed_documents(self, texts):
        self.documents.extend(texts)
        return super().embed_documents(texts)

    def embed_query(self, text):
        self.queries.append(text)
        return super().embed_query(text)


@pytest.fixture
def fake(tmp_path, monkeypatch) -> RecordingBag:
    """A fresh RecordingBag that ``huggingface:bag`` and ``embedded`` load; no persistent vector store."""
    model = RecordingBag()

    def load(provider, name, *rest):
        assert provider in ("huggingface", "embedded") and name in ("bag", ""), (provider, name)
        return model

    monkeypatch.setattr(embeddings, "_load", load)
    monkeypatch.setattr(embeddings, "_cached", {})
    monkeypatch.setattr(kbmod, "_open", {})
    monkeypatch.setattr(embeddings, "_embedded_version", lambda: "1.0")
    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(embeddings.EMBED_CACHE_ENV, "off")
    monkeypatch.delenv(kbmod.KB_VECTORS_ENV, raising=False)
    return model


def build(tmp_path: Path, spec: str = "huggingface:bag", records=RECORDS) -> Path:
    path = tmp_path / "kb"
    KnowledgeBase(path=path, embeddings=spec).ingest(records)
    return path


def fresh_memory() -> None:
    """A new process's state: no embedder, no open KB."""
    embeddings._cached.clear()
    kbmod._open.clear()


def without_names(embedded: list[str], mention: str, cands: list[dict]) -> list[str]:
    """The embedded texts but the mention alone and the names alone (``name_sim``'s texts): the query
    and entity texts."""
    names = {mention_text(mention)} | ({name_text(c) for c in cands} - {entity_text(c) for c in cands})
    return [t for t in embedded if t not in names]


def linker_embeds(fake: RecordingBag, mention: str, context: str, ctx) -> tuple[list[str], list[dict]]:
    """Retrieve as the retrieve node does, compute the fused linker's features; the query and entity texts
    the model embedded (:func:`without_names`)."""
    rows = retrieve_candidates(mention, context, ctx)
    cands = normalize_candidates(rows, max_name_chars=None)
    fake.documents.clear()
    candidate_features(mention, context, cands, embeddings.get_embedder(ctx.embedding_model))
    return without_names(list(fake.documents), mention, cands), cands


def test_linker_takes_the_kb_vectors_instead_of_embedding_the_candidates(fake, tmp_path):
    ctx = Context(embedding_model="huggingface:bag", kb_path=str(build(tmp_path)), top_k=5)
    fresh_memory()
    assert KnowledgeBase.from_context(ctx).vectors_id == "huggingface:bag|text:prose-v1"
    embedded, cands = linker_embeds(fake, *MENTIONS[0], ctx)
    texts = [entity_text(c) for c in cands]
    assert len(cands) == 5
    # the query is embedded; of the candidates only the two whose text the linker writes differently
    # from the KB: a name it cleans ("Ingrid Berg (singer). ...") and an empty description ("Berg River")
    assert embedded[0] == "Berg. " + MENTIONS[0][1]
    # name_sim's texts come from the KB too: every name alone (stored where it is not the entity text:
    # all five here, "Berg River" as the name without the KB's trailing ". "), and the mention alone
    # "Berg" is Q3's name. "Berg River" is also that candidate's entity text: from its name vector
    ingrid = "Ingrid Berg (singer). Ingrid Berg is a singer."  # attributes written as prose (tools.descriptions)
    assert sorted(fake.documents) == sorted(["Berg. " + MENTIONS[0][1], ingrid])
    assert embedded[1:] == [ingrid]
    assert embeddings.get_embedder(ctx.embedding_model).computed == 2
    assert sum(t not in embedded for t in texts) == 4
    # the shared vectors are those the model computes for those texts (entity texts and names alone)
    reused = [t for t in texts if t not in embedded] + [name_text(c) for c in cands]
    mine = embeddings.get_embedder(ctx.embedding_model).embed(reused)
    own = np.asarray(BagOfWordsEmbeddings().embed_documents(reused), np.float32)
    assert np.allclose(mine, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-7)


def test_no_sharing_when_switched_off(fake, tmp_path, monkeypatch):
    ctx = Context(embedding_model="huggingface:bag", kb_path=str(build(tmp_path)), top_k=5)
    monkeypatch.setenv(kbmod.KB_VECTORS_ENV, "off")
    fresh_memory()
    embedded, cands = linker_embeds(fake, *MENTIONS[0], ctx)
    assert len(embedded) == 1 + len(cands)
    monkeypatch.setenv(kbmod.KB_VECTORS_ENV, "sometimes")
    with pytest.raises(ConfigError, match="I2CR_KB_VECTORS='sometimes': expected on or off"):
        retrieve_candidates(*MENTIONS[0], ctx)


def test_a_kb_built_by_another_model_version_is_not_shared(fake, tmp_path, monkeypatch):
    path = build(tmp_path, spec="embedded")  # package version 1.0
    monkeypatch.setattr(embeddings, "_embedded_version", lambda: "2.0")  # upgraded since
    ctx = Context(embedding_model="embedded", kb_path=str(path), top_k=5)
    fresh_memory()
    assert KnowledgeBase.from_context(ctx).vectors_id == "embedded:1.0|text:prose-v1"
    embedded, cands = linker_embeds(fake, *MENTIONS[0], ctx)
    assert len(embedded) == 1 + len(cands)
    # ingesting with 2.0 adds vectors of another model: the KB no longer vouches for any of them
    KnowledgeBase(path=path, embeddings="embedded").ingest([{"qid": "Q6", "name": "Alban Berg",
                                                             "desc": "Name: Alban Berg. Occupation: composer."}])
    for version in ("1.0", "2.0"):
        monkeypatch.setattr(embeddings, "_embedded_version", lambda v=version: v)
        fresh_memory()
        assert KnowledgeBase.from_context(ctx).vectors_id is None
        embedded, cands = linker_embeds(fake, *MENTIONS[0], ctx)
        assert len(embedded) == 1 + len(cands)


def test_an_unchanged_reingest_keeps_the_id_and_an_empty_kb_takes_it(fake, tmp_path, monkeypatch):
    path = build(tmp_path, spec="embedded")
    monkeypatch.setattr(embeddings, "_embedded_version", lambda: "2.0")
    stats = KnowledgeBase(path=path, embeddings="embedded").ingest(RECORDS)  # nothing written
    assert stats.unchanged == len(RECORDS)
    assert KnowledgeBase(path=path, embeddings="embedded").vectors_id == "embedded:1.0|text:prose-v1"


def test_a_kb_written_before_ids_were_recorded_is_not_shared(fake, tmp_path):
    path = build(tmp_path)
    kb = KnowledgeBase(path=path, embeddings="huggingface:bag")
    kb._collections(create=False)
    old = {k: v for k, v in kb._entities.metadata.items() if k != "i2cr_embedding_id"}
    kb._entities.modify(metadata=old)  # what an older i2cr wrote
    ctx = Context(embedding_model="huggingface:bag", kb_path=str(path), top_k=5)
    fresh_memory()
    assert KnowledgeBase.from_context(ctx).vectors_id is None
    embedded, cands = linker_embeds(fake, *MENTIONS[0], ctx)
    assert len(embedded) == 1 + len(cands)


def test_an_embedder_object_is_never_given_another_process_vectors(fake, tmp_path):
    """An ``Embeddings`` object has no model id: the KB's vectors cannot be known to be its own."""
    path = build(tmp_path)
    obj = RecordingBag()
    ctx = Context(embedding_model=obj, kb_path=str(path), top_k=5)
    fresh_memory()
    kb = KnowledgeBase.from_context(ctx, embeddings="huggingface:bag")
    rows = kb.search(*MENTIONS[0], k=5, with_vectors=True)
    assert kbmod.share_entity_vectors(kb, rows, ctx) == 0
    assert all("vector" not in r for r in rows)
    assert embeddings.embedding_id(obj) is None


def weights_file(tmp_path: Path) -> str:
    """Fused weights on the dense similarity and two name features (standardisation off)."""
    coef = {"dense": 6.0, "name_exact": 1.0, "gender_text": 1.0}
    model = {"coef": [coef.get(f, 0.0) for f in ALL_FEATURES], "intercept": 0.0,
             "mean": [0.0] * len(ALL_FEATURES), "scale": [1.0] * len(ALL_FEATURES)}
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"features": list(ALL_FEATURES), "text": model, "clue": model, "llm_weight": 1.0}))
    return str(path)


def graph_ctx(kb_path, tmp_path: Path, **extra) -> Context:
    """A graph context on ``huggingface:bag`` and the KB at ``kb_path``: fused weights on the dense
    similarity, a scripted LLM without an opinion (its answer names no candidate: it counts for nothing), no image
    scorer."""
    return Context(embedding_model="huggingface:bag", kb_path=str(kb_path), fusion_weights=weights_file(tmp_path),
                   linker_model=scripted(*["no idea"] * 20), verifier=TableScorer({}), llm_scoring="choice",
                   **extra)


def test_the_graph_answers_the_same_with_and_without_the_kb_vectors(fake, tmp_path, monkeypatch):
    path = build(tmp_path)
    results = {}
    for switch in ("on", "off"):
        monkeypatch.setenv(kbmod.KB_VECTORS_ENV, switch)
        fresh_memory()
        fake.documents.clear()
        outs = []
        for mention, context in MENTIONS:
            ctx = graph_ctx(path, tmp_path, top_k=5)
            out = graph.invoke({"mention": mention, "context": context}, context=ctx)
            links = [t for t in out["trace"] if t["step"] == "link"]
            outs.append((out["entity"], out["status"], out.get("confidence"), json.dumps(links, sort_keys=True)))
        results[switch] = (outs, list(fake.documents))
    (on, embedded_on), (off, embedded_off) = results["on"], results["off"]
    assert on == off
    assert [o[0]["qid"] for o in on] == ["Q3", "Q2", "Q3", "Q4"]  # the dense evidence told them apart
    shared = {entity_text(r) for r in RECORDS} - {"Ingrid Berg (singer). Ingrid Berg is a singer.", "Berg River"}
    assert not shared & set(embedded_on)  # never embedded with the KB's vectors shared
    assert shared & set(embedded_off)


# ---- candidates given with the input: their KB vectors by qid (share_listed_vectors) -------------

LISTED = [{"qid": "Q1", "name": "Anna Berg", "desc": RECORDS[0]["desc"]},
          {"qid": "Q2", "name": "Carl Berg", "desc": "a painter"},  # another text than the KB's: embedded
          {"qid": "Q3", "name": "Berg", "desc": RECORDS[2]["desc"]},
          {"qid": "Q99", "name": "Berg Lake", "desc": "a lake"},  # not in the KB: embedded
          {"name": "Berg Hall", "desc": "a hall"}]  # no qid: embedded


def listed_run(fake: RecordingBag, ctx, mention="Berg", context="Berg said in 2011 that she would run again"):
    """The graph's output on LISTED, and the query and entity texts the model embedded meanwhile."""
    fake.documents.clear()
    out = graph.invoke({"mention": mention, "context": context, "candidates": LISTED}, context=ctx)
    return out, without_names(list(fake.documents), mention, LISTED)


def test_listed_candidates_take_the_kb_vectors_of_their_qids(fake, tmp_path):
    ctx = graph_ctx(build(tmp_path), tmp_path)
    fresh_memory()
    out, embedded = listed_run(fake, ctx)
    assert next(t for t in out["trace"] if t["step"] == "retrieve")["source"] == "input"
    # the query and the three candidates whose text the KB does not hold; never Q1 or Q3
    assert entity_text(LISTED[0]) not in embedded and entity_text(LISTED[2]) not in embedded
    assert sorted(embedded[1:]) == sorted(entity_text(c) for c in (LISTED[1], LISTED[3], LISTED[4]))
    assert embedded[0].startswith("Berg. Berg said")


def test_listed_vectors_give_the_same_answer_and_follow_the_switch(fake, tmp_path, monkeypatch):
    path = build(tmp_path)
    results = {}
    for switch in ("on", "off"):
        monkeypatch.setenv(kbmod.KB_VECTORS_ENV, switch)
        fresh_memory()
        fake.documents.clear()
        ctx = graph_ctx(path, tmp_path)
        out, embedded = listed_run(fake, ctx, "Berg", "they climbed the Berg in the Alps")
        links = [t for t in out["trace"] if t["step"] == "link"]
        results[switch] = ((out["entity"], out["status"], json.dumps(links, sort_keys=True)), embedded)
    assert results["on"][0] == results["off"][0]
    assert results["on"][0][0]["qid"] == "Q3"
    assert len(results["off"][1]) == 1 + len(LISTED) and len(results["on"][1]) == 1 + 3


def test_no_kb_or_an_unreadable_kb_links_as_before(fake, tmp_path):
    for kb_path in (tmp_path / "none", tmp_path / "a-file"):
        if kb_path.name == "a-file":
            kb_path.write_text("not a knowledge base")
        fresh_memory()
        fake.documents.clear()
        ctx = graph_ctx(kb_path, tmp_path)
        assert kbmod.share_listed_vectors(LISTED, ctx) == 0
        out, embedded = listed_run(fake, ctx)
        assert out["entity"] is not None and len(embedded) == 1 + len(LISTED)
    assert not (tmp_path / "none").exists()  # no empty store left behind


def test_a_batch_takes_the_listed_vectors_in_one_lookup(fake, tmp_path, monkeypatch):
    from evals.batch import warm_embeddings

    ctx = Context(embedding_model="huggingface:bag", kb_path=str(build(tmp_path)))
    fresh_memory()
    calls = []
    real = KnowledgeBase.stored_rows
    monkeypatch.setattr(KnowledgeBase, "stored_rows", lambda self, qids: calls.append(list(qids)) or real(self, qids))
    inputs = [{"mention": "Berg", "context": c, "candidates": LISTED} for c in ("one text", "another text")]
    # two queries, the three entity texts the KB lacks, and the names alone of the two entities not in the
    # KB; the KB gives the other names (Q2's too: its name is the KB's, its description is not) and
    # "Berg", the mention alone, which is Q3's name
    assert warm_embeddings(ctx, inputs) == 2 + 3 + 2
    assert len(calls) == 1
    # linking a mention of the batch then finds every listed text in memory: no second lookup
    assert kbmod.share_listed_vectors(LISTED, ctx) == 0
    assert len(calls) == 1


# ---- the names alone (name_sim's texts) stored by the KB ----------------------------------------

def test_the_kb_stores_the_names_alone_where_they_are_another_text(fake, tmp_path):
    path = build(tmp_path)
    # ingest embedded the entity texts, then the names alone in a pass of their own
    assert fake.documents[len(RECORDS):] == ["Anna Berg", "Carl Berg", "Berg", "Ingrid Berg (singer)", "Berg River"]
    rows = {r["qid"]: r for r in KnowledgeBase(path=path, embeddings="huggingface:bag").stored_rows(
        [r["qid"] for r in RECORDS])}
    model = BagOfWordsEmbeddings()
    for rec in RECORDS:
        text, vec = rows[rec["qid"]]["name_vector"]
        assert text == name_text(rec)
        want = np.asarray(model.embed_documents([text])[0], np.float32)
        assert np.allclose(vec, want / np.linalg.norm(want), atol=1e-7)
    # without a description too: the KB's entity text is "Berg River." (the linker's is the name alone)
    assert kbmod.entity_text(RECORDS[4]) == "Berg River." and kbmod.own_name_text(RECORDS[4]) == "Berg River"
    assert kbmod.own_name_text({"name": "  ", "desc": "x"}) is None
    assert kbmod.unpack_vector("not base64!") is None and kbmod.unpack_vector(kbmod.pack_vector(np.ones(4)), 3) is None


KNOWN = [{"qid": r["qid"], "name": r["name"], "desc": r["desc"]} for r in RECORDS if r["qid"] in ("Q1", "Q2", "Q3")]


def test_listed_kb_candidates_cost_only_the_mention_own_texts(fake, tmp_path):
    ctx = graph_ctx(build(tmp_path), tmp_path)
    fresh_memory()
    fake.documents.clear()
    out = graph.invoke({"mention": "A. Berg", "context": "A. Berg said she would run again",
                        "candidates": KNOWN}, context=ctx)
    assert out["entity"] is not None
    # the query and the mention alone: the candidates' entity texts and names alone are the KB's
    assert sorted(fake.documents) == sorted(["A. Berg. A. Berg said she would run again", "A. Berg"])


def forget_name_vectors(path: Path) -> None:
    """Make the KB at ``path`` one ingested before names were stored (no ``name_vec*`` keys)."""
    kb = KnowledgeBase(path=path, embeddings="huggingface:bag")
    kb.count()
    ids = kb._entities.get(include=[])["ids"]
    kb._entities.update(ids=ids, metadatas=[{"name_vec": None, "name_vec_text": None}] * len(ids))
    assert all("name_vec" not in m for m in kb._entities.get(include=["metadatas"])["metadatas"])


def test_an_older_kb_without_name_vectors_links_as_before(fake, tmp_path):
    path = build(tmp_path)
    results = {}
    for kind in ("new", "old"):
        if kind == "old":
            forget_name_vectors(path)
        fresh_memory()
        fake.documents.clear()
        ctx = graph_ctx(path, tmp_path)
        out = graph.invoke({"mention": "A. Berg", "context": "A. Berg said she would run again",
                            "candidates": KNOWN}, context=ctx)
        links = [t for t in out["trace"] if t["step"] == "link"]
        results[kind] = ((out["entity"], out["status"], json.dumps(links, sort_keys=True)), list(fake.documents))
        stored = KnowledgeBase(path=path, embeddings="huggingface:bag").stored_rows(["Q1"])[0]["name_vector"]
        assert (stored is None) == (kind == "old")
    assert results["old"][0] == results["new"][0]
    # the older KB still gives the entity texts; the names alone are embedded, as before
    assert sorted(results["old"][1]) == sorted(["A. Berg. A. Berg said she would run again", "A. Berg",
                                                "Anna Berg", "Carl Berg", "Berg"])
    fresh_memory()
    rows = KnowledgeBase(path=path, embeddings="huggingface:bag").search("Berg", "the Alps", k=5, with_vectors=True)
    assert all(r["name_vector"] is None for r in rows)


def test_a_kb_whose_texts_were_written_as_attribute_lists_is_not_shared(fake, tmp_path):
    """A KB ingested before entity texts were written as prose (session 15) recorded the bare model id: its
    vectors are of ``"name. Name: ... Sex: ..."`` texts, so the linker does not take them for its own."""
    path = build(tmp_path)
    kb = KnowledgeBase(path=path, embeddings="huggingface:bag")
    kb._collections(create=False)
    kb._entities.modify(metadata={**kb._entities.metadata, "i2cr_embedding_id": "huggingface:bag"})
    ctx = Context(embedding_model="huggingface:bag", kb_path=str(path), top_k=5)
    fresh_memory()
    assert KnowledgeBase.from_context(ctx).vectors_id == "huggingface:bag"
    embedded, cands = linker_embeds(fake, *MENTIONS[0], ctx)
    assert len(embedded) == 1 + len(cands)
    assert "Anna Berg. Anna Berg is a politician." in embedded  # the linker's own text, embedded by it
