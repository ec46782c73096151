"""The text's likelihood under each candidate (``llm_context``): substitution, evidence, the fused linker, the fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evals import fit
from graph import Context, graph
from prompts import linking as P
from tools.context_likelihood import substituted, top_indices
from tools.errors import ConfigError
from tools.features import ALL_FEATURES
from tools.fusion import context_evidence, load_weights

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

CANDS = [
    {"qid": "Q2", "name": "Emma_Thompson_(actor)", "desc": ""},
    {"qid": "Q1", "name": "Fred Thompson", "desc": ""},
    {"qid": "Q3", "name": "Thompson,_Manitoba", "desc": ""},
]
INPUT = {"mention": "Thompson", "context": "Thompson at the premiere of Last Chance Harvey.", "candidates": CANDS}


def test_substitution_replaces_the_first_mention_in_any_case():
    assert substituted("Thompson at the premiere.", "Thompson", "Emma Thompson") == "Emma Thompson at the premiere."
    assert substituted("with  THOMPSON and Thompson", "thompson", "X") == "with X and Thompson"
    assert substituted("A man (left) speaks.", "Rudd", "Kevin Rudd") == "Kevin Rudd: A man (left) speaks."
    assert substituted("", "Rudd", "Kevin Rudd") == "Kevin Rudd"
    assert substituted("a+b (c)", "b (c", "Y") == "a+Y)"  # the mention is text, not a pattern


def test_evidence_is_relative_and_floored_and_unscored_candidates_get_the_floor():
    ev = context_evidence([-3.0, None, -20.0, -4.5], 5.0)
    assert list(ev) == [0.0, -5.0, -5.0, -1.5]
    assert list(context_evidence([None, None], 5.0)) == [0.0, 0.0]
    assert top_indices([0.1, 0.5, 0.5, 0.2], 2) == [1, 2] and top_indices([0.3], 0) == []


def weights_file(tmp_path, context=None, **coef):
    w = [coef.get(f, 0.0) for f in ALL_FEATURES]
    model = {"coef": w, "intercept": 0.0, "mean": [0.0] * len(w), "scale": [1.0] * len(w)}
    doc = {"features": list(ALL_FEATURES), "text": model, "clue": model, "llm_weight": 1.0, "llm_floor": 5.0}
    if context is not None:
        doc["llm_context"] = context
    path = tmp_path / "w.json"
    path.write_text(json.dumps(doc))
    return str(path)


class Scorer(scripted("x").__class__):
    """Scores given answers: texts naming Emma score high, Fred's low; names alone all the same."""

    calls: list = []  # noqa: RUF012

    def continuation_logprobs(self, messages, continuations):
        self.calls.append((messages[-1].content, list(continuations)))
        out = []
        for c in continuations:
            if "premiere" not in c:  # a name alone, or the name-likelihood prompt's answers
                out.append([-2.0])
            else:
                out.append([-1.0 if c.startswith("Emma") else -9.0 if c.startswith("Fred") else -4.0])
        return out, 30


def run(tmp_path, context, **settings):
    model = Scorer(responses=["x"], prompts=[], calls=[])
    ctx = Context(linker_model=model, embedding_model=BagOfWordsEmbeddings(), verifier=TableScorer({}),
                  fusion_weights=weights_file(tmp_path, context, qid_prior=1.0), **settings)
    return graph.invoke(INPUT, context=ctx), model


