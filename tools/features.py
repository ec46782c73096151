"""Cheap per-candidate evidence for the fused linker (no LLM call).

For one mention, :func:`candidate_features` returns one row per candidate:

* dense similarity of mention+context with the entity's name+description
  (absolute, gap to the best other candidate, rank among the candidates);
* the candidate's position in the list it came with (benchmark or retrieval order),
  only when that order is declared informative (``ranked=True``); otherwise every
  candidate gets the position features' average over the list, so the list's
  order cannot change any score;
* name agreement, on names normalised by :mod:`tools.names` (Wikipedia titles,
  underscores, %-encoding, a trailing ``(disambiguator)`` split off) and the
  mention without its possessive (``Sydney's``): mention tokens found in the
  entity name, name tokens found in the text, exact and surname matches, the
  mention as an acronym of the name, the mention as a derived form (shared
  prefix) of a name word, the share of the name the mention accounts for
  (``name_covered``), character-level similarity (``spelling``), and the embedder's
  similarity of the mention alone with the name alone (``name_sim``: ``USA`` ~ ``United
  States``, ``Dutch`` ~ ``Netherlands``, what no word rule sees); the
  disambiguator as type evidence (present; its words found in the text);
* consistency of the entity's facts with the text: gender (pronouns and
  nouns vs ``Sex:``), life dates (years in the text vs ``Birth:``/``Death:``);
  the facts as :func:`tools.facts.entity_facts` reads them (Wikidata attributes, or a
  prose description's pronouns and lead parenthesis).
  These are +1 (consistent) / -1 (contradicted) / 0 (unknown: no attribute or
  no cue), so a description without Wikidata attributes moves no score;
  a missing description counts only relative to the other candidates
  (``desc_missing_rel``), never as a shift of every candidate at once;
* a prominence prior from the Wikidata id (``qid_prior``): ``-log10`` of the QID number relative
  to the list's average (lower, older ids are on average more prominent entities); 0 for a
  candidate whose id is not a Wikidata QID;
* with visual clues: dense similarity of the clue text with the entity,
  gender cues in the clues, entity name tokens in the OCR text.

Every feature is a plain number computed from the input; which matter, and how
much, is learned by ``evals/fit_fusion.py`` (weights in ``tools/data/``).
Features named in ``LEGACY_FEATURES`` are still computed so that weights files
written before them load; new fits do not use them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from tools.descriptions import says_more_than_name
from tools.facts import HE_PRONOUNS, SHE_PRONOUNS, entity_facts
from tools.names import feature_name, is_acronym_of, name_clash, name_coverage, prefix_share, spelling_similarity, words
from tools.texts import entity_text, mention_text, name_text, query_text

TEXT_FEATURES = (
    "dense", "dense_gap", "dense_top", "list_first", "list_rank_inv",
    "mention_in_name", "name_in_text", "name_exact", "surname_match", "acronym", "name_prefix",
    "name_covered", "spelling", "name_sim", "name_clash",
    "has_disamb", "disamb_in_text",
    "gender_text", "years_fit", "died_before_1900", "desc_missing_rel", "has_desc", "qid_prior",
)
CLUE_FEATURES = ("clue_dense", "clue_dense_gap", "clue_dense_top", "gender_clue", "name_in_ocr")
LEGACY_FEATURES = ("years_alive", "years_unborn", "years_dead", "no_desc")
RANK_FEATURES = ("list_first", "list_rank_inv")
"""Features read from the list's order: used only when the order is declared informative."""
ALL_FEATURES = TEXT_FEATURES + CLUE_FEATURES + LEGACY_FEATURES
_COL = {name: i for i, name in enumerate(ALL_FEATURES)}


_YEAR = re.compile(r"(?<!\d)(1[0-9]{3}|20[0-9]{2})(?!\d)")
_MALE = HE_PRONOUNS | {"man", "men", "boy", "mr", "king", "father", "son", "brother", "husband", "actor",
                      "gentleman", "sir", "prince", "lord"}
_FEMALE = SHE_PRONOUNS | {"woman", "women", "girl", "mrs", "ms", "miss", "queen", "mother", "daughter", "sister",
                          "wife", "actress", "lady", "princess"}


