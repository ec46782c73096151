"""``i2cr fit`` end to end on a small slice (fake embedder and LLM), the type-neutral prompt, and nil in llm mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evals import fit, fit_fusion
from graph import Context, graph
from graph.cli import main as cli_main
from prompts import linking as P
from tools import fused_linker, linker
from tools.embeddings import get_embedder
from tools.features import ALL_FEATURES, qid_prior
from tools.fusion import FusionWeights, distribution, load_weights, nil_offered
from tools.llm_linker import llm_messages

from fakes import BagOfWordsEmbeddings, TableScorer, scripted

PEOPLE = ["Anna Berg", "Carl Berg", "Berg_(mountain)", "Lena Holm", "Olof Holm", "Holm_(island)"]


def _slice(tmp_path: Path, n: int = 24) -> tuple[str, str]:
    """A small labelled set in the I2CR format: the gold's name is in the text; every fourth mention is nil."""
    rng = np.random.default_rng(0)
    data, labels = {}, {}
    for k in range(n):
        fam = ["Berg", "Holm"][k % 2]
        cands = [{"qid": f"Q{10 + 7 * i}", "name": nm, "desc": ""} for i, nm in enumerate(PEOPLE) if fam in nm]
        gi = int(rng.integers(len(cands)))
        gold = cands[gi]["name"]
        text = f"{gold.replace('_', ' ')} spoke in town on day {k}."
        if k % 4 == 3:
            cands = [c for c in cands if c["name"] != gold]
            gold, text = "nil", f"Somebody called {fam} spoke in town on day {k}."
        rid = f"m{k}"
        data[rid] = {"id": rid, "mention": fam, "mention_context": text, "Candentity": cands}
        labels[rid] = gold
    d, lab = tmp_path / "slice.json", tmp_path / "slice_label.json"
    d.write_text(json.dumps(data))
    lab.write_text(json.dumps(labels))
    return str(d), str(lab)


class Continuations(scripted("x").__class__):
    """A fake linker model scoring given answers: the name found in the prompt's text scores high."""

    seen: list = []  # noqa: RUF012 (a pydantic field: each instance gets its own list)

    def continuation_logprobs(self, messages, continuations):
        prompt = messages[-1].content
        self.seen.append((prompt, list(continuations)))
        return [[-0.5 if c in prompt else -6.0] for c in continuations], 50


@pytest.fixture
def fakes(monkeypatch):
    model = Continuations(responses=["x"], prompts=[], seen=[])
    monkeypatch.setattr(linker, "load_linker", lambda ctx: model)
    emb = get_embedder(BagOfWordsEmbeddings())
    monkeypatch.setattr(fit_fusion, "get_embedder", lambda spec, **kw: emb)
    return model


