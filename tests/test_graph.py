"""The compiled graph driven through every path with fake models."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from graph import Context, build_graph, graph, link
from tools.errors import ConfigError, InputError, ModelError

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
    {"qid": "Q1", "name": "Jordan River", "desc": "river in the Middle East"},
]
INPUT = {"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls", "candidates": CANDS}
DESC = {"Caption": "a man holding a basketball", "OCR text": "BULLS 23",
        "Objects": [{"object_name": "person"}, {"object_name": "person"}], "Tags": "basketball; sport; indoor"}


def run(model, scorer=None, inputs=None, **settings):
    ctx = Context(linker_mode="llm", linker_model=model, embedding_model=BagOfWordsEmbeddings(),
                  verifier=scorer or TableScorer({}), reflection_threshold=settings.pop("alpha", 0.0), **settings)
    return graph.invoke({**INPUT, **(inputs or {})}, context=ctx)


def links(out):
    return [t for t in out["trace"] if t["step"] == "link"]


def reflections(out):
    return [t for t in out["trace"] if t["step"] == "reflect"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "white").save(path)
    return str(path)


def test_round1_early_exit_when_image_agrees(image):
    model = scripted("1")
    scorer = TableScorer({"Michael Jordan": 0.9})
    out = run(model, scorer, {"image": image, "image_desc": DESC})
    assert out["entity"]["qid"] == "Q41421"
    assert out["status"] == "text_verified" and out["stop_round"] == 1
    assert out["usage"]["llm_calls"] == 1 and len(model.prompts) == 1
    assert not out["clues"]
    assert scorer.calls == ["Michael Jordan"]


def test_rechoice_after_failed_reflection_excludes_the_pick():
    # alpha between the two picks' scores: "Jordan River" (no word overlap with the bulls context) fails
    model = scripted("3", "1")
    out = run(model, alpha=0.3)
    assert out["entity"]["name"] == "Michael Jordan"
    assert len(model.prompts) == 2
    assert "Ruled out" not in model.prompts[0] and "3. Jordan River" in model.prompts[0]
    assert "Ruled out already (no longer in the list): Jordan River." in model.prompts[1]
    assert "Jordan River —" not in model.prompts[1] and "2. Jordan — country" in model.prompts[1]
    first, second = reflections(out)
    assert [t["pick"]["name"] for t in links(out)] == [t["pick"]["name"] for t in reflections(out)] == [
        "Jordan River", "Michael Jordan"]
    assert first["reflection_passed"] is False and second["reflection_passed"] is True
    assert first["reflection_score"] < 0.3 <= second["reflection_score"]
    assert out["status"] == "text_only"


def test_best_scoring_pick_kept_when_no_pick_passes():
    model = scripted("3", "2", "1", "1")
    out = run(model, alpha=0.99, max_rechoices=2)
    assert len(model.prompts) == 3  # one ask + two re-choices
    scores = {t["pick"]["name"]: t["reflection_score"] for t in reflections(out)}
    assert len(scores) == len(links(out)) == 3
    assert out["entity"]["name"] == max(scores, key=scores.get) == "Michael Jordan"
    assert "best-scoring pick kept" in reflections(out)[-1]["note"]


def test_verification_fails_until_the_nth_clue(image):
    # text round and OCR round pick the country; the objects round picks the player, whom the image confirms
    model = scripted("2", "2", "1")
    scorer = TableScorer({"Michael Jordan": 0.9, "Jordan": 0.1})
    out = run(model, scorer, {"image": image, "image_desc": DESC})
    assert out["status"] == "clue_verified:objects" and out["stop_round"] == 3
    assert out["entity"]["name"] == "Michael Jordan"
    assert [c["type"] for c in out["clues"]] == ["ocr", "objects"]
    assert "BULLS 23" in model.prompts[1] and "person x2" in model.prompts[2]
    assert "BULLS 23" not in model.prompts[0]
    assert scorer.calls == ["Jordan", "Michael Jordan"]  # the repeated pick's score is reused


def test_all_clues_fail_falls_back_to_round1_answer(image):
    model = scripted("2", "1", "1", "1", "1")
    out = run(model, TableScorer({}, default=0.1), {"image": image, "image_desc": DESC})
    assert out["status"] == "fallback"
    assert out["entity"]["name"] == "Jordan" == out["round1_entity"]["name"]
    assert out["stop_round"] == 5 and len(model.prompts) == 5


def test_fallback_best_takes_the_answer_the_image_agreed_with_most(image):
    model = scripted("2", "1", "1", "1", "1")
    scorer = TableScorer({"Jordan": 0.1, "Michael Jordan": 0.4})
    out = run(model, scorer, {"image": image, "image_desc": DESC}, fallback="best")
    assert out["status"] == "fallback" and out["entity"]["name"] == "Michael Jordan"


def test_max_rounds_and_clue_order_are_configuration(image):
    model = scripted("2", "2", "2")
    out = run(model, TableScorer({}), {"image": image, "image_desc": DESC},
              clue_order=["caption", "ocr"], max_rounds=1)
    assert [c["type"] for c in out["clues"]] == ["caption"]
    assert out["stop_round"] == 2 and len(model.prompts) == 2


def test_newest_clue_only_when_not_accumulating(image):
    model = scripted("2", "2", "2")
    run(model, TableScorer({}), {"image": image, "image_desc": DESC}, accumulate_clues=False, max_rounds=2)
    assert "person x2" in model.prompts[2] and "BULLS 23" not in model.prompts[2]
    model = scripted("2", "2", "2")
    run(model, TableScorer({}), {"image": image, "image_desc": DESC}, accumulate_clues=True, max_rounds=2)
    assert "person x2" in model.prompts[2] and "BULLS 23" in model.prompts[2]


def test_empty_clue_costs_no_round(image):
    desc = {**DESC, "OCR text": ""}
    model = scripted("2", "1")
    out = run(model, TableScorer({"Michael Jordan": 0.9}), {"image": image, "image_desc": desc})
    assert out["status"] == "clue_verified:objects" and out["stop_round"] == 2
    assert any(t["step"] == "clue" and t["clue"] == "ocr" and "empty" in t["note"] for t in out["trace"])


def test_no_image_text_answer_stands():
    model = scripted("1")
    scorer = TableScorer({})
    out = run(model, scorer)
    assert out["status"] == "text_only" and out["entity"]["name"] == "Michael Jordan"
    assert out["stop_round"] == 1 and scorer.calls == [] and len(model.prompts) == 1


def test_nil_answer():
    out = run(scripted("nil"))
    assert out["entity"] is None and out["status"] == "nil"


def test_nil_not_offered_when_disallowed():
    model = scripted("nil", "nil", "nil", "nil")
    out = run(model, allow_nil=False, unparseable_fallback="nil")
    assert "nil" not in model.prompts[0].split("Candidates:")[1]
    assert out["entity"] is None and len(model.prompts) == 4


@pytest.mark.parametrize("fallback,expected", [("top_candidate", "Michael Jordan"), ("nil", None)])
def test_garbage_answers_never_invent_an_entity(fallback, expected):
    model = scripted("I cannot say.", "42", "Scottie Pippen", "")
    out = run(model, unparseable_fallback=fallback)
    assert len(model.prompts) == 4
    assert all(t["outcome"] == "unparseable" for t in links(out))
    assert 'Your previous answer "I cannot say." could not be used' in model.prompts[1]
    assert (out["entity"] or {}).get("name") == expected


def test_messy_answers_are_parsed():
    out = run(scripted("Candidate **2** (Jordan) is correct."))
    assert out["entity"]["name"] == "Jordan"
    out = run(scripted("The mention refers to Michael Jordan."))
    assert out["entity"]["name"] == "Michael Jordan"


def test_numbers_refer_to_the_list_shown_in_each_attempt():
    # "1" first means Michael Jordan; once he is ruled out, "1" means Jordan and "3" exists no more
    model = scripted("1", "3", "1")
    out = run(model, alpha=0.99, max_rechoices=2)
    assert [t["outcome"] for t in links(out)] == ["entity", "unparseable", "entity"]
    assert [t["pick"] and t["pick"]["name"] for t in links(out)] == ["Michael Jordan", None, "Jordan"]
    assert out["entity"]["name"] == "Michael Jordan"  # best reflection score of the two picks


@pytest.mark.parametrize("inputs,message", [
    ({"mention": "  "}, "mention: must be a non-empty string"),
    ({"context": None}, "context: missing"),
    ({"candidates": [{"qid": "Q1", "desc": "no name"}]}, "candidates[0]: candidate has no name"),
    ({"candidates": "Jordan"}, "candidates: expected a list"),
    ({"image_desc": "{not a dict"}, "image_desc:"),
])
def test_invalid_input_is_a_clear_error(inputs, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run(scripted("1"), inputs=inputs)


def test_unusable_image_is_a_clear_error_with_strict_image(tmp_path):
    # without strict_image it is dropped with a warning (tests/test_hostile_images.py)
    with pytest.raises(InputError, match="image: file not found: /no/such/photo.jpg"):
        run(scripted("1"), inputs={"image": "/no/such/photo.jpg"}, strict_image=True)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="not an image format Pillow can read"):
        run(scripted("1"), inputs={"image": str(bad)}, strict_image=True)


def test_model_failure_names_the_model():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    class Broken(FakeListChatModel):
        def _call(self, *a, **k):
            raise ConnectionError("server said 503")

    with pytest.raises(ModelError, match="linker_model 'Broken' failed: .*server said 503"):
        run(Broken(responses=["1"]))


def test_bad_settings_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="clue_order"):
        Context(clue_order=["ocr", "smell"])
    with pytest.raises(ConfigError, match="linker_model: unknown provider 'anthropic'"):
        graph.invoke(INPUT, context=Context(linker_mode="llm", linker_model="anthropic:claude"))
    monkeypatch.setenv("I2CR_MAX_ROUNDS", "two")
    with pytest.raises(ConfigError, match="I2CR_MAX_ROUNDS"):
        Context()


def test_environment_overrides_defaults_but_not_explicit_values(monkeypatch):
    monkeypatch.setenv("I2CR_LINKER_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # an openai: spec without a key is refused up front
    monkeypatch.setenv("I2CR_REFLECTION_THRESHOLD", "0.5")
    monkeypatch.setenv("I2CR_CLUE_ORDER", "caption,ocr")
    ctx = Context()
    assert ctx.linker_model == "openai:gpt-4o-mini" and ctx.reflection_threshold == 0.5
    assert ctx.clue_order == ["caption", "ocr"]
    assert Context(reflection_threshold=0.7).reflection_threshold == 0.7


def test_candidates_may_be_names_and_duplicates_are_dropped():
    out = run(scripted("2"), inputs={"candidates": ["Michael Jordan", "Jordan", "Jordan"]})
    assert out["entity"] == {"name": "Jordan"}


def test_durable_run_with_checkpointer():
    from langgraph.checkpoint.memory import InMemorySaver

    saver = InMemorySaver()
    durable = build_graph(checkpointer=saver)
    cfg = {"configurable": {"thread_id": "t1"}}
    ctx = Context(linker_mode="llm", linker_model=scripted("1"), embedding_model=BagOfWordsEmbeddings(), reflection_threshold=0.0)
    out = durable.invoke(INPUT, cfg, context=ctx)
    assert out["entity"]["name"] == "Michael Jordan"
    state = durable.get_state(cfg)
    assert state.values["status"] == "text_only" and not state.next


def test_nodes_append_to_the_trace_and_a_new_input_starts_a_new_one():
    from langgraph.checkpoint.memory import InMemorySaver

    durable = build_graph(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "again"}}
    ctx = Context(linker_mode="llm", linker_model=scripted("1", "2"), embedding_model=BagOfWordsEmbeddings(),
                  reflection_threshold=0.0)
    updates = [u for u in durable.stream(INPUT, cfg, context=ctx, stream_mode="updates")]
    link_update = next(u["link_on_text"] for u in updates if "link_on_text" in u)
    assert [t["step"] for t in link_update["trace"]] == ["link"]  # a node returns only its own entry
    first = durable.get_state(cfg).values["trace"]
    assert [t["step"] for t in first] == ["retrieve", "link", "reflect", "verify", "final"]
    second = durable.invoke({**INPUT, "mention": "Bulls"}, cfg, context=ctx)
    assert [t["step"] for t in second["trace"]] == ["retrieve", "link", "reflect", "verify", "final"]
    assert second["trace"][1]["pick"]["name"] == "Jordan"


def test_one_call_helper():
    out = link("Jordan", "Jordan scored 30 points for the Bulls", candidates=CANDS,
               linker_model=scripted("1"), embedding_model=BagOfWordsEmbeddings(), reflection_threshold=0.0)
    assert out["entity"]["qid"] == "Q41421"


def test_graph_shows_every_stage():
    nodes = set(graph.get_graph().nodes)
    assert {"retrieve_candidates", "link_on_text", "reflect", "verify", "clue_round", "finalize", "review"} <= nodes


def test_the_graph_draws_the_method_loop_in_a_dozen_edges():
    edges = {(e.source, e.target, bool(e.conditional)) for e in graph.get_graph().edges}
    assert edges == {
        ("__start__", "retrieve_candidates", False), ("retrieve_candidates", "link_on_text", False),
        ("link_on_text", "reflect", False), ("reflect", "link_on_text", True), ("reflect", "verify", True),
        ("verify", "clue_round", True), ("verify", "finalize", True),
        ("clue_round", "link_on_text", True), ("clue_round", "finalize", True),
        ("finalize", "review", True), ("finalize", "__end__", True), ("review", "__end__", False)}


def test_the_clue_round_names_each_clue_it_tries():
    # OCR and objects are empty in this description: both are tried in one clue round, no round spent on them
    desc = {"Caption": "a man holding a basketball", "OCR text": "", "Objects": []}
    out = run(scripted("2", "1"), TableScorer({"Michael Jordan": 0.9}), {"image_desc": desc},
              clue_order=["ocr", "objects", "caption"])
    clues = [(t["clue"], t["round"], "empty" in t.get("note", "")) for t in out["trace"] if t["step"] == "clue"]
    assert clues == [("ocr", 1, True), ("objects", 1, True), ("caption", 2, False)]
    assert out["status"] == "clue_verified:caption" and out["stop_round"] == 2
    assert [c["type"] for c in out["clues"]] == ["caption"]


def test_image_only_scorer_hands_description_only_records_to_the_text_scorer(image):
    clip_like = TableScorer({"Michael Jordan": 0.99})
    clip_like.needs_image = True
    out = run(scripted("1", "1", "1", "1", "1"), clip_like, {"image_desc": DESC})
    verifies = [t for t in out["trace"] if t["step"] == "verify"]
    assert clip_like.calls == []
    assert verifies[0]["scorer"] == "embedded:clue-text-embedding"
    assert verifies[0]["verification_threshold"] == 0.2
    out = run(scripted("1"), clip_like, {"image": image, "image_desc": DESC})
    assert clip_like.calls == ["Michael Jordan"] and out["status"] == "text_verified"


def test_without_candidates_the_knowledge_base_is_searched(tmp_path):
    from tools.kb import KnowledgeBase

    emb = BagOfWordsEmbeddings()
    kb = KnowledgeBase(path=tmp_path / "kb", embeddings=emb)
    kb.ingest([{"qid": c["qid"], "name": c["name"], "desc": c["desc"]} for c in CANDS], progress=False)
    ctx = dict(kb_path=str(tmp_path / "kb"), top_k=2)
    model = scripted("1")
    out = run(model, inputs={"candidates": None}, **ctx)
    retrieve = out["trace"][0]
    assert retrieve["note"] == "2 candidates from knowledge base"
    assert out["entity"]["qid"] in {c["qid"] for c in CANDS}
    assert model.prompts[0].count(" — ") == 2  # top_k candidates offered
    with pytest.raises(InputError, match="i2cr kb ingest"):
        run(scripted("1"), inputs={"candidates": None}, kb_path=str(tmp_path / "empty"))


@pytest.mark.parametrize("module", ["nodes.link", "nodes.reflect", "nodes.verify", "nodes.retrieve"])
def test_each_node_module_imports_on_its_own(module):
    """A node module imported first (before ``graph``) must not hit a circular import."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}; from graph import graph; print(len(graph.nodes))"],
                          capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 5