def test_the_term_moves_the_answer_only_with_a_weight(tmp_path):
    # the text prior (the QID prior alone) ranks Fred (Q1) > Emma (Q2) > Q3; the names alone all score the same
    out, model = run(tmp_path, None, gate_threshold=1.0, nil_threshold="off")
    assert out["entity"]["qid"] == "Q1"
    assert len(model.calls) == 1  # names only: no second call without an llm_context term
    base = [t for t in out["trace"] if t["step"] == "link"][0]
    assert "context_logprobs" not in base["llm"]
    out, model = run(tmp_path, {"weight": 1.0}, gate_threshold=1.0, nil_threshold="off", llm_context_top=2)
    assert len(model.calls) == 2
    prompt, conts = model.calls[1]
    assert prompt == P.CONTEXT_USER
    # the prior's top 2 (Fred and Emma), in list order, each as the text and as the name alone, without "(actor)"
    assert conts == ["Emma Thompson at the premiere of Last Chance Harvey.",
                     "Fred Thompson at the premiere of Last Chance Harvey.", "Emma Thompson", "Fred Thompson"]
    link = [t for t in out["trace"] if t["step"] == "link"][0]
    assert link["llm"]["context_logprobs"] == [1.0, -7.0, None]
    assert out["entity"]["qid"] == "Q2"  # the text fits Emma: the answer changes
    # the term pushes Fred down: Q2's probability is lower with it than without
    p_with = {t["name"]: t["p"] for t in link["top"]}
    out0, _ = run(tmp_path, None, gate_threshold=1.0, nil_threshold="off")
    p_without = {t["name"]: t["p"] for t in [t for t in out0["trace"] if t["step"] == "link"][0]["top"]}
    assert p_with["Fred Thompson"] < p_without["Fred Thompson"]
    assert p_with["Emma_Thompson_(actor)"] > p_without["Emma_Thompson_(actor)"]
    # llm_context_top=0 turns it off, and so does the text-first gate (no LLM asked at all)
    _, model = run(tmp_path, {"weight": 1.0}, gate_threshold=1.0, llm_context_top=0)
    assert len(model.calls) == 1
    _, model = run(tmp_path, {"weight": 1.0}, gate_threshold=0.0)
    assert model.calls == []


def test_a_bad_llm_context_entry_is_a_config_error(tmp_path):
    path = weights_file(tmp_path, {"w": 1})
    with pytest.raises(ConfigError, match="llm_context"):
        load_weights(path)
    assert load_weights(weights_file(tmp_path, {"weight": 0.5})).context_weight() == 0.5


def test_fit_learns_a_positive_context_weight_when_it_carries_the_gold():
    rng = np.random.default_rng(0)
    items = []
    for _ in range(200):
        z = rng.normal(size=4)
        g = int(rng.integers(4))
        cev = np.full(4, -3.0)
        cev[g] = 0.0
        if rng.random() < 0.2:  # sometimes misleading
            cev = np.roll(cev, 1)
        items.append((z, np.zeros(4), 0.0, g, cev))
    p = fit.fit_llm(items, "w+nil", context=True)
    assert p["ctx"] > 0.3 and set(p) == {"w", "nil_bias", "nil_weight", "ctx"}
    # items without context scores are left out of a context fit, and the plain fit ignores the term
    assert fit.fit_llm([it[:4] for it in items], "w", context=True) == {"w": 0.0}
    assert "ctx" not in fit.fit_llm(items, "w")
    _, _, extra = fit.llm_entries(load_weights(None), "likelihood", p, 5.0)
    assert extra["llm_context"] == {"weight": p["ctx"]}


def test_the_fit_sample_takes_cached_mentions_first():
    asked = [f"m{i}" for i in range(10)]
    s = fit.context_sample(asked, {"m7", "m3", "zz"}, 4, seed=0)
    assert s[:2] == ["m3", "m7"] and len(s) == 4 and len(set(s)) == 4
    assert fit.context_sample(asked, set(), 4, seed=0) == fit.context_sample(asked, set(), 4, seed=0)
    assert fit.context_terms([-1.0, -3.0, -9.0], np.array([0.0, 1.0, 2.0]), 2, 5.0).tolist() == [-5.0, 0.0, -5.0]
    assert fit.context_terms(None, np.zeros(3), 2, 5.0) is None


