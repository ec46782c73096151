"""The fused scorer's wider shape (hidden units, features relative to the best rival) and the name
evidence added for names written other ways: possessives, coverage of the name, spelling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evals.fit_fusion import fit_clogit, fit_clogit_mlp, widen
from tools.embeddings import get_embedder
from tools.errors import ConfigError
from tools.features import ALL_FEATURES, candidate_features
from tools.fusion import distribution, linear_logits, load_weights, relative_rows, weights_document, write_weights
from tools.names import name_coverage, spelling_similarity, strip_possessive

from fakes import BagOfWordsEmbeddings

EMB = get_embedder(BagOfWordsEmbeddings())


# ---- name evidence -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, said", [
    ("Sydney's", "Sydney"), ("Nintendo\u2019s", "Nintendo"), ("the Jones'", "the Jones"),
    ("ESO's", "ESO"), ("Great Britain's", "Great Britain"),
    ("O'Brien", "O'Brien"), ("Côte d'Ivoire", "Côte d'Ivoire"), ("Paris", "Paris"),
])
def test_possessive_is_not_part_of_the_name(raw, said):
    assert strip_possessive(raw) == said


def test_name_coverage_counts_the_name_words_the_mention_accounts_for():
    assert name_coverage("Australian", "Australia") == 1.0  # a derived form covers its word
    assert name_coverage("Australian", "Australian Defence Force") == pytest.approx(1 / 3)
    assert name_coverage("Pakistan's", "Pakistan") == 1.0
    assert name_coverage("Colorado", "Colorado Springs, Colorado") == pytest.approx(2 / 3)
    assert name_coverage("Bank of England", "Bank_of_England") == 1.0  # function words left out, titles read
    assert name_coverage("Paris", "") == 0.0


def test_spelling_similarity_sees_misspellings_word_matching_misses():
    assert spelling_similarity("Panthopath", "Panthapath") > 0.85
    assert spelling_similarity("United Naitions", "United_Nations") > 0.9
    assert spelling_similarity("Kallita", "Kalitta Air") > spelling_similarity("Kallita", "Kenya Airways")
    assert spelling_similarity("Bratz", "Bratz_(film)") == 1.0  # disambiguator left out
    assert spelling_similarity("", "Paris") == 0.0


def test_possessive_mention_matches_the_entity_not_the_longer_name():
    cands = [{"qid": "Q3130", "name": "Sydney", "desc": ""}, {"qid": "Q45178", "name": "Sydney Opera House", "desc": ""}]
    x = candidate_features("Sydney's", "The Opera House is part of Sydney's skyline.", cands, EMB, ranked=False)
    col = {f: i for i, f in enumerate(ALL_FEATURES)}
    assert x[0, col["name_exact"]] == 1.0 and x[1, col["name_exact"]] == 0.0
    assert x[0, col["name_covered"]] == 1.0 and x[1, col["name_covered"]] == pytest.approx(1 / 3)
    assert x[0, col["spelling"]] == 1.0 > x[1, col["spelling"]]


# ---- relative inputs and hidden units ----------------------------------------------------------------

def test_relative_rows_compare_each_candidate_with_its_best_rival_whatever_the_order():
    x = np.array([[1.0, 5.0], [3.0, 2.0], [2.0, 2.0]])
    r = relative_rows(x)
    assert r.shape == (3, 4)
    np.testing.assert_allclose(r[:, 2], [1 - 3, 3 - 2, 2 - 3])
    np.testing.assert_allclose(r[:, 3], [5 - 2, 2 - 5, 2 - 5])
    perm = [2, 0, 1]
    np.testing.assert_allclose(relative_rows(x[perm]), r[perm])
    np.testing.assert_allclose(relative_rows(x[:1])[:, 2:], 0.0)  # a list of one has no rival


def _interaction_data(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The gold is the one candidate whose two cues disagree (an exclusive or), else nil; the others
    have both cues on or both off. No linear score of a candidate's cues ranks (1,0) and (0,1) above
    both (0,0) and (1,1)."""
    rng = np.random.default_rng(seed)
    X, gold = [], []
    for m in range(n):
        same = rng.integers(0, 2, size=6).astype(float)
        x = np.stack([same, same], 1)
        if rng.random() < 0.75:
            g = int(rng.integers(6))
            x[g] = [1.0, 0.0] if rng.random() < 0.5 else [0.0, 1.0]
            gold.append(g)
        else:
            gold.append(-1)
        X.append(x)
    return X, np.array(gold)