_QID = re.compile(r"Q([1-9][0-9]{0,11})")


def qid_prior(qids: list[Any]) -> np.ndarray:
    """``-log10`` of each Wikidata QID's number, relative to the list's average over its QIDs; 0 for others.

    Wikidata numbered entities in order of creation, and the prominent ones came first, so a lower
    number is weak evidence of a more prominent (more often mentioned) entity. Any other id scheme
    gives 0 (no evidence), as does a list with fewer than two QIDs.
    """
    vals = np.zeros(len(qids))
    ok = np.zeros(len(qids), bool)
    for i, q in enumerate(qids):
        m = _QID.fullmatch(str(q or "").strip())
        if m:
            vals[i], ok[i] = -np.log10(int(m.group(1))), True
    if ok.sum() < 2:
        return np.zeros(len(qids))
    vals[ok] -= vals[ok].mean()
    vals[~ok] = 0.0
    return vals


def gender_cue(text: str) -> int:
    """+1 male, -1 female, 0 unknown or mixed, from pronouns and nouns in ``text``."""
    said = words(text)
    male = sum(w in _MALE for w in said)
    female = sum(w in _FEMALE for w in said)
    if male and not female:
        return 1
    if female and not male:
        return -1
    return 0


def _share(part: list[str], whole: set[str]) -> float:
    return sum(t in whole for t in part) / len(part) if part else 0.0