def test_i2cr_fit_with_context_scores_is_resumable_and_writes_the_term(tmp_path, monkeypatch, capsys):
    from test_fit import Continuations, _slice

    from evals import fit_fusion
    from graph.cli import main as cli_main
    from tools import linker
    from tools.embeddings import get_embedder

    model = Continuations(responses=["x"], prompts=[], seen=[])
    monkeypatch.setattr(linker, "load_linker", lambda ctx: model)
    emb = get_embedder(BagOfWordsEmbeddings())
    monkeypatch.setattr(fit_fusion, "get_embedder", lambda spec, **kw: emb)
    data, labels = _slice(tmp_path)
    out, js, cache = tmp_path / "w.json", tmp_path / "fit.json", tmp_path / "llm"
    argv = ["fit", f"{data}:{labels}", "--folds", "2", "--gate", "1.0", "--out", str(out), "--json", str(js),
            "--llm-cache", str(cache), "--cache", "", "--llm-context-sample", "10"]
    assert cli_main(argv) == 0
    context_calls = [s for s in model.seen if s[0] == P.CONTEXT_USER]
    assert len(context_calls) == 10 and len(model.seen) == 24 + 10
    rows = [json.loads(x) for x in (cache / "slice.context.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and {r["key"] for r in rows} == {f"embedded|{P.CONTEXT_VERSION}"}
    rec = json.loads(js.read_text())
    assert rec["llm"]["asked_pool"] == 10 and rec["llm"]["context"]["top"] == 4
    assert "ctx" in rec["llm"]["params"]["w"]
    w = load_weights(str(out))
    assert w.llm_context is not None and w.context_weight() == rec["llm"]["params"][rec["llm"]["mode"]]["ctx"]
    # the figures with the LLM are on the 10 scored mentions
    assert rec["sets"]["slice.json"]["llm"]["fit w"]["top1"]["n"] == 10
    # a rerun scores nothing new
    assert cli_main(argv) == 0
    assert len(model.seen) == 34
    # the term needs the likelihood route: a clear one-line error otherwise
    capsys.readouterr()
    assert cli_main([*argv, "--llm-scoring", "choice"]) == 2
    err = capsys.readouterr().err
    assert "--llm-context-sample 10 needs" in err and "Traceback" not in err
    assert cli_main([*argv[:-1], "-3"]) == 2


def test_i2cr_fit_context_scores_skip_a_failed_mention_and_stop_on_a_dead_model(tmp_path, monkeypatch, capsys):
    """A mention whose text cannot be scored is left out and not cached (a rerun scores it again); a model
    that fails on every first context call stops the fit with its reason, as the LLM scores do."""
    from test_fit import Continuations, _slice

    from evals import fit_fusion
    from graph.cli import main as cli_main
    from tools import linker
    from tools.embeddings import get_embedder
    from tools.errors import ModelError

    real = Continuations.continuation_logprobs
    dead = {"all": False}

    def flaky(self, messages, continuations):
        if messages[-1].content == P.CONTEXT_USER and (dead["all"] or any("day 6." in c for c in continuations)):
            self.seen.append(("failed", []))
            raise ModelError("linker_model 'openai:x' failed: the server cannot score this text")
        return real(self, messages, continuations)

    model = Continuations(responses=["x"], prompts=[], seen=[])
    monkeypatch.setattr(Continuations, "continuation_logprobs", flaky)
    monkeypatch.setattr(linker, "load_linker", lambda ctx: model)
    emb = get_embedder(BagOfWordsEmbeddings())
    monkeypatch.setattr(fit_fusion, "get_embedder", lambda spec, **kw: emb)
    data, labels = _slice(tmp_path)
    js, cache = tmp_path / "fit.json", tmp_path / "llm"
    argv = ["fit", f"{data}:{labels}", "--folds", "2", "--gate", "1.0", "--json", str(js),
            "--llm-cache", str(cache), "--cache", "", "--llm-context-sample", "24"]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "1 mention(s) could not be asked" in err and "m6: " in err and "cannot score this text" in err
    rows = [json.loads(x) for x in (cache / "slice.context.jsonl").read_text().splitlines()]
    assert len(rows) == 23 and "m6" not in {r["id"] for r in rows}
    n = len(model.seen)
    assert cli_main(argv) == 0 and len(model.seen) == n + 1  # only the failed one is scored again

    dead["all"] = True  # every context call fails: the fit stops on the fifth, naming the reason
    argv[argv.index(str(cache))] = str(tmp_path / "llm2")
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot score this text" in err and "Traceback" not in err
    assert [s for s in model.seen[n + 1:] if s[0] == "failed"] == [("failed", [])] * fit.ABORT_AFTER