def test_i2cr_fit_end_to_end_resumable(tmp_path, fakes, capsys):
    data, labels = _slice(tmp_path)
    out, js, cache = tmp_path / "w.json", tmp_path / "fit.json", tmp_path / "llm"
    argv = ["fit", f"{data}:{labels}", "--folds", "2", "--gate", "1.0", "--out", str(out), "--json", str(js),
            "--llm-cache", str(cache), "--cache", "", "--learning-curve", "8,12", "--curve-repeats", "2"]
    assert cli_main(argv) == 0
    asked = len(fakes.seen)
    assert asked == 24  # gate 1.0: every mention undecided, asked once
    printed = capsys.readouterr().out
    assert "slice.json (train, 24 mentions, out of fold)" in printed and "nil F1" in printed
    assert "N=    8" in printed and "N=   12" in printed
    w = load_weights(str(out))
    assert w.nil_row and w.llm_floor == 5.0
    rec = json.loads(js.read_text())
    assert rec["llm"]["asked_pool"] == 24 and set(rec["llm"]["params"]) == set(fit.LLM_MODES)
    # the names the LLM says are in the text: its weight is positive and the fused CV is not worse than text alone
    assert rec["llm"]["params"]["w"]["w"] > 0
    figs = rec["sets"]["slice.json"]["llm"]
    assert figs["fit w"]["top1"]["k"] >= figs["text only, same mentions"]["top1"]["k"]
    # the nil_needs_text rule can only take nil answers back, never add one
    for m in fit.LLM_MODES:
        assert figs[f"fit {m}, {fit.NEEDS_TEXT}"]["nil"]["answers"] <= figs[f"fit {m}"]["nil"]["answers"]
    assert w.llm_weights["likelihood"] == rec["llm"]["params"][rec["llm"]["mode"]]["w"]
    # the cache is keyed by id + model + prompt version, the nil answer scored with the names
    rows = [json.loads(x) for x in (cache / "slice.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == {f"embedded|likelihood|{P.PROMPT_VERSION}"}
    assert all(r["nil_logp"] is not None for r in rows)
    assert all(conts[-1] == P.NIL_ANSWER for _, conts in fakes.seen)
    # resumable: a line cut by a kill is asked again, the rest comes from the cache
    lines = (cache / "slice.jsonl").read_text().splitlines()
    (cache / "slice.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20] + "\n")
    assert cli_main(argv) == 0
    assert len(fakes.seen) == asked + 1
    assert cli_main(argv) == 0
    assert len(fakes.seen) == asked + 1  # nothing left to ask
    # another prompt version: asked again
    import prompts.linking

    prompts.linking.PROMPT_VERSION, old = "test-v0", prompts.linking.PROMPT_VERSION
    try:
        assert cli_main(argv) == 0
    finally:
        prompts.linking.PROMPT_VERSION = old
    assert len(fakes.seen) == 2 * asked + 1


def test_i2cr_fit_bad_input_is_one_line(tmp_path, fakes, capsys):
    assert cli_main(["fit", str(tmp_path / "missing.json"), "--no-llm", "--cache", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("i2cr: error: fit: dataset not found") and "Traceback" not in err
    data, labels = _slice(tmp_path)
    assert cli_main(["fit", f"{data}:{labels}", "--no-llm", "--cache", "", "--nil-threshold", "2"]) == 2
    assert "--nil-threshold" in capsys.readouterr().err
    for share in ("-0.1", "1.5"):
        assert cli_main(["fit", f"{data}:{labels}", "--no-llm", "--cache", "", "--augment-clue-nil", share]) == 2
        err = capsys.readouterr().err
        assert err.startswith("i2cr: error: fit: --augment-clue-nil") and share in err and "Traceback" not in err


def test_likelihood_prompt_is_type_neutral_and_scores_names_without_disambiguators(fakes):
    state = {"mention": "Bratz", "context": "Bratz opened in cinemas.", "clues": [], "round": 1,
             "candidates": [{"qid": "Q1", "name": "Bratz_(film)", "desc": ""},
                            {"qid": "Q2", "name": "Bratz%27s_dolls", "desc": ""}]}
    logp, call = fused_linker.ask_llm(fakes, state["mention"], state["context"], state["candidates"], [],
                                      llm_scoring="auto", spec="embedded", max_desc_chars=300)
    prompt, conts = fakes.seen[-1]
    assert 'What does "Bratz" refer to in this text? Answer with its name.' in prompt
    assert "Who is" not in prompt
    # the name as it would be answered: "(film)" would only cost the candidate tokens
    assert conts == ["Bratz", "Bratz's dolls", P.NIL_ANSWER]
    assert len(logp) == 2 and call["nil_logp"] == -6.0


def test_llm_mode_follows_nil_threshold():
    assert nil_offered(True, 0.5) and not nil_offered(True, None) and not nil_offered(False, 0.5)
    cands = [{"qid": "Q1", "name": "Anna_Berg", "desc": ""}, {"qid": "Q2", "name": "Carl Berg", "desc": ""}]
    state = {"mention": "Berg", "context": "Berg spoke.", "candidates": cands, "clues": [], "round": 1}
    def messages(ctx):
        return llm_messages(state["mention"], state["context"], cands, [], [], retry_raw=None, max_desc_chars=300,
                            allow_nil=nil_offered(ctx.allow_nil, ctx.nil_threshold))

    on = messages(Context(linker_mode="llm"))
    off = messages(Context(linker_mode="llm", nil_threshold=None))
    assert "or nil" in on[-1].content and "or nil" not in off[-1].content
    assert "1. Anna Berg" in off[-1].content  # normalised names
    inputs = {"mention": "Berg", "context": "Berg spoke.", "candidates": cands}

    def outcome(**settings):
        ctx = Context(linker_mode="llm", linker_model=scripted("nil", "nil", "nil", "nil"),
                      embedding_model=BagOfWordsEmbeddings(), verifier=TableScorer({}), max_rounds=1, **settings)
        out = graph.invoke(inputs, context=ctx)
        return next(t["outcome"] for t in out["trace"] if t["step"] == "link")

    assert outcome() == "nil"
    assert outcome(nil_threshold=None) == "unparseable"  # nil not offered: the answer "nil" is not accepted


def test_llm_nil_terms_move_probability_to_nil():
    zero = {"coef": [0.0] * len(ALL_FEATURES), "intercept": 0.0, "mean": [0.0] * len(ALL_FEATURES),
            "scale": [1.0] * len(ALL_FEATURES)}
    doc = {"features": list(ALL_FEATURES), "text": zero, "clue": zero, "llm_weight": 1.0, "llm_floor": 5.0,
           "nil_row": True, "llm_nil": {"bias": 0.0, "weight": 1.0}}
    w = FusionWeights(doc, "test")
    scores = np.array([2.0, 0.0])
    sure = distribution(w.with_llm(scores, 1.0, [-0.1, -4.0], nil_logp=-8.0), True)[1]
    unsure = distribution(w.with_llm(scores, 1.0, [-0.1, -4.0], nil_logp=-0.05), True)[1]
    assert unsure > sure
    plain = FusionWeights({k: v for k, v in doc.items() if k != "llm_nil"}, "test")
    assert np.allclose(plain.with_llm(scores, 1.0, [-0.1, -4.0], nil_logp=-0.05), [2.0, -3.9])


def test_qid_prior_is_relative_and_neutral_without_qids():
    v = qid_prior(["Q5", "Q5000", "local-7"])
    assert v[0] > 0 > v[1] and v[2] == 0 and abs(v[0] + v[1]) < 1e-9
    assert not qid_prior(["x", "y"]).any() and not qid_prior(["Q1"]).any()


def test_fold_weights_from_fit_drive_a_whole_graph_cv_run(tmp_path, fakes):
    """`i2cr fit --fold-weights DIR` writes each fold's held-out weights (the default hidden, relative
    scorer); `evals.cv_eval --fold-weights DIR` links each fold with the file that never saw it."""
    from evals import cv_eval

    data, labels = _slice(tmp_path, n=32)
    folds = tmp_path / "folds"
    argv = ["fit", f"{data}:{labels}", "--folds", "2", "--gate", "1.0", "--out", str(tmp_path / "w.json"),
            "--llm-cache", str(tmp_path / "llm"), "--cache", "", "--fold-weights", str(folds)]
    assert cli_main(argv) == 0
    docs = [json.loads((folds / f"fold{k}.json").read_text()) for k in (0, 1)]
    for k, doc in enumerate(docs):
        assert doc["fit"]["fold"] == k and doc["fit"]["hidden"] == 16 and doc["fit"]["relative"]
        assert doc["text_unordered"]["relative"] and len(doc["text_unordered"]["hidden"]["b"]) == 16
        assert doc["fit"]["llm"] == "fitted without this fold" and doc["llm_weight"]["likelihood"] >= 0
    assert docs[0]["text_unordered"]["coef"] != docs[1]["text_unordered"]["coef"]
    out = tmp_path / "cv"
    assert cv_eval.main([data, "--labels", labels, "--folds", "2", "--out", str(out), "--fold-weights", str(folds),
                         "--set", "gate_threshold=0"]) == 0
    raw = json.loads(Path(data).read_text())
    for k in (0, 1):
        ids = set(json.loads((out / "data" / f"fold{k}.json").read_text()))
        assert ids == {r for r in raw if fit.fold_of_id(r, 2) == k}  # the folds the weights were fitted without
        assert json.loads((out / "weights" / f"fold{k}.json").read_text()) == docs[k]
    merged = (out / "all" / "predictions.jsonl").read_text().splitlines()
    assert len({json.loads(x)["id"] for x in merged}) == len(raw)
    with pytest.raises(Exception, match="missing"):
        cv_eval.main([data, "--labels", labels, "--folds", "3", "--out", str(tmp_path / "cv3"),
                      "--fold-weights", str(folds)])


def test_homonym_copy_renames_another_described_candidate_to_the_mention(tmp_path):
    data = {
        "a": {"id": "a", "mention": "Jordan's", "mention_context": "Jordan's 30 points for the Bulls",
              "Candentity": [{"qid": "Q1", "name": "Michael Jordan", "desc": "basketball player"},
                             {"qid": "Q2", "name": "Jordan River", "desc": "river in the Middle East"},
                             {"qid": "Q3", "name": "Jordan Peele", "desc": "film director"}]},
        "b": {"id": "b", "mention": "Paris", "mention_context": "Paris in spring",  # the gold IS the exact name
              "Candentity": [{"qid": "Q90", "name": "Paris", "desc": "capital of France"},
                             {"qid": "Q4", "name": "Paris Hilton", "desc": "media personality"}]},
        "c": {"id": "c", "mention": "USGS", "mention_context": "the USGS said",  # no descriptions: unchanged
              "Candentity": [{"qid": "Q5", "name": "United States Geological Survey", "desc": ""},
                             {"qid": "Q6", "name": "Usgs", "desc": ""}]},
    }
    labels = {"a": "Michael Jordan", "b": "Paris", "c": "United States Geological Survey"}
    d, lab = tmp_path / "d.json", tmp_path / "d_label.json"
    d.write_text(json.dumps(data))
    lab.write_text(json.dumps(labels))
    path, lab2 = fit._homonym_copy(str(d), str(lab), tmp_path / "cache", seed=0)
    copy = json.loads(Path(path).read_text())
    assert lab2 == str(lab) and set(copy) == set(data)
    names = [c["name"] for c in copy["a"]["Candentity"]]
    assert names[0] == "Michael Jordan" and names.count("Jordan") == 1  # one rival renamed, possessive dropped
    renamed = copy["a"]["Candentity"][names.index("Jordan")]
    assert renamed["desc"] in ("river in the Middle East", "film director")  # keeps its own description
    assert copy["b"] == data["b"] and copy["c"] == data["c"]
    assert fit._homonym_copy(str(d), str(lab), tmp_path / "cache", seed=0)[0] == path  # cached, same file


def test_augmented_copies_weigh_inside_their_benchmarks_share(tmp_path, fakes, monkeypatch):
    """Attribute-free and homonym copies share their benchmark's source: two benchmarks weigh the same in
    the fit however many copies one of them has."""
    data, labels = _slice(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    d2, l2 = _slice(other, n=16)
    rows = json.loads(Path(data).read_text())
    for rec in rows.values():  # attributes on the first benchmark only: it gets attribute-free copies
        for c in rec["Candentity"]:
            c["desc"] = "Sex: female. Birth: 1950."
    Path(data).write_text(json.dumps(rows))
    seen = []
    real = fit.fit_models
    monkeypatch.setattr(fit, "fit_models", lambda X, gold, C, **kw: seen.append((len(X), kw["source"]))
                        or real(X, gold, C, **kw))
    argv = ["fit", f"{data}:{labels}", f"{d2}:{l2}", "--folds", "2", "--no-llm", "--augment-noattr",
            "--augment-homonym", "--cache", str(tmp_path / "c")]
    assert cli_main(argv) == 0
    n, source = seen[-1]  # the final fit, on every training mention
    assert n > 24 + 16  # the copies are in it
    assert sorted(set(source.tolist())) == [0, 1]  # but only two benchmarks: each weighs half
    assert (source == 1).sum() == 16


def test_the_feature_cache_is_not_reused_across_feature_code(tmp_path, fakes, monkeypatch):
    """A feature matrix cached by one version of the feature code is reused by the same code and
    recomputed after the code or the embedding model changed (a refit must not fit on stale features)."""
    data, labels = _slice(tmp_path)
    cache = tmp_path / "c"
    argv = ["fit", f"{data}:{labels}", "--folds", "2", "--no-llm", "--cache", str(cache)]
    built = []
    real = fit.build_matrix
    monkeypatch.setattr(fit, "build_matrix", lambda *a, **kw: built.append(1) or real(*a, **kw))
    assert cli_main(argv) == 0
    assert cli_main(argv) == 0
    assert len(built) == 1 and len(list(cache.glob("fitfeats_*.pkl"))) == 1
    monkeypatch.setattr(fit, "_feature_code", lambda: "changed")
    assert cli_main(argv) == 0
    assert len(built) == 2 and len(list(cache.glob("fitfeats_*.pkl"))) == 2
    monkeypatch.setattr(fit, "_embedder_id", lambda emb: "another-model")  # another embedding model: recomputed
    assert cli_main(argv) == 0
    assert len(built) == 3 and len(list(cache.glob("fitfeats_*.pkl"))) == 3


def test_the_feature_cache_names_the_embedding_model():
    """A spec, or the spec an embedder wraps (``DiskEmbedder``), identifies the model in the cache key."""
    class Wrapped:
        spec = "onnx:embedded"

    assert fit._embedder_id("embedded") == "embedded"
    assert fit._embedder_id(Wrapped()) == "onnx:embedded"


def test_a_mention_the_llm_cannot_score_keeps_its_text_answer_and_the_fit_goes_on(tmp_path, fakes, monkeypatch, capsys):
    """A ModelError on one mention (e.g. a server that cannot score one of its names) skips that mention,
    uncached (a rerun asks it again); a model that fails on every first ask stops the fit with its reason."""
    from tools.errors import ModelError

    data, labels = _slice(tmp_path)
    real = Continuations.continuation_logprobs

    def flaky(self, messages, continuations):
        if "day 5." in messages[-1].content:
            self.seen.append(("failed", []))
            raise ModelError("'Holm': the server cannot score this name")
        return real(self, messages, continuations)

    monkeypatch.setattr(Continuations, "continuation_logprobs", flaky)
    cache, js = tmp_path / "llm", tmp_path / "fit.json"
    argv = ["fit", f"{data}:{labels}", "--folds", "2", "--gate", "1.0", "--json", str(js),
            "--llm-cache", str(cache), "--cache", ""]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "1 mention(s) could not be asked" in err and "m5: " in err and "cannot score this name" in err
    assert json.loads(js.read_text())["llm"]["asked_pool"] == 23
    rows = [json.loads(x) for x in (cache / "slice.jsonl").read_text().splitlines()]
    assert len(rows) == 23 and "m5" not in {r["id"] for r in rows}
    n = len(fakes.seen)
    assert cli_main(argv) == 0 and len(fakes.seen) == n + 1  # only the failed one is asked again

    def down(self, messages, continuations):
        raise ModelError("linker_model 'openai:x' failed: ConnectError: connection refused")

    monkeypatch.setattr(Continuations, "continuation_logprobs", down)
    argv[argv.index(str(cache))] = str(tmp_path / "llm2")
    assert cli_main(argv) == 2
    assert "connection refused" in capsys.readouterr().err


def test_fold_weights_carry_clue_models_fitted_on_the_image_descriptions(tmp_path, fakes):
    """The fold files' clue models are fitted with the clue features, as the packaged file's are (a whole-graph
    CV run's clue rounds use them); without image descriptions they are the text model."""
    from tools.features import CLUE_FEATURES

    data, labels = _slice(tmp_path, n=32)
    raw = json.loads(Path(data).read_text())
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(raw))
    for rid, rec in raw.items():  # the image shows the gold's family, and a word of the gold's first name
        gold = json.loads(Path(labels).read_text())[rid]
        rec["mention_imgdesc_Azure"] = {"Caption": f"a photo of {gold.split()[0] if gold != 'nil' else 'someone'}"}
    Path(data).write_text(json.dumps(raw))
    clue_cols = [ALL_FEATURES.index(f) for f in CLUE_FEATURES]
    for path, has in ((data, True), (str(plain), False)):
        folds = tmp_path / f"folds-{has}"
        argv = ["fit", f"{path}:{labels}", "--folds", "2", "--no-llm", "--cache", "", "--fold-weights", str(folds),
                "--out", str(tmp_path / f"w-{has}.json")]
        assert cli_main(argv) == 0
        for k in (0, 1):
            doc = json.loads((folds / f"fold{k}.json").read_text())
            coef = np.asarray(doc["clue_unordered"]["coef"])
            assert bool(np.any(coef[clue_cols] != 0)) == has


def test_llm_cache_key_names_the_server_of_an_openai_model():
    a = {"linker_model": "openai:m", "llm_scoring": "likelihood", "openai_base_url": "http://a:1/v1"}
    b = {**a, "openai_base_url": "http://b:1/v1/"}
    assert fit.llm_key(a) != fit.llm_key(b) and "@http://b:1/v1|" in fit.llm_key(b)
    local = {"linker_model": "embedded", "llm_scoring": "likelihood", "openai_base_url": "http://a:1/v1"}
    assert fit.llm_key(local) == f"embedded|likelihood|{P.PROMPT_VERSION}"  # the URL is not the model's


def test_nil_needs_text_lets_the_llm_take_a_nil_back_but_not_cause_one(tmp_path, fakes):
    """The text prior answers its best candidate; the LLM's nil term (bias 3) would turn that into nil.
    With ``nil_needs_text`` the text answer stands and the trace says why; a text-evidence nil stays nil."""
    from tools.fusion import weights_document, write_weights

    def weights(intercept: float) -> str:
        zero = {"coef": [0.0] * len(ALL_FEATURES), "intercept": intercept, "mean": [0.0] * len(ALL_FEATURES),
                "scale": [1.0] * len(ALL_FEATURES)}
        doc = weights_document({"text": zero, "clue": zero}, llm_weight=0.0, llm_floor=5.0, nil_row=True)
        doc["llm_nil"] = {"bias": 3.0, "weight": 0.0}
        path = tmp_path / f"w{intercept}.json"
        write_weights(path, doc)
        return str(path)

    inputs = {"mention": "Berg", "context": "Berg spoke in town.",
              "candidates": [{"qid": "Q1", "name": "Anna Berg", "desc": ""}, {"qid": "Q2", "name": "Carl Berg", "desc": ""}]}

    def link(w: str, **settings) -> tuple[dict, dict]:
        ctx = Context(linker_model="embedded", embedding_model=BagOfWordsEmbeddings(), verifier=TableScorer({}),
                      fusion_weights=w, max_rounds=0, **settings)
        out = graph.invoke(inputs, context=ctx)
        return out, next(t for t in out["trace"] if t["step"] == "link")

    supported = weights(1.0)  # prior: each candidate 0.42, nil 0.16 -> an entity; with the LLM's nil term: nil 0.79
    out, step = link(supported, nil_needs_text=False)
    assert out["status"] == "nil" and step["p_nil"] > 0.5 and "nil" not in step["prior_top"]
    out, step = link(supported)  # the default
    assert out["entity"]["qid"] in {"Q1", "Q2"} and step["outcome"] == "entity"
    assert "nil_needs_text" in step["nil_overruled"] and step["p_nil"] > 0.5
    # a nil the text evidence gives on its own is still answered
    out, step = link(weights(-3.0))
    assert out["status"] == "nil" and step["prior_top"]["nil"] and "nil_overruled" not in step


def test_nil_needs_text_reads_the_text_prior_of_the_candidates_left():
    """After a failed reflection excluded the text's favourite, the text alone may answer nil among the rest:
    then the combined nil stands; without the exclusion the text answer is kept."""
    from types import SimpleNamespace

    dist = {"keys": ["a", "b"], "prior": [0.8, 0.05], "prior_p_nil": 0.15, "probs": [0.3, 0.05], "p_nil": 0.65,
            "nil_row": True, "gated": False, "llm": {"model": "m", "method": "likelihood", "raw": None}}
    cands = [{"qid": "Q1", "name": "A"}, {"qid": "Q2", "name": "B"}]
    ctx = SimpleNamespace(nil_threshold=0.5, nil_needs_text=True)
    chosen, info = fused_linker.pick(dist, cands, set(), ctx, reused=False)
    assert chosen["qid"] == "Q1" and "nil_overruled" in info and not info.get("nil")
    chosen, info = fused_linker.pick(dist, cands, {"a"}, ctx, reused=True)  # b alone: the text says nil (0.15 > 0.05)
    assert chosen is None and info["nil"] and "nil_overruled" not in info
    assert fused_linker.text_alone_nil(dist, {"a"}, ctx) and not fused_linker.text_alone_nil(dist, set(), ctx)


def test_the_embedding_cache_file_is_read_only_by_the_model_that_wrote_it(tmp_path, monkeypatch, capsys):
    """``--embedding-cache`` keeps its model's name: another model (or an old file that does not say) starts
    afresh instead of reading vectors of another space."""
    calls: list[tuple[str, list[str]]] = []

    class Model:
        def __init__(self, spec: str):
            self.spec = spec

        def embed(self, texts):
            calls.append((self.spec, list(texts)))
            sign = 1.0 if self.spec == "a" else -1.0
            return np.array([[sign * (len(t) % 7 + 1), 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(fit_fusion, "get_embedder", Model)
    path = tmp_path / "emb.pkl"
    first = fit_fusion.DiskEmbedder(path, "a")
    va = first.embed(["Jordan", "Michael Jordan"])
    first.save()
    again = fit_fusion.DiskEmbedder(path, "a")
    assert np.allclose(again.embed(["Jordan", "Michael Jordan"]), va) and len(calls) == 1  # read back, no model call
    other = fit_fusion.DiskEmbedder(path, "b")
    vb = other.embed(["Jordan"])
    assert len(calls) == 2 and calls[-1][0] == "b" and vb[0, 0] < 0  # its own vectors, not model a's
    assert "holds vectors of embedding model 'a', this run uses 'b'" in capsys.readouterr().err
    import pickle

    path.write_bytes(pickle.dumps({"Jordan": np.zeros(2, np.float16)}))  # a cache written before the model was named
    legacy = fit_fusion.DiskEmbedder(path, "a")
    assert legacy.embed(["Jordan"])[0, 0] > 0 and "does not record its embedding model" in capsys.readouterr().err
    path.write_bytes(b"not a pickle")
    assert fit_fusion.DiskEmbedder(path, "a").embed(["x"]).shape == (1, 2)
    assert "unreadable" in capsys.readouterr().err


def _with_image_text(tmp_path: Path, n: int = 40) -> tuple[str, str]:
    """``_slice`` whose images show the gold's family name (the mention), as a surname in a photo's text does;
    every fifth mention has no image description."""
    data, labels = _slice(tmp_path, n=n)
    raw = json.loads(Path(data).read_text())
    for k, rec in enumerate(raw.values()):
        if k % 5 != 4:
            rec["mention_imgdesc_Azure"] = {"Caption": f"a photo of {rec['mention']}", "OCR": rec["mention"]}
    Path(data).write_text(json.dumps(raw))
    return data, labels


def test_clue_nil_copies_remove_the_gold_of_a_seeded_share_of_described_mentions(tmp_path):
    data, labels = _with_image_text(tmp_path)
    raw, gold = json.loads(Path(data).read_text()), json.loads(Path(labels).read_text())
    path, lab = fit._clue_nil_copy(data, labels, tmp_path / "cache", 0.5, seed=0)
    copy, nil = json.loads(Path(path).read_text()), json.loads(Path(lab).read_text())
    assert set(copy) == set(nil) and set(nil.values()) == {"nil"}
    eligible = [r for r, rec in raw.items() if gold[r] != "nil" and "mention_imgdesc_Azure" in rec]
    assert set(copy) <= set(eligible) and 0 < len(copy) < len(eligible)  # a share of them
    for rid, rec in copy.items():  # the gold removed, the rest kept in order, the image kept
        assert [c["name"] for c in rec["Candentity"]] == [c["name"] for c in raw[rid]["Candentity"]
                                                          if c["name"] != gold[rid]]
        assert rec["mention_imgdesc_Azure"] == raw[rid]["mention_imgdesc_Azure"]
    again, _ = fit._clue_nil_copy(data, labels, tmp_path / "cache", 0.5, seed=0)
    assert again == path  # seeded and cached
    other = json.loads(Path(fit._clue_nil_copy(data, labels, tmp_path / "c2", 0.5, seed=1)[0]).read_text())
    assert set(other) != set(copy)  # another seed draws other mentions
    assert fit._clue_nil_copy(data, labels, tmp_path / "c3", 0.0, seed=0) is None


def test_clue_nil_copies_teach_the_clue_models_nil_and_leave_the_text_models_alone(tmp_path, fakes):
    """With the copies, the image's text naming the mention's family no longer rules nil out in the clue
    models: their nil probability rises on the mentions whose gold was removed; the text models are the same."""
    data, labels = _with_image_text(tmp_path)
    docs = {}
    for share in ("0", "0.5"):
        out = tmp_path / f"w{share}.json"
        argv = ["fit", f"{data}:{labels}", "--folds", "2", "--no-llm", "--cache", str(tmp_path / "c"),
                "--augment-clue-nil", share, "--out", str(out)]
        assert cli_main(argv) == 0
        docs[share] = (json.loads(out.read_text()), load_weights(str(out)))
    (plain, wp), (aug, wa) = docs["0"], docs["0.5"]
    assert plain["text_unordered"] == aug["text_unordered"] and plain["text"] == aug["text"]
    assert plain["clue_unordered"] != aug["clue_unordered"]
    path, lab = fit._clue_nil_copy(data, labels, tmp_path / "c", 0.5, seed=0)
    m = fit_fusion.build_matrix(path, lab, get_embedder(BagOfWordsEmbeddings()))
    assert m["has_clues"].all()
    log_odds = {k: np.mean([np.log(p / (1 - p)) for p in (distribution(w.logits(x, with_clues=True, ranked=False),
                                                                        True)[1] for x in m["X"])])
                for k, w in (("plain", wp), ("aug", wa))}  # nil's mean log-odds on the gold-removed mentions
    assert log_odds["aug"] > log_odds["plain"] + 1.0, log_odds


def test_a_fit_without_the_llm_carries_every_llm_term_of_its_base_and_each_folds(tmp_path, fakes):
    """``--no-llm`` keeps the base's LLM weight, nil and context terms in ``--out``; its fold files take the
    base's own held-out terms of each fold when the base records them for the same folds, else the base's
    all-data terms, said to be not held out."""
    data, labels = _slice(tmp_path, n=32)
    base = tmp_path / "base.json"
    assert cli_main(["fit", f"{data}:{labels}", "--folds", "2", "--gate", "1.0", "--llm-mode", "w+nil",
                     "--out", str(base), "--llm-cache", str(tmp_path / "llm"), "--cache", ""]) == 0
    doc = json.loads(base.read_text())
    doc["llm_context"] = {"weight": 0.25}  # a context term too: carried like the others
    base.write_text(json.dumps(doc))
    per_fold = doc["fit"]["llm"]["fold_params"]["w+nil"]
    assert per_fold[0] != per_fold[1] and doc["llm_nil"]
    calls = len(fakes.seen)
    out, folds = tmp_path / "refit.json", tmp_path / "folds"
    assert cli_main(["fit", f"{data}:{labels}", "--folds", "2", "--no-llm", "--base", str(base), "--cache", "",
                     "--out", str(out), "--fold-weights", str(folds)]) == 0
    assert len(fakes.seen) == calls  # no LLM call
    refit = json.loads(out.read_text())
    assert refit["llm_nil"] == doc["llm_nil"] and refit["llm_context"] == {"weight": 0.25}
    assert refit["llm_weight"] == doc["llm_weight"]
    for k in (0, 1):
        fk = json.loads((folds / f"fold{k}.json").read_text())
        assert fk["llm_weight"]["likelihood"] == per_fold[k]["w"]
        assert fk["llm_nil"] == {"bias": per_fold[k]["nil_bias"], "weight": per_fold[k]["nil_weight"]}
        assert "its fold" in fk["fit"]["llm"] and load_weights(str(folds / f"fold{k}.json")).llm_nil
    three = tmp_path / "folds3"
    assert cli_main(["fit", f"{data}:{labels}", "--folds", "3", "--no-llm", "--base", str(base), "--cache", "",
                     "--fold-weights", str(three), "--out", str(tmp_path / "refit3.json")]) == 0
    f0 = json.loads((three / "fold0.json").read_text())  # other folds: the base's all-data terms, said so
    assert f0["llm_nil"] == doc["llm_nil"] and "not held out" in f0["fit"]["llm"]
    # a 3-fold refit, and a refit of it, carry the 2-fold record with its own fold count: a 2-fold refit of
    # the last still gets each fold's terms
    assert cli_main(["fit", f"{data}:{labels}", "--folds", "3", "--no-llm", "--base", str(tmp_path / "refit3.json"),
                     "--cache", "", "--out", str(tmp_path / "refit3b.json")]) == 0
    assert json.loads((tmp_path / "refit3b.json").read_text())["fit"]["llm"]["folds"] == 2
    assert cli_main(["fit", f"{data}:{labels}", "--folds", "2", "--no-llm", "--base", str(tmp_path / "refit3b.json"),
                     "--cache", "", "--fold-weights", str(tmp_path / "folds2of3")]) == 0
    assert "its fold" in json.loads((tmp_path / "folds2of3" / "fold1.json").read_text())["fit"]["llm"]
    rec = refit["fit"]["llm"]  # the base's LLM record travels on: a refit of the refit carries the same folds' terms
    assert rec["carried_from"] == str(base) and rec["fold_params"] == doc["fit"]["llm"]["fold_params"]
    again = tmp_path / "folds-again"
    assert cli_main(["fit", f"{data}:{labels}", "--folds", "2", "--no-llm", "--base", str(out), "--cache", "",
                     "--fold-weights", str(again)]) == 0
    for k in (0, 1):
        assert json.loads((again / f"fold{k}.json").read_text())["llm_nil"]["bias"] == per_fold[k]["nil_bias"]