def _accuracy(model, X, gold) -> float:
    ok = 0
    for x, g in zip(X, gold):
        probs, p_nil = distribution(linear_logits(model, x, [0, 1]), True)
        b = int(np.argmax(probs))
        ok += int((-1 if p_nil > probs[b] else b) == g)
    return ok / len(X)


def test_hidden_units_learn_what_a_linear_score_cannot_and_refit_identically():
    X, gold = _interaction_data(600, 0)
    Xt, gt = _interaction_data(400, 1)
    linear = fit_clogit(X, gold, [0, 1], C=1.0)
    mlp = fit_clogit_mlp(X, gold, [0, 1], hidden=8, relative=False, weight_decay=1e-4)
    assert _accuracy(mlp, Xt, gt) > _accuracy(linear, Xt, gt) + 0.05
    assert _accuracy(mlp, Xt, gt) > 0.9
    again = fit_clogit_mlp(X, gold, [0, 1], hidden=8, relative=False, weight_decay=1e-4)
    assert again["hidden"]["W"] == mlp["hidden"]["W"] and again["coef"] == mlp["coef"]  # seeded, one thread


def test_a_relative_hidden_model_round_trips_through_a_weights_file_and_is_order_free(tmp_path):
    X, gold = _interaction_data(300, 2)
    cols = [ALL_FEATURES.index("dense"), ALL_FEATURES.index("name_exact")]
    wide = [np.zeros((len(x), len(ALL_FEATURES))) for x in X]
    for w, x in zip(wide, X):
        w[:, cols] = x
    narrow = fit_clogit_mlp(wide, gold, cols, hidden=4, relative=True, weight_decay=1e-3)
    model = widen(narrow, cols)
    assert len(model["coef"]) == 2 * len(ALL_FEATURES) and len(model["hidden"]["W"][0]) == 2 * len(ALL_FEATURES)
    doc = weights_document({"text": model, "clue": model}, llm_weight=0.5, nil_row=True)
    path = write_weights(tmp_path / "w.json", doc)
    loaded = load_weights(str(path))
    x = wide[0]
    z = loaded.logits(x, with_clues=False)
    np.testing.assert_allclose(z, linear_logits(narrow, x, cols), atol=1e-9)  # widened = narrow
    perm = np.random.default_rng(0).permutation(len(x))
    np.testing.assert_allclose(loaded.logits(x[perm], with_clues=False), z[perm], atol=1e-12)


def test_malformed_hidden_layer_is_a_config_error(tmp_path):
    zero = [0.0] * len(ALL_FEATURES)
    model = {"coef": zero, "intercept": 0.0, "mean": zero, "scale": [1.0] * len(ALL_FEATURES),
             "hidden": {"W": [[0.0] * 3], "b": [0.0], "v": [1.0]}}
    doc = {"features": list(ALL_FEATURES), "text": model, "clue": model, "nil_row": True}
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="hidden layer shapes"):
        load_weights(str(p))
    model2 = {**model, "relative": True}
    model2.pop("hidden")
    p.write_text(json.dumps({**doc, "text": model2}))
    with pytest.raises(ConfigError, match="plain and relative"):
        load_weights(str(p))


def test_linear_only_inputs_never_reach_the_hidden_units():
    X, gold = _interaction_data(200, 3)
    m = fit_clogit_mlp(X, gold, [0, 1], hidden=4, relative=True, weight_decay=1e-3, linear_only=[0])
    W = np.asarray(m["hidden"]["W"])
    assert W.shape == (4, 4)
    assert np.all(W[:, 0] == 0.0) and np.all(W[:, 2] == 0.0)  # feature 0, plain and relative
    assert np.any(W[:, 1] != 0.0) and np.any(W[:, 3] != 0.0)
    # so the score moves with feature 0 in proportion only: its effect is the same whatever feature 1 is
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = linear_logits(m, x[:1], [0, 1]), linear_logits(m, x[1:2], [0, 1])
    z2 = linear_logits(m, x[2:3], [0, 1]), linear_logits(m, x[3:4], [0, 1])
    np.testing.assert_allclose(z[1] - z[0], z2[1] - z2[0], atol=1e-12)