def _relative(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gap of each value to the best *other* value, and a 1.0 flag for the top value."""
    n = len(values)
    if n == 1:
        return np.zeros(1), np.ones(1)
    order = np.argsort(-values)
    best, second = values[order[0]], values[order[1]]
    gap = values - np.where(np.arange(n) == order[0], second, best)
    top = (np.arange(n) == order[0]).astype(float)
    return gap, top


def rank_features(n: int, ranked: bool) -> tuple[np.ndarray, np.ndarray]:
    """``list_first`` and ``list_rank_inv`` of ``n`` candidates: by position when ``ranked``, else
    their average over the positions for every candidate (order-free, same absolute level)."""
    first = (np.arange(n) == 0).astype(float)
    inv = 1.0 / (np.arange(n) + 1.0)
    if ranked or n == 0:
        return first, inv
    return np.full(n, first.mean()), np.full(n, inv.mean())



def _candidate_key(candidates: list[dict]) -> tuple:
    """What the lexical features read of each candidate: its name, description and id."""
    return tuple((str(c.get("name") or ""), str(c.get("desc") or ""), str(c.get("qid") or "")) for c in candidates)


@lru_cache(maxsize=512)
def _lexical(said: str, mention: str, context: str, cands: tuple, ranked: bool) -> tuple[np.ndarray, tuple, tuple]:
    """The candidate-list columns that do not depend on embeddings or clues (names, facts, list position,
    id prior), the candidates' ``Sex:`` values and name tokens. A pure function of its strings, so kept
    for the mention's later rounds (each round scores the same candidates again; measured: this loop was
    most of the features' time). Read-only: callers copy from it."""
    col = _COL
    n = len(cands)
    out = np.zeros((n, len(ALL_FEATURES)), dtype=np.float64)
    m_tokens = words(said)
    text_tokens = set(words(f"{mention} {context}"))
    context_tokens = set(words(context))
    text_gender = gender_cue(context)
    years = [int(y) for y in _YEAR.findall(context or "")]
    out[:, col["list_first"]], out[:, col["list_rank_inv"]] = rank_features(n, ranked)
    sexes, all_name_tokens = [], []
    for i, (name, desc, _qid) in enumerate(cands):
        base, disamb = feature_name(name)
        name_tokens = words(base)
        dis_tokens = words(disamb)
        facts = entity_facts(desc, base)
        row = out[i]
        row[col["acronym"]] = float(is_acronym_of(said, base))
        row[col["name_prefix"]] = prefix_share(said, base)
        row[col["name_covered"]] = name_coverage(said, base)
        row[col["spelling"]] = spelling_similarity(said, base)
        row[col["name_clash"]] = name_clash(said, base)
        row[col["has_disamb"]] = float(bool(disamb))
        row[col["disamb_in_text"]] = _share(dis_tokens, context_tokens) if dis_tokens else 0.0
        row[col["mention_in_name"]] = _share(m_tokens, set(name_tokens))
        row[col["name_in_text"]] = _share(name_tokens, text_tokens)
        row[col["name_exact"]] = float(bool(m_tokens) and m_tokens == name_tokens)
        row[col["surname_match"]] = float(bool(m_tokens and name_tokens) and m_tokens[-1] == name_tokens[-1])
        row[col["gender_text"]] = text_gender * facts["sex"]
        if years and facts["birth"] is not None:
            y = max(years)
            end = facts["death"] if facts["death"] is not None else 10_000
            row[col["years_alive"]] = float(facts["birth"] <= y <= end + 1)
            row[col["years_unborn"]] = float(y < facts["birth"])
            row[col["years_dead"]] = float(y > end + 1)
            row[col["years_fit"]] = row[col["years_alive"]] - row[col["years_unborn"]] - row[col["years_dead"]]
        row[col["died_before_1900"]] = float(facts["death"] is not None and facts["death"] < 1900)
        row[col["no_desc"]] = float(not says_more_than_name(desc, name))  # an empty record is no description
        row[col["has_desc"]] = 1.0 - row[col["no_desc"]]
        sexes.append(facts["sex"])
        all_name_tokens.append(tuple(name_tokens))
    out[:, col["desc_missing_rel"]] = out[:, col["no_desc"]] - out[:, col["no_desc"]].mean()
    out[:, col["qid_prior"]] = qid_prior([q for _, _, q in cands])
    out.flags.writeable = False
    return out, tuple(sexes), tuple(all_name_tokens)


def candidate_features(mention: str, context: str, candidates: list[dict], embedder: Any,
                       clue_text: str = "", ocr_text: str = "", *, ranked: bool = True) -> np.ndarray:
    """A ``(len(candidates), len(ALL_FEATURES))`` matrix; clue columns are 0 without clues.

    ``ranked=False``: the list's order carries no information and cannot change any row.
    """
    if not candidates:
        return np.zeros((0, len(ALL_FEATURES)), dtype=np.float64)
    col = _COL
    said = mention_text(mention)  # without its possessive: "Sydney's" names Sydney
    lexical, sexes, name_tokens = _lexical(said, mention, context, _candidate_key(candidates), ranked)
    out = lexical.copy()
    query = query_text(mention, context)
    ents = [entity_text(c) for c in candidates]
    if hasattr(embedder, "embed_query_entities"):  # entity vectors through the embedder's persistent cache
        vecs = embedder.embed_query_entities(query, ents)
    else:
        vecs = embedder.embed([query, *ents])
    dense = vecs[1:] @ vecs[0]
    gap, top = _relative(dense)
    out[:, col["dense"]], out[:, col["dense_gap"]], out[:, col["dense_top"]] = dense, gap, top

    names = [name_text(c) for c in candidates]  # the same texts as entity_text when there is no description
    # a pass of its own: short texts batched with the long query and descriptions are padded to their
    # length (one merged pass measured 2.61 mentions/s against 3.28 for `bench_scale --configs eval`)
    if hasattr(embedder, "embed_query_entities"):
        nvecs = embedder.embed_query_entities(said, names)
    else:
        nvecs = embedder.embed([said, *names])
    out[:, col["name_sim"]] = nvecs[1:] @ nvecs[0]
    ocr_tokens = set(words(ocr_text)) if ocr_text else set()
    if ocr_tokens:  # the name's words beyond the mention's: the mention's own words in the photo's text say it
        said_tokens = set(words(said))  # is pictured, not which of the candidates sharing them it is
        out[:, col["name_in_ocr"]] = [_share([w for w in t if w not in said_tokens], ocr_tokens) for t in name_tokens]
    if clue_text:
        out[:, col["gender_clue"]] = gender_cue(clue_text) * np.asarray(sexes, dtype=float)
        cvec = embedder.embed([clue_text])[0]
        cdense = vecs[1:] @ cvec
        cgap, ctop = _relative(cdense)
        out[:, col["clue_dense"]], out[:, col["clue_dense_gap"]], out[:, col["clue_dense_top"]] = cdense, cgap, ctop
    return out