def test_a_verifier_that_cannot_use_the_image_in_a_clue_round_ends_the_run_on_the_fallback():
    class FailsLater:
        name, default_threshold, calls = "flaky", 0.5, 0

        def score(self, entity, *, image, image_desc, ctx):
            FailsLater.calls += 1
            if FailsLater.calls > 1:
                raise InputError("image: verifier 'flaky' cannot use it")
            return 0.0

    out = run(scripted("2", "1", "1"), FailsLater(), {"image_desc": DESC})
    verifies = [t for t in out["trace"] if t["step"] == "verify"]
    assert len(verifies) == 2 and "not verified, the text answer stands" in verifies[1]["note"]
    assert out["status"] == "fallback" and out["stop_round"] == 2 and out["entity"]["name"] == "Jordan"
    assert len([t for t in out["trace"] if t["step"] == "clue"]) == 1  # no clue round after it
    assert out["warnings"] == [verifies[1]["note"]]


# ---- reflection as a plain function (tools/reflection.py) ------------------------------------------

def _reflect(attempts, excluded=(), **settings):
    from tools.reflection import reflect_pick

    values = dict(round_no=1, linker_mode="llm", confidence_threshold=0.5, reflection_threshold=0.3,
                  max_rechoices=3, unparseable_fallback="top_candidate", embedding_model=BagOfWordsEmbeddings())
    return reflect_pick(INPUT["mention"], INPUT["context"], CANDS, attempts, list(excluded), **{**values, **settings})


