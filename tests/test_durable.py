"""Durable runs on SQLite: per-thread history, resuming an interrupted run, the optional human review."""

from __future__ import annotations

import sqlite3

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from graph import Context, build_graph, graph
from nodes.review import resolve_decision
from tools.errors import ConfigError

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
    {"qid": "Q1", "name": "Jordan River", "desc": "river in the Middle East"},
]
DESC = {"Caption": "a man holding a basketball", "OCR text": "BULLS 23", "Tags": "basketball; sport"}
INPUT = {"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls", "candidates": CANDS}


class FlakyScorer(TableScorer):
    """A table scorer whose first ``failures`` calls raise, as a verifier service that is down."""

    def __init__(self, scores: dict[str, float], failures: int = 1, **kw):
        super().__init__(scores, **kw)
        self.failures = failures

    def score(self, entity, **kw):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("verifier unavailable")
        return super().score(entity, **kw)


def context(model, scorer=None, **settings):
    return Context(linker_mode="llm", linker_model=model, embedding_model=BagOfWordsEmbeddings(), verifier=scorer or TableScorer({}),
                   reflection_threshold=0.0, **settings)


def saver(path):
    """A SQLite checkpointer on ``path``; a new one per call, as a new process would open it."""
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))


def thread(tid):
    return {"configurable": {"thread_id": tid}}


def test_each_thread_keeps_its_own_history(tmp_path):
    db = tmp_path / "runs.sqlite"
    durable = build_graph(checkpointer=saver(db))
    durable.invoke(INPUT, thread("a"), context=context(scripted("1")))
    durable.invoke({**INPUT, "mention": "Jordan River", "context": "the river in the Middle East"}, thread("b"),
                   context=context(scripted("3")))

    reopened = build_graph(checkpointer=saver(db))  # the history outlives the graph object and its connection
    history = list(reopened.get_state_history(thread("a")))
    steps = [s.next for s in reversed(history)]
    assert steps == [("__start__",), ("retrieve_candidates",), ("link_on_text",), ("reflect",), ("verify",),
                     ("finalize",), ()]
    assert history[0].values["entity"]["name"] == "Michael Jordan" and history[0].values["status"] == "text_only"
    assert "entity" not in history[2].values  # the state as it was after link_on_text
    assert reopened.get_state(thread("b")).values["entity"]["name"] == "Jordan River"
    assert list(reopened.get_state_history(thread("never-run"))) == []


def test_run_interrupted_mid_graph_resumes_from_its_last_completed_node(tmp_path):
    db = tmp_path / "runs.sqlite"
    model = scripted("1")
    scorer = FlakyScorer({"Michael Jordan": 0.9})
    ctx = context(model, scorer)
    with pytest.raises(RuntimeError, match="verifier unavailable"):
        build_graph(checkpointer=saver(db)).invoke({**INPUT, "image_desc": DESC}, thread("t"), context=ctx)
    assert len(model.prompts) == 1

    resumed = build_graph(checkpointer=saver(db))  # as after a restart
    state = resumed.get_state(thread("t"))
    assert state.next == ("verify",) and state.values["answer"]["name"] == "Michael Jordan"
    out = resumed.invoke(None, thread("t"), context=ctx)
    assert out["status"] == "text_verified" and out["entity"]["qid"] == "Q41421"
    assert len(model.prompts) == 1  # retrieve, link and reflect were not run again
    assert scorer.calls == ["Michael Jordan"]
    assert [t["step"] for t in out["trace"]] == ["retrieve", "link", "reflect", "verify", "final"]


def test_interrupt_before_a_node_then_continue(tmp_path):
    model = scripted("1")
    durable = build_graph(checkpointer=saver(tmp_path / "runs.sqlite"), interrupt_before=["verify"])
    ctx = context(model, TableScorer({"Michael Jordan": 0.9}))
    paused = durable.invoke({**INPUT, "image_desc": DESC}, thread("t"), context=ctx)
    assert "status" not in paused and durable.get_state(thread("t")).next == ("verify",)
    out = durable.invoke(None, thread("t"), context=ctx)
    assert out["status"] == "text_verified" and len(model.prompts) == 1


# ---- optional human review of fallback answers ------------------------------------------------

def fallback_run(tmp_path, tid="r"):
    """A run no round verifies (so it falls back to round 1's "Jordan"), paused for review."""
    durable = build_graph(checkpointer=saver(tmp_path / "runs.sqlite"))
    model = scripted("2", "1", "1", "1")
    ctx = context(model, TableScorer({}, default=0.1), human_review=True)
    out = durable.invoke({**INPUT, "image_desc": DESC}, thread(tid), context=ctx)
    return durable, ctx, model, out


def test_review_is_off_by_default(tmp_path):
    durable = build_graph(checkpointer=saver(tmp_path / "runs.sqlite"))
    out = durable.invoke({**INPUT, "image_desc": DESC}, thread("x"),
                         context=context(scripted("2", "1", "1", "1"), TableScorer({}, default=0.1)))
    assert out["status"] == "fallback" and "__interrupt__" not in out
    assert not durable.get_state(thread("x")).next


def test_review_pauses_a_fallback_and_a_person_picks_another_candidate(tmp_path):
    durable, ctx, model, out = fallback_run(tmp_path)
    [pending] = out["__interrupt__"]
    assert pending.value["proposed"]["name"] == "Jordan"
    assert [r["pick"] for r in pending.value["rounds"]] == ["Jordan", "Michael Jordan", "Michael Jordan",
                                                             "Michael Jordan"]
    assert durable.get_state(thread("r")).next == ("review",)

    again = durable.invoke(Command(resume="Scottie Pippen"), thread("r"), context=ctx)
    [pending] = again["__interrupt__"]
    assert "names no candidate" in pending.value["error"]

    done = durable.invoke(Command(resume="michael jordan"), thread("r"), context=ctx)
    assert done["status"] == "reviewed" and done["entity"]["qid"] == "Q41421"
    assert done["trace"][-1]["step"] == "review" and done["trace"][-1]["note"] == "reviewer picked Michael Jordan"
    assert len(model.prompts) == 4  # the linker was not asked again


@pytest.mark.parametrize("decision,status,name", [("accept", "reviewed", "Jordan"), ({"action": "nil"}, "nil", None),
                                                  ({"qid": "Q1"}, "reviewed", "Jordan River")])
def test_review_decisions(tmp_path, decision, status, name):
    durable, ctx, _, _ = fallback_run(tmp_path)
    done = durable.invoke(Command(resume=decision), thread("r"), context=ctx)
    assert done["status"] == status and (done["entity"] or {}).get("name") == name


def test_review_without_a_checkpointer_is_a_clear_error():
    ctx = context(scripted("2", "1", "1", "1"), TableScorer({}, default=0.1), human_review=True)
    with pytest.raises(ConfigError, match="human_review: .*checkpointer"):
        graph.invoke({**INPUT, "image_desc": DESC}, context=ctx)


def test_resolve_decision():
    proposed = {"qid": "Q810", "name": "Jordan"}
    assert resolve_decision(True, CANDS, proposed) == (proposed, "reviewer accepted the proposed answer")
    assert resolve_decision("Q810", CANDS, proposed)[1] == "reviewer accepted the proposed answer"
    assert resolve_decision({"name": "Jordan River"}, CANDS, proposed)[0]["qid"] == "Q1"
    assert resolve_decision("NIL", CANDS, proposed) == (None, "reviewer chose nil")
    for bad in ("", "Q2", {"qid": None}, 3):
        with pytest.raises(ValueError, match="names no candidate"):
            resolve_decision(bad, CANDS, proposed)
