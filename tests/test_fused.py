"""The fused linker (the default ``linker_mode``): features, weights, the text-first gate, the LLM's letters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from graph import Context, graph
from tools import embedded_llm
from tools.choice import label_distribution, labels_for
from tools.embeddings import get_embedder
from tools.errors import ConfigError
from tools.features import ALL_FEATURES, candidate_features, entity_facts, gender_cue
from tools.fusion import PACKAGED_WEIGHTS, load_weights
from tools.models import load_chat_model

from fakes import BagOfWordsEmbeddings, TableScorer, scripted
from providers_helpers import FakeOpenAI, write_tiny_gguf

CANDS = [
    {"qid": "Q1", "name": "Anna Berg", "desc": "Name: Anna Berg. Sex: female. Birth: 1950. Occupation: politician."},
    {"qid": "Q2", "name": "Carl Berg", "desc": "Name: Carl Berg. Sex: male. Birth: 1801. Death: 1870. Occupation: painter."},
    {"qid": "Q3", "name": "Berg", "desc": "Name: Berg. a mountain"},
]
INPUT = {"mention": "Berg", "context": "Berg said in 2011 that she would run again.", "candidates": CANDS}


def weights_file(tmp_path: Path, **coef: float) -> str:
    """A weights file whose text and clue models use only the given features (standardisation off)."""
    w = [coef.get(f, 0.0) for f in ALL_FEATURES]
    model = {"coef": w, "intercept": 0.0, "mean": [0.0] * len(w), "scale": [1.0] * len(w)}
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"features": list(ALL_FEATURES), "text": model, "clue": model, "llm_weight": 1.0}))
    return str(path)


def run(model, weights, inputs=None, **settings):
    ctx = Context(linker_model=model, embedding_model=BagOfWordsEmbeddings(), verifier=TableScorer({}),
                  fusion_weights=weights, **settings)
    return graph.invoke({**INPUT, **(inputs or {})}, context=ctx)


def links(out):
    return [t for t in out["trace"] if t["step"] == "link"]


class LetterModel(scripted("x").__class__):
    """A chat model that scores letters directly (as the llama.cpp model does), recording each call."""

    logprobs: dict = {}
    calls: list = []

    def label_logprobs(self, messages, labels):
        self.calls.append(messages[-1].content)
        return {lab: self.logprobs.get(lab, -10.0) for lab in labels}, 100


def letter_model(**logprobs: float) -> LetterModel:
    return LetterModel(responses=["x"], prompts=[], logprobs=logprobs, calls=[])


class NameModel(LetterModel):
    """A chat model that also scores given answers token by token (as llama.cpp and transformers do)."""

    names: dict = {}

    def continuation_logprobs(self, messages, continuations):
        self.calls.append(messages[-1].content)
        return [[self.names.get(c, -10.0), -0.5] for c in continuations], 42


def name_model(**names: float) -> NameModel:
    return NameModel(responses=["x"], prompts=[], logprobs={}, calls=[],
                     names={k.replace("_", " "): v for k, v in names.items()})


# ---------------------------------------------------------------- features ---
def test_features_read_gender_dates_and_names():
    emb = get_embedder(BagOfWordsEmbeddings())
    f = candidate_features(INPUT["mention"], INPUT["context"], CANDS, emb)
    col = {n: i for i, n in enumerate(ALL_FEATURES)}
    assert f.shape == (3, len(ALL_FEATURES))
    assert list(f[:, col["gender_text"]]) == [1, -1, 0]  # "she" agrees with Anna, not with Carl
    assert list(f[:, col["years_alive"]]) == [1, 0, 0] and list(f[:, col["years_dead"]]) == [0, 1, 0]
    assert list(f[:, col["died_before_1900"]]) == [0, 1, 0]
    assert list(f[:, col["name_exact"]]) == [0, 0, 1] and list(f[:, col["surname_match"]]) == [1, 1, 1]
    assert list(f[:, col["list_rank_inv"]]) == [1, 0.5, pytest.approx(1 / 3)]
    assert f[:, col["dense_top"]].sum() == 1 and f[:, col["clue_dense"]].sum() == 0  # no clues: clue columns 0
    with_clues = candidate_features("Berg", "", CANDS, emb, clue_text="a woman at a lectern", ocr_text="ANNA BERG")
    assert list(with_clues[:, col["gender_clue"]]) == [1, -1, 0]
    # the photo's text credits the name's words beyond the mention's: "BERG" is every Berg's, "ANNA" only Anna's
    assert list(with_clues[:, col["name_in_ocr"]]) == [1, 0, 0]
    murray = [{"name": "Charles Murray Marling", "desc": ""}, {"name": "Pauli Murray", "desc": ""}]
    f = candidate_features("Pauli Murray", "", murray, emb, clue_text="a book", ocr_text="MURRAY")
    assert list(f[:, col["name_in_ocr"]]) == [0, 0]  # the mention's own surname credits no namesake
    f = candidate_features("Murray", "", murray, emb, clue_text="a book", ocr_text="Pauli Murray: Song in a Weary Throat")
    assert list(f[:, col["name_in_ocr"]]) == [0, 1]


def test_fact_parsers():
    assert entity_facts("Name: X. Sex: female. Birth: 0037, Anzio. Death: 0068.") == {"sex": -1, "birth": 37, "death": 68}
    assert entity_facts("a river") == {"sex": 0, "birth": None, "death": None}
    assert gender_cue("He and his team") == 1 and gender_cue("she met him") == 0 and gender_cue("") == 0


def test_packaged_weights_load_and_carry_their_fit():
    w = load_weights(None)
    assert w.source == str(PACKAGED_WEIGHTS) and w.features == list(ALL_FEATURES)
    assert w.fit["mentions"] > 0 and 0 < w.fit["cv"]["text_unordered"]["WikiMEL_dev.json"]["top1"] <= 1


def test_bad_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fusion_weights: file not found"):
        run(scripted("A"), str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"features": ["dense"]}')
    with pytest.raises(ConfigError, match="not a weights file"):
        run(scripted("A"), str(bad))


# -------------------------------------------------------------------- gate ---
def test_decisive_text_evidence_skips_the_llm(tmp_path):
    model = scripted("C")
    out = run(model, weights_file(tmp_path, name_exact=8.0), gate_threshold=0.9)
    assert out["entity"]["qid"] == "Q3" and out["status"] == "text_only"
    assert model.prompts == [] and out["usage"].get("llm_calls", 0) == 0
    assert links(out)[0]["gated"] is True and "LLM not asked" in links(out)[0]["note"]


def test_undecided_text_evidence_asks_the_llm_once_and_fuses(tmp_path):
    weights = weights_file(tmp_path, list_first=0.5)  # a weak preference for the first candidate
    model = letter_model(A=-3.0, B=-0.1, C=-3.0)
    out = run(model, weights, gate_threshold=0.9)
    assert out["entity"]["qid"] == "Q2" and out["usage"]["llm_calls"] == 1 and len(model.calls) == 1
    assert "B. Carl Berg — Sex: male" in model.calls[0]  # lettered, the repeated "Name: ..." dropped
    assert links(out)[0]["llm"]["method"] == "logits"
    # the LLM's log-probabilities count with llm_weight: at 0 the text evidence decides alone
    assert run(letter_model(A=-3.0, B=-0.1, C=-3.0), weights, llm_weight=0.0)["entity"]["qid"] == "Q1"


def test_a_model_whose_weight_is_zero_is_not_asked(tmp_path):
    """A weights file giving the model's scoring route weight 0 (what `i2cr fit` writes for a model that adds
    nothing) makes every call pointless: undecided mentions are linked on the text, the model never called."""
    doc = json.loads(Path(weights_file(tmp_path, list_first=0.5)).read_text())
    doc["llm_weight"] = {"likelihood": 0.0, "choice": 1.0}
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps(doc))
    model = name_model(Anna_Berg=-6.0, Carl_Berg=-1.0, Berg=-6.0)
    out = run(model, str(zero), gate_threshold=0.9)
    assert model.calls == [] and out["usage"].get("llm_calls", 0) == 0 and out["entity"]["qid"] == "Q1"
    assert "LLM weight 0" in links(out)[0]["note"] and links(out)[0]["gated"] is True
    # the other route keeps its weight: the lettered model is asked
    letters = letter_model(A=-3.0, B=-0.1, C=-3.0)
    assert run(letters, str(zero), gate_threshold=0.9)["entity"]["qid"] == "Q2" and len(letters.calls) == 1
    # llm_weight=0 set by hand: not asked either
    letters = letter_model(A=-3.0, B=-0.1, C=-3.0)
    assert run(letters, str(zero), gate_threshold=0.9, llm_weight=0.0)["entity"]["qid"] == "Q1" and letters.calls == []


def test_names_are_scored_by_likelihood_when_the_model_can(tmp_path):
    weights = weights_file(tmp_path, list_first=0.5)
    model = name_model(Anna_Berg=-6.0, Carl_Berg=-1.0, Berg=-6.0)
    out = run(model, weights, {"image_desc": {"Caption": "a man"}}, gate_threshold=0.9, llm_in_clue_rounds=True)
    assert out["entity"]["qid"] == "Q2" and len(links(out)) >= 1
    first = links(out)[0]
    assert first["llm"]["method"] == "likelihood" and first["llm"]["weight"] == 1.0
    assert model.calls[0].startswith("Text: Berg said in 2011") and 'What does "Berg" refer to in this text?' in model.calls[0]
    assert "Visual clues" in model.calls[1] and model.calls[1].index("Visual clues") > model.calls[1].index("Text:")
    assert out["usage"]["input_tokens"] == 42 * len(model.calls)
    # the weights file gives each method its own weight; llm_weight overrides both
    per_method = tmp_path / "per_method.json"
    per_method.write_text(json.dumps({**json.loads(Path(weights).read_text()),
                                      "llm_weight": {"likelihood": 0.0, "choice": 1.0}}))
    weights = str(per_method)
    assert run(name_model(Anna_Berg=-6.0, Carl_Berg=-1.0, Berg=-6.0), weights)["entity"]["qid"] == "Q1"
    assert run(name_model(Anna_Berg=-6.0, Carl_Berg=-1.0, Berg=-6.0), weights, llm_weight=1.0)["entity"]["qid"] == "Q2"
    # llm_scoring="choice" reads the letters even when names could be scored
    letters = NameModel(responses=["x"], prompts=[], logprobs={"C": -0.01}, calls=[], names={})
    out = run(letters, weights, llm_scoring="choice", llm_weight=1.0)
    assert out["entity"]["qid"] == "Q3" and links(out)[0]["llm"]["method"] == "logits"


def test_likelihood_scoring_on_a_model_that_cannot_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="llm_scoring 'likelihood': linker_model .* does not expose"):
        run(scripted("A"), weights_file(tmp_path), llm_scoring="likelihood")
    out = run(scripted("A"), weights_file(tmp_path))  # auto: letters, sampled
    assert links(out)[0]["llm"]["method"] == "sampled"
    with pytest.raises(ConfigError, match="llm_scoring: expected 'auto', 'likelihood' or 'choice'"):
        Context(llm_scoring="vote")


def test_bad_llm_weight_in_a_weights_file_is_a_config_error(tmp_path):
    path = tmp_path / "bad_llm_weight.json"
    path.write_text(json.dumps({**json.loads(Path(weights_file(tmp_path)).read_text()),
                                "llm_weight": {"likelihood": "much"}}))
    with pytest.raises(ConfigError, match="llm_weight must be a number"):
        load_weights(str(path))


def test_a_failed_reflection_costs_no_second_call(tmp_path):
    model = letter_model(A=-1.2, B=-1.0, C=-1.1)  # nothing is confident
    out = run(model, weights_file(tmp_path), confidence_threshold=0.9)
    assert len(model.calls) == 1 and len(links(out)) == 1
    reflections = [t for t in out["trace"] if t["step"] == "reflect"]
    assert len(reflections) == 1 and reflections[0]["pick"] == links(out)[0]["pick"]
    assert out["entity"]["qid"] == "Q2" and "kept, the round's most probable" in reflections[0]["note"]


def test_clue_rounds_rescore_with_clues_and_ask_again_with_the_clues_last(tmp_path):
    weights = weights_file(tmp_path, gender_clue=1.0)
    model = letter_model(A=-1.0, B=-1.0, C=-1.0)
    desc = {"Caption": "a woman speaking", "OCR text": "VOTE"}
    out = run(model, weights, {"image_desc": desc}, gate_threshold=0.99, llm_in_clue_rounds=True)
    rounds = [t for t in links(out)]
    assert [t["round"] for t in rounds] == [1, 2, 3]  # text, ocr, caption (objects/scene empty: no round)
    assert len(model.calls) == 3
    assert model.calls[1].index("Visual clues") > model.calls[1].index("Text: ")  # clues after the stable prefix
    assert model.calls[0].split("Mention:")[0] == model.calls[2].split("Mention:")[0]
    assert rounds[2]["pick"]["qid"] == "Q1"  # "a woman" in the caption favours Anna Berg


def test_llm_in_clue_rounds_off_asks_once_and_keeps_its_round_1_scores(tmp_path):
    model = name_model(Anna_Berg=-9.0, Carl_Berg=-0.5, Berg=-9.0)
    out = run(model, weights_file(tmp_path), {"image_desc": {"Caption": "a woman", "OCR text": "VOTE"}},
              gate_threshold=0.99)  # llm_in_clue_rounds is off by default
    assert len(model.calls) == 1 and out["usage"]["llm_calls"] == 1
    later = links(out)[1:]
    assert later and all("LLM not asked in clue rounds" in t["note"] and "round-1 scores still count" in t["note"]
                         for t in later)
    assert all(t["pick"]["qid"] == "Q2" for t in later)  # the LLM's text opinion still decides the clue rounds


def test_a_model_without_scores_is_sampled(tmp_path):
    model = scripted("C")
    out = run(model, weights_file(tmp_path), gate_threshold=1.0)
    assert out["entity"]["qid"] == "Q3" and links(out)[0]["llm"]["method"] == "sampled"
    assert "Answer with the letter only" in model.prompts[0]


@pytest.mark.parametrize("reply, parsed", [("C", "C"), ("3", "C"), ("**2**", "B"), ("1.", "A"), ("(d)", "D"),
                                           ("Tony Parker", "B"), ("5", None), ("0", None), ("22", None),
                                           ("²", None), ("1" * 5000, None), ("٣", "C")])
def test_a_sampled_answer_is_read_as_a_letter_a_number_or_a_name(reply, parsed):
    model = scripted(reply)
    logp, call = label_distribution(model, [HumanMessage("pick")], ["A", "B", "C", "D"],
                                    ["Michael Jordan", "Tony Parker", "Jordan River", "Jordan (country)"], spec="fake")
    assert call["method"] == "sampled" and call["parsed"] == parsed
    if parsed is None:  # nothing read: the call counts for nothing (a uniform distribution)
        assert len(set(logp)) == 1
    else:
        assert max(range(4), key=lambda i: logp[i]) == "ABCD".index(parsed)


def test_gate_and_mode_settings_are_checked():
    with pytest.raises(ConfigError, match="gate_threshold: expected a number between 0 and 1"):
        Context(gate_threshold=1.5)
    with pytest.raises(ConfigError, match="linker_mode: expected 'fused' or 'llm'"):
        Context(linker_mode="vote")


# ------------------------------------------------------------- providers ---
def test_openai_logprobs_are_read():
    with FakeOpenAI(reply="B", top_logprobs={"A": -2.0, "B": -0.2, " C": -3.0, "x": -0.1}) as server:
        model = load_chat_model("openai:fake", base_url=server.base_url)
        logp, call = label_distribution(model, [HumanMessage("pick")], ["A", "B", "C", "D"], ["a", "b", "c", "d"],
                                        spec="openai:fake")
        assert call["method"] == "logprobs" and logp[:3] == [-2.0, -0.2, -3.0] and logp[3] == -12.0
        assert server.requests[-1]["logprobs"] is True and server.requests[-1]["top_logprobs"] == 20
    with FakeOpenAI(reply="B") as server:  # a server without logprobs: the answer is sampled and parsed
        model = load_chat_model("openai:fake", base_url=server.base_url)
        logp, call = label_distribution(model, [HumanMessage("pick")], ["A", "B"], ["a", "b"], spec="openai:fake")
        assert call["method"] == "sampled" and call["parsed"] == "B" and logp[1] == pytest.approx(math.log(0.9))


def test_llama_cpp_letter_scores_reuse_the_prompt_prefix(tmp_path):
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    model = load_llama_cpp_chat_model(gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=4, n_ctx=256)
    msgs = [SystemMessage("pick a letter"), HumanMessage("A. one\nB. two\nC. three")]
    labels = labels_for(3)
    first, n = model.label_logprobs(msgs, labels)
    assert n > 5 and math.isclose(sum(math.exp(v) for v in first.values()), 1.0, rel_tol=1e-6)
    llama = model._shared().llama
    again, _ = model.label_logprobs(msgs, labels)  # same prompt: only the last token is evaluated again
    assert llama.n_tokens == n
    assert np.allclose(list(first.values()), list(again.values()), atol=1e-3)
    longer = [msgs[0], HumanMessage("A. one\nB. two\nC. three\nClue: a woman")]
    _, n2 = model.label_logprobs(longer, labels)
    assert n2 > n and llama.n_tokens == n2


# ------------------------------------------------------------------- fitting ---
def test_fit_script_writes_loadable_weights_with_cross_validated_figures(tmp_path, capsys):
    from evals import fit_fusion

    data = Path(__file__).parent / "data"
    out = tmp_path / "w.json"
    assert fit_fusion.main([str(data / "wikimel_small.json"), "--labels", str(data / "wikimel_small_label.json"),
                            "--folds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text            wikimel_small.json: 2-fold CV Top-1" in printed and "text_unordered  wikimel_small.json" in printed
    w = load_weights(str(out))
    assert w.fit["folds"] == 2 and w.fit["mentions"] >= 2 and 0 <= w.fit["cv"]["text"]["wikimel_small.json"]["top1"] <= 1
    assert w.nil_row and set(w.models) == {"text", "clue", "text_unordered", "clue_unordered"}
    assert len(w.models["text"]["coef"]) == len(ALL_FEATURES)
    clue_cols = [ALL_FEATURES.index(f) for f in ("clue_dense", "gender_clue")]
    assert all(w.models["text"]["coef"][i] == 0 for i in clue_cols)  # the text model never sees clue features


def test_cv_eval_links_each_fold_with_weights_fitted_on_the_other_folds(tmp_path):
    from evals import cv_eval

    data = Path(__file__).parent / "data"
    out = tmp_path / "cv"
    assert cv_eval.main([str(data / "wikimel_small.json"), "--labels", str(data / "wikimel_small_label.json"),
                         "--folds", "2", "--out", str(out), "--set", "gate_threshold=0"]) == 0
    fold_sizes = [len(json.loads((out / "data" / f"fold{k}.json").read_text())) for k in (0, 1)]
    for k in (0, 1):
        weights = json.loads((out / "weights" / f"fold{k}.json").read_text())
        assert weights["fit"]["fold"] == k and weights["fit"]["trained_on"] == fold_sizes[1 - k]
        config = json.loads((out / f"fold{k}" / "config.json").read_text())
        assert config["settings"]["fusion_weights"] == str((out / "weights" / f"fold{k}.json").resolve())
    merged = (out / "all" / "predictions.jsonl").read_text().splitlines()
    assert len(merged) == sum(fold_sizes) and len({json.loads(x)["id"] for x in merged}) == len(merged)
    assert "2-fold cross-validated" in (out / "report.md").read_text()


def test_llm_weight_fit_is_nested_cross_validated_cached_and_written(tmp_path, capsys):
    from evals import fit_llm_weight

    data = Path(__file__).parent / "data"
    weights = tmp_path / "w.json"
    weights.write_text(PACKAGED_WEIGHTS.read_text())
    cache = tmp_path / "scores.jsonl"
    args = [str(data / "wikimel_small.json"), "--labels", str(data / "wikimel_small_label.json"), "--folds", "2",
            "--gate", "1.0", "--weights", str(weights), "--cache", str(cache), "--llm-scoring", "choice",
            "--linker-model", "openai:fake"]
    with FakeOpenAI(reply="A", top_logprobs={"A": -0.05, "B": -3.0}) as server:
        assert fit_llm_weight.main([*args, "--set", f"openai_base_url={server.base_url}"]) == 0
        asked = len(server.requests)
        printed = capsys.readouterr().out
        assert "fused (nested CV)" in printed and "LLM alone" in printed and "| 1.0 | 100.0% |" in printed
        written = json.loads(weights.read_text())
        fit = written["fit"]["llm"]
        assert fit["method"] == "choice" and len(fit["fold_weights"]) == 2 and fit["asked"] == asked > 0
        assert written["llm_weight"]["choice"] == fit["weight"] and "likelihood" in written["llm_weight"]
        assert len(cache.read_text().splitlines()) == asked
        assert load_weights(str(weights)).llm_weight_for("choice") == fit["weight"]
        # a rerun reads the cache: the model is not asked again
        assert fit_llm_weight.main([*args, "--set", f"openai_base_url={server.base_url}"]) == 0
        assert len(server.requests) == asked


def test_cv_eval_gives_each_fold_its_own_llm_weight(tmp_path):
    from evals import cv_eval

    src = json.loads(PACKAGED_WEIGHTS.read_text())
    src["fit"]["llm"] = {"method": "likelihood", "folds": 2, "fold_weights": [0.25, 0.75]}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(src))
    per_fold, floor = cv_eval.llm_fold_weights(str(path), 2)
    assert [w["likelihood"] for w in per_fold] == [0.25, 0.75] and floor == src["llm_floor"]
    assert cv_eval.llm_fold_weights(str(path), 5)[0] == [src["llm_weight"]] * 5  # no 5-fold fit: the file's weight
    for record in ("carried from another file", None, ["not", "a", "record"]):  # fit.llm that is no record:
        src["fit"]["llm"] = record  # the file's own weight for every fold, not an AttributeError
        path.write_text(json.dumps(src))
        assert cv_eval.llm_fold_weights(str(path), 2)[0] == [src["llm_weight"]] * 2
    path.write_text(json.dumps({**src, "fit": "a note"}))
    assert cv_eval.llm_fold_weights(str(path), 2)[0] == [src["llm_weight"]] * 2


def test_llm_score_cache_skips_damaged_and_mismatched_rows(tmp_path):
    from evals.fit_llm_weight import ask
    from prompts.linking import PROMPT_VERSION

    k = f"huggingface:m|choice|{PROMPT_VERSION}"  # rows of another prompt version are asked again

    cache = tmp_path / "scores.jsonl"
    cache.write_text(f'5\n{{"id": "a", "key": "{k}", "logp": [-1.0, -2.0]}}\n'
                     f'{{"id": "a", "key": "{k}", "logp": [-1.0]}}\n{{"id": "b", "key": "{k}", "logp": [0]}}\n'
                     '{"id": "a", "key": "other|choice", "logp": [-9.0, -9.0]}\n'
                     '{"id": "a", "key": "huggingface:m|choice", "logp": [-9.0, -9.0]}\nbroken{\n')
    got = ask({"a": {"candidates": [{}, {}]}}, ["a"], {"linker_model": "huggingface:m", "llm_scoring": "choice"}, cache)
    assert got == {"a": {"id": "a", "key": k, "logp": [-1.0, -2.0]}}  # nothing asked: the good row serves