def test_reflect_pick_llm_mode_rules_out_a_pick_below_alpha_then_keeps_the_best():
    country = {"key": "Q810", "outcome": "entity", "raw": "2", "score": None}
    r = _reflect([country])
    assert not r.settled and r.excluded == ["Q810"] and r.attempts[-1]["score"] < 0.3
    assert r.event["event"] == "excluded" and r.event["qid"] == "Q810" and "alpha 0.3" in r.event["reason"]
    player = {"key": "Q41421", "outcome": "entity", "raw": "1", "score": None}
    r2 = _reflect([*r.attempts, player], r.excluded)
    assert r2.settled and r2.answer["qid"] == "Q41421" and r2.note == "passed reflection"
    assert r2.details["reflection_passed"] is True and r2.details["reflection_score"] >= 0.3
    r3 = _reflect([country], max_rechoices=0)  # no re-choice left: the best-scoring pick is the answer
    assert r3.settled and r3.answer["qid"] == "Q810" and "best-scoring pick kept" in r3.note


def test_reflect_pick_fused_mode_keeps_a_pick_below_the_confidence_threshold_and_loads_no_embedder():
    attempt = {"key": "Q1", "outcome": "entity", "raw": "", "score": None, "confidence": 0.2}
    r = _reflect([attempt], linker_mode="fused", embedding_model="no-such-provider:x")
    assert r.settled and r.answer["qid"] == "Q1" and r.excluded == []
    assert r.details["reflection_threshold"] == 0.5 and "below 0.5: kept" in r.note == r.details["note"]


