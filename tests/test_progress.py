"""Progress events on the custom stream: what a person watching a run sees."""

from __future__ import annotations

import json

import numpy as np

from graph import Context, graph
from graph.progress import emit, plain

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
    {"qid": "Q1", "name": "Jordan River", "desc": "river in the Middle East"},
]
DESC = {"Caption": "a man holding a basketball", "OCR text": "", "Objects": [{"object_name": "person"}]}
INPUT = {"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls", "candidates": CANDS}


def events(model, scorer=None, inputs=None, **settings):
    ctx = Context(linker_mode="llm", linker_model=model, embedding_model=BagOfWordsEmbeddings(), verifier=scorer or TableScorer({}),
                  **settings)
    return list(graph.stream({**INPUT, **(inputs or {})}, context=ctx, stream_mode="custom"))


def test_events_follow_the_run():
    # round 1: "Jordan" (the country, reflection 0.26) is excluded at alpha 0.27, "Jordan River" (0.29, now number 2) passes
    # but the image does not agree; the OCR clue is empty (no round spent); the objects round picks
    # "Michael Jordan", whom the image confirms
    scorer = TableScorer({"Michael Jordan": 0.9})
    seen = events(scripted("2", "2", "1"), scorer, {"image_desc": DESC}, reflection_threshold=0.27)
    assert [e["event"] for e in seen] == ["candidates", "pick", "excluded", "pick", "verification", "clue_start",
                                          "clue", "clue_start", "clue", "pick", "verification", "final"]
    assert seen[0] == {"event": "candidates", "node": "retrieve_candidates", "count": 3, "source": "input"}
    excluded = seen[2]
    assert excluded["node"] == "reflect" and excluded["name"] == "Jordan" and excluded["qid"] == "Q810"
    assert excluded["score"] < excluded["threshold"] == 0.27 and excluded["reason"].startswith("reflection score 0.258 < alpha 0.27")
    assert seen[3]["pick"] == {"qid": "Q1", "name": "Jordan River"} and seen[3]["attempt"] == 2
    first, second = (e for e in seen if e["event"] == "verification")
    assert first["passed"] is False and first["score"] == 0.0 and first["next"] == "clue_round"
    assert first["next_clue"] == "ocr" and second["next_clue"] is None
    assert second["passed"] is True and second["next"] == "finalize" and second["round"] == 2
    ocr, objects = (e for e in seen if e["event"] == "clue")
    assert ocr["clue"] == "ocr" and ocr["empty"] is True and ocr["node"] == "clue_round"
    assert objects == {"event": "clue", "node": "clue_round", "clue": "objects", "text": "person",
                       "source": "precomputed", "empty": False}
    assert seen[-1] == {"event": "final", "node": "finalize", "status": "clue_verified:objects",
                        "entity": {"qid": "Q41421", "name": "Michael Jordan"}, "stop_round": 2}
    json.dumps(seen)  # plain JSON, as the server streams it


def test_events_arrive_with_the_node_updates():
    ctx = Context(linker_mode="llm", linker_model=scripted("1"), embedding_model=BagOfWordsEmbeddings(), reflection_threshold=0.0)
    parts = list(graph.stream(INPUT, context=ctx, stream_mode=["updates", "custom"]))
    order = [(mode, data["event"] if mode == "custom" else next(iter(data))) for mode, data in parts]
    assert order == [("custom", "candidates"), ("updates", "retrieve_candidates"), ("custom", "pick"),
                     ("updates", "link_on_text"), ("updates", "reflect"), ("custom", "verification"),
                     ("updates", "verify"), ("custom", "final"), ("updates", "finalize")]


def test_no_events_unless_asked_and_emit_is_a_no_op_outside_a_run():
    ctx = Context(linker_mode="llm", linker_model=scripted("1"), embedding_model=BagOfWordsEmbeddings(), reflection_threshold=0.0)
    modes = {mode for mode, _ in graph.stream(INPUT, context=ctx, stream_mode=["updates", "values"])}
    assert modes == {"updates", "values"}
    assert emit("pick", round=1) is None  # no graph run: nothing to write to, no error


def test_plain_makes_event_data_json():
    data = plain({"score": np.float32(0.5), "n": np.int64(3), "t": (1, "a"), "nan": float("nan"), "obj": object})
    assert data["score"] == 0.5 and data["n"] == 3 and data["t"] == [1, "a"] and data["nan"] is None
    assert isinstance(data["obj"], str)
    json.dumps(data)