def test_reflect_pick_nil_and_unusable_answers():
    r = _reflect([{"key": None, "outcome": "nil", "raw": "nil", "score": None}])
    assert r.settled and r.answer is None and r.note == "nil" and "nil accepted" in r.details["note"]
    bad = {"key": None, "outcome": "unparseable", "raw": "??", "score": None}
    assert not _reflect([bad]).settled
    assert _reflect([bad], max_rechoices=0).answer["qid"] == "Q41421"
    assert _reflect([bad], max_rechoices=0, unparseable_fallback="nil").answer is None


def test_llm_pick_offers_the_candidates_not_ruled_out_and_maps_the_answer():
    from tools.llm_linker import llm_pick

    model = scripted("2")
    r = llm_pick(model, "Jordan", "Jordan scored 30 points", CANDS, ["Q810"], [{"type": "ocr", "text": "BULLS 23"}],
                 retry_raw="maybe?", max_desc_chars=300, allow_nil=True)
    prompt = model.prompts[-1]
    assert r.outcome == "entity" and r.pick["qid"] == "Q1"  # "2" is the second of the two shown: Jordan River
    assert "1. Michael Jordan" in prompt and "2. Jordan River" in prompt and "2. Jordan —" not in prompt
    assert "Ruled out already (no longer in the list): Jordan." in prompt and "BULLS 23" in prompt
    assert '"maybe?" could not be used' in prompt
    unusable = llm_pick(scripted("the tall one"), "Jordan", "", CANDS, [], [], allow_nil=False)
    assert unusable.outcome == "unparseable" and unusable.pick is None and "failed attempt" in unusable.note


PEOPLE = [
    {"qid": "Q1", "name": "Fred Thompson", "desc": "Name: Fred Thompson. Sex: male. Birth: 1942. Occupation: actor."},
    {"qid": "Q2", "name": "Emma Thompson", "desc": "Name: Emma Thompson. Sex: female. Birth: 1959. Occupation: actress."},
]


@pytest.mark.parametrize("caption, refute, expected", [
    ("a woman smiling at the camera", True, "Emma Thompson"),    # round 1's man is ruled out: round 2's answer
    ("a woman smiling at the camera", False, "Fred Thompson"),   # the reference fallback
    ("a man and a woman at a premiere", True, "Fred Thompson"),  # both: nothing ruled out
    ("a red carpet at a premiere", True, "Fred Thompson"),       # no person words
])
def test_an_answer_the_image_rules_out_gives_way_to_a_clue_rounds_answer(caption, refute, expected):
    """The offline verifier's image text names a woman; round 1 picked a man (``Sex: male``), the caption
    round a woman. Neither is verified (τ 0.99), so the fallback decides: the refuted round-1 answer
    gives way unless ``refute_contradictions`` is off or the image does not rule it out."""
    model = scripted("1", "2", "2")
    ctx = Context(linker_mode="llm", linker_model=model, embedding_model=BagOfWordsEmbeddings(), verifier="embedded",
                  verification_threshold=0.99, reflection_threshold=0.0, refute_contradictions=refute)
    out = graph.invoke({"mention": "Thompson", "context": "Thompson at the premiere", "candidates": PEOPLE,
                        "image_desc": {"Caption": caption}}, context=ctx)
    assert out["status"] == "fallback" and out["round1_entity"]["name"] == "Fred Thompson"
    assert out["entity"]["name"] == expected
    first = [t for t in out["trace"] if t["step"] == "verify"][0]
    assert bool(first.get("refuted")) == (refute and caption.startswith("a woman smiling"))
    final = out["trace"][-1]
    assert ("refuted" in final.get("note", "")) == (expected == "Emma Thompson")


@pytest.mark.parametrize("script, nil_fallback, expected", [
    (("nil", "2", "1"), "last_clue", "Michael Jordan"),  # the last clue round's answer, with both clues
    (("nil", "2", "1"), "text", None),                   # the reference: the round-1 nil stands
    (("nil", "1", "nil"), "last_clue", None),            # the last clue round says nil too
])
def test_a_round1_nil_gives_way_to_the_last_clue_rounds_answer(image, script, nil_fallback, expected):
    """A nil answer is never verified against the image; when no round verifies, the last clue round
    (every clue gathered) decides instead of the round-1 nil, unless ``nil_fallback="text"``."""
    model = scripted(*script)
    out = run(model, TableScorer({}, default=0.0), {"image": image, "image_desc": DESC}, max_rounds=2,
              nil_fallback=nil_fallback)
    assert out["round1_entity"] is None and out["stop_round"] == 3
    assert [t["outcome"] for t in links(out)][0] == "nil"
    assert (out["entity"] or {}).get("name") == expected
    assert out["status"] == ("fallback" if expected else "nil")
    assert ("round-1 nil" in out["trace"][-1].get("note", "")) == bool(expected)
