"""``i2cr fit``: refit the fused linker's text, clue, LLM and nil weights on your own labelled mentions.

    python -m evals.fit DATA.json --labels LABELS.json --out weights.json
    python -m evals.fit A.json:A_label.json B.json:B_label.json --order ranked unordered --sample 0 3000 \\
        --eval V.json:V_label.json --eval-sample 300 --llm-sample 300 --out weights.json --json fit.json
    i2cr link ... --set fusion_weights=weights.json

1. Features of every labelled mention (cached in ``--cache``, keyed by the data, the embedding model and
   the feature code). ``--augment-noattr`` adds, for every training mention whose candidates carry
   ``Sex:``/``Birth:``/``Death:`` attributes, a copy with them removed (``evals/variants.strip_attributes``):
   the weights then also learn to link on descriptions without attributes. A copy shares its mention's fold, so it never trains the model
   that scores its own mention.
   ``--augment-homonym`` adds, for every training mention with described candidates whose gold is listed
   under another name, a copy in which another described candidate is renamed to the mention (an
   exact-name homonym that is not the gold).
   ``--augment-clue-nil SHARE`` adds, for the clue models only, copies of a seeded share of the training
   mentions that have image descriptions and a listed gold, with the gold removed and labelled nil.
2. K-fold cross-validation by mention id (a mention id's fold is fixed by a hash of the id): each
   fold's text models (conditional logits with a nil row, ``evals/fit_fusion.fit_models``; by default
   16 tanh units beside the linear score, over the features and their differences to the best rival,
   the embedding similarities linear only: ``--hidden``, ``--relative``, ``--linear-only``) are fitted
   on the other folds. Scores use the model the graph uses on an input list with the default
   ``candidate_order=auto`` (``text_unordered``: the list's order is not read).
3. LLM (unless ``--no-llm``): the linker model (``--linker-model``, the graph's own prompt) is asked
   about each mention the text model leaves undecided (top probability below ``--gate``, the graph's
   ``gate_threshold``); its answers are cached in ``--llm-cache``/<data>.jsonl keyed by mention id,
   model, scoring method and prompt version (``prompts.linking.PROMPT_VERSION``): rerun after a kill
   and only the rest is asked. The LLM weight is fitted *with* the nil row: per fold, on the other
   folds' asked mentions, by maximum likelihood of ``softmax([text + w * llm, nil])`` (nil golds
   included), so the text prior it corrects is the nil-aware one. ``--llm-context-sample N`` also scores
   the text with the mention replaced by each candidate's name (:mod:`tools.context_likelihood`) on N
   asked mentions per training set (cached in ``<data>.context.jsonl``), and fits its weight
   (``llm_context``) with the other LLM terms on those mentions.
4. Printed per set, against the packaged weights on the same mentions: Top-1 counting nil (a nil
   answer is right on a nil gold), nil F1 and Top-1 on non-nil golds, with Wilson 95% intervals.
   Training sets are scored out of fold; ``--eval`` sets whose mention ids occur in a training set
   are scored by the fold model that did not see that id, the others by the model fitted on all
   training mentions. Figures with the LLM cover the mentions of ``--llm-sample``, each LLM mode also
   with the fused linker's ``nil_needs_text`` rule ("nil needs text": nil only when the text scores
   alone answer nil too).
   ``--no-llm``: no LLM is called; every LLM term (weight, nil and context terms) is carried over from
   ``--base``, and in the fold files each fold's, where the base's fit record holds them for the same folds
   (for a refit that changes only what the LLM terms do not read, such as the clue models).
5. ``--out``: the weights fitted on every training mention (the LLM weight on every asked one), with
   the fit record (command, data, CV figures) in its ``fit`` entry. ``--fold-weights DIR``: also each
   fold's weights (``DIR/fold<k>.json``), for a whole-graph CV run (``evals/cv_eval.py --fold-weights``).

``--learning-curve 50,100,200,500``: text models (no LLM) fitted on seeded subsets of that many
mentions of the first training set, scored on the ``--eval`` sets and on the first set's mentions
outside the subset, beside the packaged weights on the same mentions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.fit_fusion import DiskEmbedder, build_matrix, fit_models, predict, unordered
from evals.metrics import wilson
from tools.errors import ConfigError, I2CRError, InputError, ModelError
from tools.features import ALL_FEATURES
from tools.fusion import (
    distribution,
    floored,
    load_weights,
    nil_decision,
    weights_document,
    write_weights,
)

ALL = list(range(len(ALL_FEATURES)))
LLM_MODES = ("w", "w+nil")
NEEDS_TEXT = "nil needs text"  # the figures with the fused linker's nil_needs_text rule
"""LLM terms fitted with the nil row: ``w`` (the weight of the LLM's floored log-probabilities) and
``w+nil`` (also the LLM's log-probability of answering ``prompts.linking.NIL_ANSWER``, relative to its
best name, as evidence for nil: ``nil_bias + nil_weight * that``)."""


# ---------------------------------------------------------------- data

def parse_spec(spec: str, labels: str | None = None) -> tuple[str, str | None]:
    """``DATA`` or ``DATA:LABELS`` -> (data, labels)."""
    if ":" in spec:
        d, lab = spec.rsplit(":", 1)
        if lab.endswith((".json", ".jsonl")) and d:
            return d, lab
    return spec, labels


def fold_of_id(rid: str, folds: int) -> int:
    """The CV fold of a mention id (a hash: the same id is in the same fold in every set and run)."""
    return int(hashlib.sha1(str(rid).encode()).hexdigest()[:8], 16) % folds


def _cached_copy(data: dict, path: str, cache: Path, kind: str, salt: str = "") -> str:
    """Write the ``kind`` copy ``data`` of the set at ``path`` into ``cache`` once (named by the source's
    path and size, plus ``salt``) and return its path."""
    key = hashlib.sha256(f"{path}|{Path(path).stat().st_size}{salt}".encode()).hexdigest()[:12]
    dst = cache / f"{kind}_{Path(path).stem}_{key}.json"
    if not dst.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(data))
    return str(dst)


def _read_set(path: str, labels: str | None) -> tuple[dict, dict] | None:
    """An I2CR JSON set and its labels (``{}`` without), for the augmented copies; None when unreadable."""
    try:
        data = json.loads(Path(path).read_text())
        gold = json.loads(Path(labels).read_text()) if labels else {}
    except (OSError, json.JSONDecodeError):
        return None
    return (data, gold) if isinstance(data, dict) and isinstance(gold, dict) else None


def _noattr_copy(path: str, labels: str | None, cache: Path) -> tuple[str, str | None] | None:
    """An attribute-free copy of an I2CR JSON set (written in ``cache``), or None when nothing changes."""
    from evals.variants import strip_attributes

    read = _read_set(path, None)
    if read is None:
        return None
    data, _ = read
    changed, out = False, {}
    for rid, rec in data.items():
        rec = dict(rec)
        cands = []
        for c in rec.get("Candentity") or []:
            c = dict(c)
            new = strip_attributes(str(c.get("desc") or ""))
            changed |= new != (c.get("desc") or "")
            c["desc"] = new
            cands.append(c)
        rec["Candentity"] = cands
        out[rid] = rec
    if not changed:
        return None
    return _cached_copy(out, path, cache, "noattr"), labels


def _homonym_copy(path: str, labels: str | None, cache: Path, seed: int = 0) -> tuple[str, str | None] | None:
    """A copy of an I2CR JSON set in which, for every mention whose candidates have descriptions and whose
    gold is listed under a name other than the mention's, one other candidate (seeded) is renamed to the
    mention: a homonym whose name matches exactly but whose description is another entity's. The gold
    stays. Teaches what no benchmark list shows (their exact-name candidate is nearly always the gold):
    "Jordan scored 30 points for the Bulls" is Michael Jordan, not the country named Jordan. None when no
    mention qualifies."""
    from tools.names import name_key, strip_possessive

    read = _read_set(path, labels)
    if read is None:
        return None
    data, gold = read
    rng = np.random.default_rng(seed)
    out, n = {}, 0
    for rid, rec in data.items():
        cands = [dict(c) for c in (rec.get("Candentity") or []) if isinstance(c, dict)]
        said = strip_possessive(str(rec.get("mention") or ""))
        g, said_key = name_key(str(gold.get(rid) or "")), name_key(said)
        keys = [name_key(str(c.get("name") or "")) for c in cands]
        # described rivals of a listed gold (none when the gold is unlisted, so both are checked at once)
        others = [i for i, c in enumerate(cands) if keys[i] != g and str(c.get("desc") or "").strip()] \
            if g in keys else []
        if not others or not said or said_key == g or said_key in keys:
            out[rid] = rec
            continue
        cands[int(rng.choice(others))]["name"] = said
        out[rid] = {**rec, "Candentity": cands}
        n += 1
    if not n:
        return None
    return _cached_copy(out, path, cache, "homonym", f"|{seed}"), labels


def _clue_nil_copy(path: str, labels: str | None, cache: Path, share: float,
                   seed: int = 0) -> tuple[str, str] | None:
    """Copies, for the clue models only, of a seeded ``share`` of the mentions whose gold is listed, with the
    gold removed and labelled nil (each mention drawn by a hash of its id and ``seed``, not by the draw of
    ``evals.variants`` (d)). The only training set with image clues (WikiMEL) lists the gold for 95% of its
    mentions, so without them the clue models learn that clue evidence (the mention's surname in the image's
    text, a scene that fits a footballer) always points at a listed candidate. Written in ``cache``; None when
    no mention qualifies."""
    from evals.datasets import _field
    from evals.variants import _gold_index, _rng

    read = _read_set(path, labels)
    if read is None:
        return None
    data, gold = read
    out, nil = {}, {}
    for rid, rec in data.items():
        if not isinstance(rec, dict):
            continue
        g, cands = gold.get(rid), rec.get("Candentity") or []
        i = _gold_index(cands, str(g)) if g and g != "nil" else -1
        has_desc = bool(_field(rec, "mention_imgdesc_Azure", "image_desc"))  # no clue: no clue model row
        if i < 0 or len(cands) < 2 or not has_desc or _rng(seed, rid, "clue-nil").random() >= share:
            continue
        out[rid] = {**rec, "Candentity": cands[:i] + cands[i + 1:]}
        nil[rid] = "nil"
    if not out:
        return None
    salt = f"|{seed}|{share}"
    return _cached_copy(out, path, cache, "cluenil", salt), _cached_copy(nil, path, cache, "cluenil_labels", salt)


def _feature_code() -> str:
    """A digest of the code that computes features: a cached matrix from older feature code is not reused."""
    import tools.descriptions
    import tools.facts
    import tools.features
    import tools.names
    import tools.texts

    modules = (tools.features, tools.facts, tools.descriptions, tools.names, tools.texts)
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()[:12]


def _embedder_id(emb: Any) -> str:
    """The embedding model behind ``emb`` (a spec, or a ``DiskEmbedder`` wrapping one): features from another
    model are not reused."""
    return emb if isinstance(emb, str) else str(getattr(emb, "spec", type(emb).__name__))


def load_set(path: str, labels: str | None, emb: Any, cache: Path | None, sample: int = 0,
             seed: int = 0) -> dict[str, Any]:
    """Feature matrices and golds of a labelled set (``evals/fit_fusion.build_matrix``), cached on disk."""
    if not Path(path).is_file():
        raise InputError(f"fit: dataset not found: {path}")
    if labels is not None and not Path(labels).is_file():
        raise InputError(f"fit: labels file not found: {labels}")
    key = hashlib.sha256("|".join(map(str, (
        Path(path).resolve(), labels and Path(labels).resolve(), sample, seed, Path(path).stat().st_size,
        Path(path).stat().st_mtime_ns, ",".join(ALL_FEATURES), _feature_code(), _embedder_id(emb)))).encode()
    ).hexdigest()[:16]
    f = cache / f"fitfeats_{key}.pkl" if cache else None
    if f is not None and f.is_file():
        m = pickle.loads(f.read_bytes())
    else:
        m = build_matrix(path, labels, emb, sample=sample or None, seed=seed)
        if not m["X"]:
            raise InputError(f"fit: {path}: no labelled mention with candidates (are the labels right?)")
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(pickle.dumps(m))
    m["path"] = path
    m["name"] = Path(path).name
    return m


# ---------------------------------------------------------------- LLM scores

def llm_key(settings: dict[str, Any]) -> str:
    """The cache key of an LLM score: model, scoring method and prompt version; for an ``openai:`` model
    also its server (``openai_base_url``): two servers may serve different models under one name."""
    from prompts.linking import PROMPT_VERSION

    model = str(settings.get("linker_model"))
    url = settings.get("openai_base_url") if model.startswith("openai:") else None
    return f"{model}{'@' + str(url).rstrip('/') if url else ''}|{settings.get('llm_scoring')}|{PROMPT_VERSION}"


ABORT_AFTER = 5
"""``llm_scores`` raises when the first this many asks of a run all fail."""


def cached_rows(cache: Path, records: dict[str, dict], key: str, field: str) -> dict[str, dict]:
    """The usable rows of a JSONL score cache, by mention id: rows of a known mention, written under ``key``,
    whose ``field`` holds one score per candidate; a line cut short by a kill, or anything else, is skipped."""
    got: dict[str, dict] = {}
    if not cache.is_file():
        return got
    for line in cache.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        rid = row.get("id") if isinstance(row, dict) else None
        if rid in records and row.get("key") == key and isinstance(row.get(field), list) \
                and len(row[field]) == len(records[rid]["candidates"]):
            got[rid] = row
    return got


def llm_scores(records: dict[str, dict], todo: list[str], settings: dict[str, Any], cache: Path,
               *, log: Any = None) -> dict[str, dict]:
    """The linker model's opinion of each ``todo`` mention, from ``cache`` (JSONL) or asked now and appended.

    A row: ``{"id", "key", "logp": [per candidate], "nil_logp": x | None, "method", "tokens", "seconds"}``;
    ``key`` = model (and server) | scoring | prompt version (:func:`llm_key`): rows of another key are
    asked again.
    Likelihood scoring also scores ``prompts.linking.NIL_ANSWER`` in the same call (``nil_logp``).
    A mention the model cannot be asked about (a :class:`~tools.errors.ModelError`: e.g. a server that
    cannot score one of its names) is left out of the result, its text answer standing as in the graph,
    and is not cached (a rerun asks it again); when the first :data:`ABORT_AFTER` asks of a run all
    fail, the model itself is taken to be unusable (a server down) and the error is raised.
    """
    from graph.context import Context
    from tools.choice import scoring_method
    from tools.fused_linker import ask_llm
    from tools.linker import load_linker

    log = log or sys.stderr
    key = llm_key(settings)
    got = cached_rows(cache, records, key, "logp")
    failed: dict[str, str] = {}
    missing = [i for i in todo if i not in got]
    if not missing:
        return got
    ctx = Context(**settings)
    model = load_linker(ctx)
    method = scoring_method(model, ctx.llm_scoring, ctx.linker_model)
    print(f"asking {settings.get('linker_model')} ({method}) about {len(missing)} mention(s) "
          f"({len(todo) - len(missing)} cached in {cache})", file=log, flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a") as fh:
        for n, rid in enumerate(missing, 1):
            inp = records[rid]
            t = time.perf_counter()
            # the graph's own prompt and scoring (likelihood: also NIL_ANSWER)
            try:
                logp, call = ask_llm(model, inp["mention"], inp.get("context") or "", inp["candidates"], [],
                                     llm_scoring=ctx.llm_scoring, spec=ctx.linker_model,
                                     max_desc_chars=ctx.max_desc_chars)
            except ModelError as exc:
                failed[rid] = str(exc)
                if len(failed) == n == ABORT_AFTER:
                    raise
                continue
            nil_lp = call.get("nil_logp")
            row = {"id": rid, "key": key, "logp": [round(float(x), 4) for x in logp],
                   "nil_logp": None if nil_lp is None else round(float(nil_lp), 4), "method": call["method"],
                   "tokens": call.get("input_tokens", 0), "seconds": round(time.perf_counter() - t, 3)}
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            got[rid] = row
            if n % 25 == 0:
                print(f"  {n}/{len(missing)}", file=log, flush=True)
    _report_failed(failed, todo, log)
    return got


def _report_failed(failed: dict[str, str], todo: list[str], log: Any) -> None:
    """Say how many of ``todo`` the model could not be asked about, and the first reason."""
    ids = [i for i in todo if i in failed]
    if ids:
        print(f"  {len(ids)} mention(s) could not be asked (their text answer stands, as in the graph); "
              f"first, {ids[0]}: {failed[ids[0]]}", file=log, flush=True)


def context_key(settings: dict[str, Any]) -> str:
    """Cache key of the text-likelihood scores: model (and server) | context prompt version."""
    from prompts.linking import CONTEXT_VERSION

    return llm_key(settings).rsplit("|", 2)[0] + "|" + CONTEXT_VERSION


def context_sample(asked: list[str], cached: set[str], n: int, seed: int) -> list[str]:
    """``n`` of the ``asked`` mention ids (all when ``n`` >= their number): the cached ones first (a resumed or
    repeated fit asks nothing new), then a seeded random draw of the others."""
    have = [i for i in asked if i in cached]
    rest = [i for i in asked if i not in cached]
    rest = [rest[j] for j in np.random.default_rng(seed).permutation(len(rest))]
    return (have + rest)[:max(n, 0)]


def context_scores(records: dict[str, dict], sample: int, asked: list[str], settings: dict[str, Any], cache: Path,
                   *, seed: int = 0, log: Any = None) -> dict[str, list[float]]:
    """The text's likelihood under every candidate (:mod:`tools.context_likelihood`) for ``sample`` of the ``asked``
    mentions, from ``cache`` (JSONL rows ``{"id", "key", "context_logp": [...]}``) or scored now and appended.

    Every candidate is scored (not only the prior's top ones, as in the graph), so the cache does not depend
    on the text weights; the fit keeps the top ``llm_context_top`` of its own text prior (:func:`context_terms`).
    Failures as in :func:`llm_scores`: a mention that cannot be scored is left out and not cached; when the
    first :data:`ABORT_AFTER` of a run all fail, the error is raised.
    """
    from graph.context import Context
    from tools.context_likelihood import context_likelihoods
    from tools.linker import load_linker
    from tools.names import answer_name

    log = log or sys.stderr
    key = context_key(settings)
    got = {rid: row["context_logp"] for rid, row in cached_rows(cache, records, key, "context_logp").items()}
    todo = context_sample(asked, set(got), sample, seed)
    missing = [i for i in todo if i not in got]
    failed: dict[str, str] = {}
    if missing:
        ctx = Context(**settings)
        model = load_linker(ctx)
        print(f"scoring the text under each candidate with {settings.get('linker_model')} for {len(missing)} "
              f"mention(s) ({len(todo) - len(missing)} cached in {cache})", file=log, flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a") as fh:
            for n, rid in enumerate(missing, 1):
                inp = records[rid]
                names = [answer_name(c["name"]) for c in inp["candidates"]]
                try:
                    lp, _ = context_likelihoods(model, inp["mention"], inp.get("context") or "", names,
                                                list(range(len(names))), spec=ctx.linker_model)
                except ModelError as exc:
                    failed[rid] = str(exc)
                    if len(failed) == n == ABORT_AFTER:  # the model itself is unusable (a server down)
                        raise
                    continue
                row = {"id": rid, "key": key, "context_logp": [round(float(x), 4) for x in lp]}
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                got[rid] = row["context_logp"]
                if n % 25 == 0:
                    print(f"  {n}/{len(missing)}", file=log, flush=True)
        _report_failed(failed, todo, log)
    return {i: got[i] for i in todo if i in got}


def context_terms(scores: list[float] | None, z: np.ndarray, top: int, floor: float | None) -> np.ndarray | None:
    """The context evidence the graph would add for one mention: the top ``top`` candidates of the text
    logits ``z`` keep their scores, relative and floored (:func:`tools.fusion.context_evidence`)."""
    from tools.context_likelihood import top_indices
    from tools.fusion import context_evidence

    if scores is None or top <= 0:
        return None
    keep = set(top_indices(z, top))
    return context_evidence([v if i in keep else None for i, v in enumerate(scores)], floor)


def llm_terms(row: dict[str, Any], floor: float | None) -> tuple[np.ndarray, float]:
    """The LLM evidence of one mention: floored relative log-probabilities, and nil's (relative, clipped)."""
    lp = np.asarray(row["logp"], dtype=np.float64)
    ev = floored(lp, floor)
    nil = row.get("nil_logp")
    f = floor or 10.0
    rel = 0.0 if nil is None or not len(lp) else float(np.clip(nil - lp.max(), -f, f))
    return ev, rel


def fused_scores(z: np.ndarray, ev: np.ndarray, rel: float, p: dict[str, float],
                 cev: np.ndarray | None = None) -> np.ndarray:
    """Candidate scores with the LLM's terms, relative to the nil row at 0 (nil's LLM terms moved to the candidates);
    ``cev``: the context evidence (:func:`context_terms`), weighted by ``p["ctx"]``."""
    out = z + p.get("w", 0.0) * ev - (p.get("nil_bias", 0.0) + p.get("nil_weight", 0.0) * rel)
    if cev is not None and p.get("ctx"):
        out = out + p["ctx"] * cev
    return out


def fit_llm(items: list[tuple], mode: str = "w", l2: float = 0.01, context: bool = False) -> dict[str, float]:
    """LLM terms maximising the likelihood of the golds (-1 = nil) under ``softmax([fused_scores..., 0])``.

    ``items``: (text logits, LLM evidence, nil evidence, gold index[, context evidence]) of the asked mentions of
    the training folds. ``w`` >= 0; ``mode`` ``w+nil`` also fits ``nil_bias`` and ``nil_weight``; ``context``
    also the context evidence's weight ``ctx`` >= 0 (fitted on the items that have it).
    """
    from scipy.optimize import minimize

    if context:
        items = [it for it in items if len(it) > 4 and it[4] is not None]
    if not items:
        return {"w": 0.0}
    names = ["w"] + (["nil_bias", "nil_weight"] if mode == "w+nil" else []) + (["ctx"] if context else [])

    def nll(theta: np.ndarray) -> float:
        p = dict(zip(names, theta))
        total = 0.0
        for it in items:
            z, ev, rel, g = it[:4]
            s = np.append(fused_scores(z, ev, rel, p, it[4] if len(it) > 4 else None), 0.0)
            mx = s.max()
            lse = mx + np.log(np.exp(s - mx).sum())
            total -= s[g if g >= 0 else len(s) - 1] - lse
        return total / len(items) + l2 * float(theta @ theta)

    bounds = [(0.0, 5.0) if n in ("w", "ctx") else (-10.0, 10.0) for n in names]
    start = np.array([{"w": 1.0, "ctx": 0.5}.get(n, 0.0) for n in names])
    res = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    return {n: round(float(v), 4) for n, v in zip(names, res.x)}


# ---------------------------------------------------------------- figures

def decide(scores: np.ndarray, nil_row: bool, nil_threshold: float | None,
           text: np.ndarray | None = None) -> tuple[int, float]:
    """(answer index, -1 = nil; top candidate probability) of one mention's scores.

    ``text``: the scores before the LLM's terms were added; given, nil needs them to answer nil too
    (the ``nil_needs_text`` setting of the fused linker: the LLM may take a nil back, not cause one).
    """
    probs, p_nil = distribution(scores, nil_row)
    b = int(np.argmax(probs))
    nil = nil_decision(float(probs[b]), p_nil, nil_threshold, nil_row)
    if nil and text is not None:
        nil = decide(text, nil_row, nil_threshold)[0] == -1
    return (-1 if nil else b), float(probs[b])


def figures(pred: np.ndarray, gold: np.ndarray, nil: np.ndarray) -> dict[str, Any]:
    """Top-1 counting nil, Top-1 on non-nil golds, nil P/R/F1, with Wilson 95% intervals."""
    def ci(k: int, n: int) -> dict[str, Any]:
        lo, hi = wilson(k, n) if n else (None, None)
        return {"k": int(k), "n": int(n), "p": (k / n if n else None), "ci": [lo, hi]}

    pred, gold, nil = np.asarray(pred), np.asarray(gold), np.asarray(nil, bool)
    said = pred < 0
    right = np.where(nil, said, (pred == gold) & (gold >= 0))
    tp = int((said & nil).sum())
    prec = tp / said.sum() if said.any() else None
    rec = tp / nil.sum() if nil.any() else None
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if nil.any() else None)
    return {"top1": ci(int(right.sum()), len(right)), "top1_non_nil": ci(int(right[~nil].sum()), int((~nil).sum())),
            "nil": {"golds": int(nil.sum()), "answers": int(said.sum()), "precision": prec, "recall": rec, "f1": f1}}


def fmt(fig: dict[str, Any]) -> str:
    """One line of figures: Top-1 (nil counted), non-nil Top-1 and nil F1, with intervals."""
    t, nn, nl = fig["top1"], fig["top1_non_nil"], fig["nil"]
    s = f"Top-1 {100 * t['p']:.1f} [{100 * t['ci'][0]:.1f}, {100 * t['ci'][1]:.1f}] (n={t['n']})"
    if nn["n"]:
        s += f"; non-nil {100 * nn['p']:.1f} [{100 * nn['ci'][0]:.1f}, {100 * nn['ci'][1]:.1f}]"
    if nl["golds"] or nl["answers"]:
        f1 = "n/a" if nl["f1"] is None else f"{nl['f1']:.2f}"
        s += f"; nil F1 {f1} ({nl['answers']} nil answers, {nl['golds']} nil golds)"
    return s


def _logits(model: dict[str, Any], X: list[np.ndarray]) -> list[np.ndarray]:
    return [predict(model, x, ALL) for x in unordered(X)]


def packaged_logits(weights: Any, X: list[np.ndarray]) -> list[np.ndarray]:
    """The packaged (or given) weights' round-1 logits, read the way the graph reads an input list."""
    return [weights.logits(x, with_clues=False, ranked=False) for x in unordered(X)]


# ---------------------------------------------------------------- main

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="i2cr fit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="labelled training set(s): DATA.json (with --labels) or DATA.json:LABELS.json")
    p.add_argument("--labels", default=None, help="labels of a single DATA given without :LABELS")
    p.add_argument("--order", nargs="*", default=None, choices=("ranked", "unordered"),
                   help="per training set: is its list order informative (fits the 'text' model that reads it)? "
                        "default unordered")
    p.add_argument("--sample", nargs="*", type=int, default=None, help="per training set: a seeded sample (0 = all)")
    p.add_argument("--augment-homonym", action="store_true",
                   help="add copies of the training mentions with descriptions in which another candidate is "
                        "renamed to the mention (an exact-name homonym that is not the gold)")
    p.add_argument("--augment-noattr", action="store_true",
                   help="add attribute-free copies of the training mentions whose descriptions carry attributes")
    p.add_argument("--augment-clue-nil", type=float, default=0.0, metavar="SHARE",
                   help="for the clue models only: add copies of this seeded share of the training mentions whose "
                        "gold is listed, with the gold removed and labelled nil (0 = none)")
    p.add_argument("--eval", action="append", default=[], metavar="DATA[:LABELS]",
                   help="a held-out set to score (repeatable); ids found in a training set are scored out of fold")
    p.add_argument("--eval-sample", type=int, default=0, help="a seeded sample of each --eval set (0 = all)")
    p.add_argument("--out", default=None, help="weights JSON to write (use with --set fusion_weights=PATH)")
    p.add_argument("--json", default=None, help="write every figure as JSON here")
    p.add_argument("--fold-weights", default=None, metavar="DIR",
                   help="also write each CV fold's weights (fitted without that fold, LLM terms too) as "
                        "DIR/fold<k>.json, for `python -m evals.cv_eval --fold-weights DIR` (whole-graph CV)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the linear conditional logits "
                   "(--hidden 0 --no-relative)")
    p.add_argument("--hidden", type=int, default=16,
                   help="tanh units beside the linear score (0: linear); default 16, as the packaged weights")
    p.add_argument("--relative", action=argparse.BooleanOptionalAction, default=True,
                   help="also read each feature's difference to the best rival candidate (default on)")
    p.add_argument("--linear-only", default="dense,dense_gap,dense_top", metavar="F1,F2",
                   help="features the hidden units do not read: they count in proportion only, whatever the others "
                        "say (default: the embedding similarities, so a description that matches the context "
                        "strongly is never overruled by name features learned where names were all there was; "
                        "'' = none)")
    p.add_argument("--weight-decay", type=float, default=3e-3,
                   help="squared-weight penalty of the --hidden/--relative models (per mention, averaged)")
    p.add_argument("--nil-threshold", default="0.5", help="the graph's nil_threshold for the figures ('off': never nil)")
    p.add_argument("--gate", type=float, default=0.95, help="the graph's gate_threshold: the LLM is asked below it")
    p.add_argument("--no-llm", dest="llm", action="store_false", help="text weights only (LLM terms kept from --base: all of them, and in --fold-weights "
                   "each fold's where the base's fit records them for the same folds)")
    p.add_argument("--linker-model", default="embedded")
    p.add_argument("--llm-scoring", default="likelihood", choices=("likelihood", "choice"))
    p.add_argument("--llm-floor", type=float, default=5.0, help="LLM log-probabilities floored at minus this "
                   "below its favourite (0: none)")
    p.add_argument("--llm-mode", default="auto", choices=("auto", *LLM_MODES),
                   help="LLM terms written: 'w', 'w+nil', or auto = the one with the better CV log-likelihood")
    p.add_argument("--llm-sample", type=int, default=0,
                   help="ask the LLM only about a seeded sample of this many mentions per set (0 = all)")
    p.add_argument("--llm-cache", default="runs/llm-scores", help="folder of the resumable LLM score caches")
    p.add_argument("--llm-context-sample", type=int, default=0, metavar="N",
                   help="also fit llm_context, the text's likelihood under each candidate (tools/context_likelihood.py), "
                        "on N asked mentions per training set (one more scoring call each, cached beside the LLM "
                        "scores); every LLM term is then fitted on those mentions. 0 = no context term")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a graph setting for the LLM")
    p.add_argument("--base", default=None, help="weights to compare against (default: the packaged file)")
    p.add_argument("--embedding-model", default="embedded")
    p.add_argument("--embedding-cache", default=None, help="pickle file caching embeddings across runs")
    p.add_argument("--cache", default="runs/fit-cache", help="folder caching feature matrices ('' = none)")
    p.add_argument("--learning-curve", default="", metavar="N1,N2,...",
                   help="text-only fits on seeded subsets of the first set of these sizes (no LLM)")
    p.add_argument("--curve-repeats", type=int, default=3)
    p.add_argument("--drop-features", default="", metavar="F1,F2",
                   help="features the fitted models do not use (e.g. qid_prior), to measure what one brings")
    p.add_argument("--seed", type=int, default=0)
    return p


def architecture(a: argparse.Namespace) -> dict[str, Any]:
    """The scorer's shape from the command line (``evals/fit_fusion.fit_models``' keywords)."""
    if a.hidden < 0 or a.weight_decay < 0:
        raise ConfigError(f"fit: --hidden and --weight-decay must be >= 0, got {a.hidden} and {a.weight_decay}")
    lin = tuple(f.strip() for f in a.linear_only.split(",") if f.strip())
    unknown = [f for f in lin if f not in ALL_FEATURES]
    if unknown:
        raise ConfigError(f"fit: --linear-only: unknown feature(s) {unknown}")
    return {"hidden": a.hidden, "relative": a.relative, "weight_decay": a.weight_decay, "linear_only": lin}


def _threshold(raw: str) -> float | None:
    if str(raw).strip().lower() in ("", "off", "none"):
        return None
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"--nil-threshold: expected a number between 0 and 1 or 'off', got {raw!r}") from None
    if not 0 <= v <= 1:
        raise ConfigError(f"--nil-threshold: expected a number between 0 and 1 or 'off', got {raw!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``i2cr fit``; bad input is one line and exit 2."""
    p = _parser()
    a = p.parse_args(argv)
    try:
        return run(a, p)
    except I2CRError as exc:
        print(f"i2cr: error: {exc}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """Fit the weights the arguments ask for, print the cross-validated figures and write the file."""
    if a.folds < 2:
        p.error(f"--folds: expected at least 2, got {a.folds}")
    if not 0 <= a.gate <= 1:
        p.error(f"--gate: expected a number between 0 and 1, got {a.gate}")
    thr = _threshold(a.nil_threshold)
    drop = tuple(f.strip() for f in a.drop_features.split(",") if f.strip())
    unknown = [f for f in drop if f not in ALL_FEATURES]
    if unknown:
        p.error(f"--drop-features: unknown feature(s) {unknown}; known: {', '.join(ALL_FEATURES)}")
    arch = architecture(a)  # checked before any feature is computed
    if not 0 <= a.augment_clue_nil <= 1:
        raise ConfigError(f"fit: --augment-clue-nil: expected a share between 0 and 1, got {a.augment_clue_nil}")
    k = len(a.data)
    if a.labels and k > 1:
        p.error("--labels: give one labels file per set as DATA:LABELS when there are several sets")
    specs = [parse_spec(s, a.labels) for s in a.data]
    for opt, val in (("--order", a.order), ("--sample", a.sample)):
        if val is not None and len(val) != k:
            p.error(f"{opt}: expected one value per training set ({k}), got {len(val)}")
    orders, samples = a.order or ["unordered"] * k, a.sample or [0] * k
    floor = a.llm_floor if a.llm_floor and a.llm_floor > 0 else None
    base = load_weights(a.base)
    cache = Path(a.cache) if a.cache else None
    emb: Any = DiskEmbedder(Path(a.embedding_cache), a.embedding_model) if a.embedding_cache else a.embedding_model
    t0 = time.perf_counter()
    from evals.datasets import load_dataset

    # ---- training sets (+ attribute-free copies), eval sets
    sets: list[dict[str, Any]] = []
    for d, ((path, lab), order, n) in enumerate(zip(specs, orders, samples)):
        m = load_set(path, lab, emb, cache, n, a.seed)
        m.update(role="train", source=d, ranked=order == "ranked", spec=(path, lab))
        sets.append(m)
        copies = cache or Path("runs/fit-cache")
        # a copy weighs inside its benchmark's share (source d): copies do not make a benchmark weigh more than
        # another (a homonym share of its own cost 0.4 points of WikiMEL dev CV, 0.2 of WikiDiverse train CV)
        augments = (
            (a.augment_homonym, lambda: _homonym_copy(path, lab, copies, a.seed), "homonym copy", False),
            (a.augment_noattr, lambda: _noattr_copy(path, lab, copies), "attribute-free copy", False),
            (a.augment_clue_nil > 0, lambda: _clue_nil_copy(path, lab, copies, a.augment_clue_nil, a.seed),
             "gold-removed copy, clue models only", True),
        )
        for wanted, make, label, clue_only in augments:
            copy = make() if wanted else None
            if copy:
                c = load_set(copy[0], copy[1], emb, cache, 0 if clue_only else n, a.seed)
                if clue_only:  # copies of the sampled mentions only
                    sampled = set(m["ids"])
                    keep = [i for i, r in enumerate(c["ids"]) if r in sampled]
                    c.update(X=[c["X"][i] for i in keep], ids=[c["ids"][i] for i in keep],
                             **{k: c[k][keep] for k in ("gold", "nil", "has_clues")})
                c.update(role="aug", source=d, ranked=order == "ranked", name=f"{m['name']} ({label})", spec=copy,
                         clue_only=clue_only)
                sets.append(c)
    for spec in a.eval:
        path, lab = parse_spec(spec)
        m = load_set(path, lab, emb, cache, a.eval_sample, a.seed)
        m.update(role="eval", source=-1, ranked=False, spec=(path, lab))
        sets.append(m)
    if hasattr(emb, "save"):
        emb.save()
    print(f"features in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{s['name']} {len(s['X'])} ({s['role']})"
                                                                   for s in sets), file=sys.stderr)
    train = [s for s in sets if s["role"] in ("train", "aug")]
    train_ids = {rid for s in train for rid in s["ids"]}
    TX = [x for s in train for x in s["X"]]
    Tg = np.concatenate([s["gold"] for s in train])
    Tr = np.concatenate([np.full(len(s["X"]), s["ranked"]) for s in train])
    Ts = np.concatenate([np.full(len(s["X"]), s["source"]) for s in train])
    Tf = np.array([fold_of_id(r, a.folds) for s in train for r in s["ids"]])
    source = Ts if len(set(Ts.tolist())) > 1 else None

    # ---- cross-validated text logits
    for s in sets:
        s["z"] = [None] * len(s["X"])
        s["fold"] = np.array([fold_of_id(r, a.folds) if (s["role"] != "eval" or r in train_ids) else -1
                              for r in s["ids"]])
    Th = np.concatenate([s["has_clues"] for s in train])
    Tc = np.concatenate([np.full(len(s["X"]), bool(s.get("clue_only"))) for s in train])
    fold_models = []
    for f in range(a.folds):
        tr = np.flatnonzero(Tf != f)
        # the clue models too, as the packaged file has them: a whole-graph CV run's clue rounds use them
        models = fit_models([TX[i] for i in tr], Tg[tr], a.C, ranked=Tr[tr], has_clues=Th[tr], clue_only=Tc[tr],
                            source=None if source is None else source[tr], exclude=drop, **arch)
        fold_models.append(models)
        for s in sets:
            sel = np.flatnonzero(s["fold"] == f)
            for i, z in zip(sel, _logits(models["text_unordered"], [s["X"][i] for i in sel])):
                s["z"][i] = z
        print(f"  fold {f + 1}/{a.folds} fitted", file=sys.stderr, flush=True)
    final = fit_models(TX, Tg, a.C, ranked=Tr, has_clues=Th, clue_only=Tc,
                       source=source, exclude=drop, **arch)
    for s in sets:
        sel = np.flatnonzero(s["fold"] < 0)
        for i, z in zip(sel, _logits(final["text_unordered"], [s["X"][i] for i in sel])):
            s["z"][i] = z
        s["zb"] = packaged_logits(base, s["X"])

    # ---- the LLM on undecided mentions
    rng_sets = {}
    llm_params: dict[str, Any] = {}
    result: dict[str, Any] = {"command": "python -m evals.fit " + " ".join(sys.argv[1:] if a is not None else []),
                              "sets": {}, "folds": a.folds, "C": a.C, "gate": a.gate, "nil_threshold": thr}
    if a.llm_context_sample < 0 or (a.llm_context_sample and (not a.llm or a.llm_scoring != "likelihood")):
        raise ConfigError(f"fit: --llm-context-sample {a.llm_context_sample} needs a count >= 0, the LLM and "
                          "--llm-scoring likelihood (the text is scored as the model's answer)")
    use_ctx = a.llm_context_sample > 0
    if a.llm:
        settings = {**_settings(a.set), "linker_model": a.linker_model, "llm_scoring": a.llm_scoring,
                    "embedding_model": a.embedding_model}
        ctx_top = int(settings.get("llm_context_top", 4))
        for s in sets:
            if s["role"] == "aug":
                continue
            n = len(s["X"])
            keep = np.ones(n, bool)
            if a.llm_sample and a.llm_sample < n:
                keep[:] = False
                keep[np.random.default_rng(a.seed).permutation(n)[:a.llm_sample]] = True  # nested: 150 within 300
            s["llm_keep"] = keep
            prior_new = np.array([distribution(z, True)[0].max() for z in s["z"]])
            prior_base = np.array([distribution(z, base.nil_row)[0].max() for z in s["zb"]])
            s["asked"], s["asked_base"] = prior_new < a.gate, prior_base < a.gate
            todo = [s["ids"][i] for i in np.flatnonzero(keep & (s["asked"] | s["asked_base"]))]
            records = {ex.id: ex.inputs for ex in load_dataset(*s["spec"]).examples if ex.inputs is not None}
            stem = Path(s["path"]).stem
            s["llm"] = llm_scores(records, todo, settings, Path(a.llm_cache) / f"{stem}.jsonl")
            rng_sets[s["name"]] = int(keep.sum())
            s["ctx"] = {}
            if use_ctx and s["role"] == "train":
                asked_ids = [s["ids"][i] for i in np.flatnonzero(keep & s["asked"]) if s["ids"][i] in s["llm"]]
                s["ctx"] = context_scores(records, a.llm_context_sample, asked_ids, settings,
                                          Path(a.llm_cache) / f"{stem}.context.jsonl", seed=a.seed)
        # per fold: LLM terms fitted on the other folds' asked training mentions (their logits out of fold)
        pool = []
        for s in sets:
            if s["role"] != "train":
                continue
            for i in np.flatnonzero(s["llm_keep"] & s["asked"]):
                rid = s["ids"][i]
                if rid in s["llm"]:
                    ev, rel = llm_terms(s["llm"][rid], floor)
                    cev = context_terms(s["ctx"].get(rid), s["z"][i], ctx_top, floor)
                    pool.append((s["fold"][i], (s["z"][i], ev, rel, int(s["gold"][i]), cev)))
        if use_ctx:  # every LLM term is fitted on the mentions with context scores, the context weight with them
            pool = [(f, it) for f, it in pool if it[4] is not None]
        per_fold = {mode: [fit_llm([it for f2, it in pool if f2 != f], mode, context=use_ctx) for f in range(a.folds)]
                    for mode in LLM_MODES}
        llm_params = {mode: fit_llm([it for _, it in pool], mode, context=use_ctx) for mode in LLM_MODES}
        # held-out log-likelihood of each mode (choose the written one without looking at an eval set)
        cv_ll = {}
        for mode in LLM_MODES:
            tot = 0.0
            for f2, (z, ev, rel, g, cev) in pool:
                sc = np.append(fused_scores(z, ev, rel, per_fold[mode][f2], cev), 0.0)
                tot += float(sc[g if g >= 0 else len(sc) - 1] - (sc.max() + np.log(np.exp(sc - sc.max()).sum())))
            cv_ll[mode] = tot / max(len(pool), 1)
        mode = a.llm_mode if a.llm_mode != "auto" else max(LLM_MODES, key=lambda m: cv_ll[m])
        result["llm"] = {"asked_pool": len(pool), "context": {"sample": a.llm_context_sample, "top": ctx_top,
                                                               "key": context_key(settings)} if use_ctx else None, "cv_loglik": cv_ll, "mode": mode, "params": llm_params,
                         "fold_params": per_fold, "linker_model": a.linker_model, "llm_scoring": a.llm_scoring,
                         "floor": floor, "cache_key": llm_key(settings), "llm_sample": rng_sets}
        print(f"LLM terms fitted with the nil row on {len(pool)} asked training mentions: "
              + "; ".join(f"{m}: {llm_params[m]} (CV log-lik {cv_ll[m]:.3f})" for m in LLM_MODES)
              + f"; written: {mode}", file=sys.stderr)
        base_w = base.llm_weight_for("likelihood" if a.llm_scoring == "likelihood" else "choice")
        base_p = {"w": base_w}

    # ---- figures
    print(f"\n{a.folds}-fold CV by mention id; nil_threshold {thr}; gate {a.gate}; "
          f"'packaged' = {base.source}" + (" (in-sample where marked *)" if base.fit else ""))
    in_base = set(base.fit.get("data", [])) if isinstance(base.fit, dict) else set()
    for s in sets:
        if s["role"] == "aug":
            continue
        tag = "*" if s["name"] in in_base else ""
        how = "out of fold" if (s["fold"] >= 0).all() else ("held out" if (s["fold"] < 0).all() else "mixed")
        row: dict[str, Any] = {"n": len(s["X"]), "scored": how, "packaged_in_sample": bool(tag)}
        new = np.array([decide(z, True, thr)[0] for z in s["z"]])
        old = np.array([decide(z, base.nil_row, thr)[0] for z in s["zb"]])
        row["text"] = {"fit": figures(new, s["gold"], s["nil"]), "packaged": figures(old, s["gold"], s["nil"])}
        print(f"{s['name']} ({s['role']}, {len(s['X'])} mentions, {how})")
        print(f"  text only   fit      : {fmt(row['text']['fit'])}")
        print(f"  text only   packaged{tag:1}: {fmt(row['text']['packaged'])}")
        if a.llm and "llm" in s:
            keep = s["llm_keep"]
            if use_ctx:  # the LLM rows on the mentions whose text was scored under each candidate
                keep = keep & np.array([rid in s.get("ctx", {}) for rid in s["ids"]])
            sel = np.flatnonzero(keep)
            res = {}
            # (label, text logits, asked, LLM params, nil needs text): the fused linker's variants on the same mentions
            variants = ([("fit " + m, s["z"], s["asked"], m, False) for m in LLM_MODES]
                        + [(f"fit {m}, {NEEDS_TEXT}", s["z"], s["asked"], m, True) for m in LLM_MODES]
                        + [("packaged", s["zb"], s["asked_base"], "base", False)])
            for label, zs, asked, params, needs_text in variants:
                pred = []
                for i in sel:
                    z, text = zs[i], None
                    rid = s["ids"][i]
                    if asked[i] and rid in s["llm"]:
                        ev, rel = llm_terms(s["llm"][rid], floor if params != "base" else base.llm_floor)
                        if params == "base":
                            prm = base_p
                        else:
                            prm = per_fold[params][s["fold"][i]] if s["fold"][i] >= 0 else llm_params[params]
                        text = z if needs_text else None
                        cev = None if params == "base" else context_terms(s.get("ctx", {}).get(rid), z, ctx_top, floor)
                        z = fused_scores(z, ev, rel, prm, cev)
                    pred.append(decide(z, True if params != "base" else base.nil_row, thr, text)[0])
                res[label] = figures(np.array(pred), s["gold"][sel], s["nil"][sel])
            res["text only, same mentions"] = figures(new[sel], s["gold"][sel], s["nil"][sel])
            res["asked_share"] = float(s["asked"][sel].mean()) if len(sel) else None
            row["llm"] = res
            print(f"  with the LLM on the {len(sel)} sampled mentions (asked: {res['asked_share']:.0%} for the fit):")
            for label in ("text only, same mentions", *(v[0] for v in variants)):
                print(f"    {label:30}{tag if label == 'packaged' else '':1}: {fmt(res[label])}")
        result["sets"][s["name"]] = row

    # ---- learning curve
    if a.learning_curve:
        a.drop_set = drop
        result["learning_curve"] = learning_curve(sets, a, thr, base)

    # ---- write
    if a.out:
        llm_weight, doc_floor, extra = llm_entries(
            base, a.llm_scoring, llm_params[result["llm"]["mode"]] if a.llm and llm_params else None, floor)
        fit = {"data": [s["name"] for s in sets if s["role"] == "train"], "order": orders, "sample": samples,
               "augment_noattr": a.augment_noattr, "augment_homonym": a.augment_homonym, "dropped_features": list(drop), "mentions": len(TX), "folds": a.folds, "C": a.C, **arch,
               "embedding_model": a.embedding_model, "nil_threshold": thr, "balanced": source is not None,
               "method": "conditional logit with a nil row (L-BFGS); LLM terms by maximum likelihood with the nil row",
               "command": result["command"],
               "cv": cv_record(result),
               "llm": result["llm"] if a.llm and llm_params else carried_llm_record(base)}
        doc = weights_document(final, llm_weight=llm_weight, llm_floor=doc_floor, nil_row=True, fit=fit)
        doc.update(extra)
        write_weights(a.out, doc)
        print(f"\nweights written to {a.out} (use: --set fusion_weights={a.out})", file=sys.stderr)
    if a.fold_weights:
        write_fold_weights(Path(a.fold_weights), fold_models, result, a, floor if a.llm and llm_params else None, base)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


def llm_entries(base: Any, scoring: str, params: dict[str, float] | None,
                floor: float | None) -> tuple[dict[str, float], float | None, dict[str, Any]]:
    """A weights document's LLM entries: ``llm_weight`` (per scoring route), ``llm_floor`` and the extra
    ``llm_nil``, from fitted LLM ``params`` (``w``, optionally ``nil_bias``/``nil_weight``) for the route
    ``scoring``, or carried over from ``base`` when nothing was fitted (``params`` None)."""
    weight = {"likelihood": base.llm_weights["likelihood"], "choice": base.llm_weights["choice"]}
    if params is None:  # every LLM term of the base: its nil and context terms too
        extra = {"llm_nil": dict(base.llm_nil)} if base.llm_nil else {}
        if base.llm_context:
            extra["llm_context"] = dict(base.llm_context)
        return weight, base.llm_floor, extra
    weight["likelihood" if scoring == "likelihood" else "choice"] = params["w"]
    extra = {"llm_nil": {"bias": params["nil_bias"], "weight": params["nil_weight"]}} if "nil_bias" in params else {}
    if "ctx" in params:
        extra["llm_context"] = {"weight": params["ctx"]}
    return weight, floor, extra


def write_fold_weights(folder: Path, fold_models: list[dict], result: dict[str, Any], a: argparse.Namespace,
                       floor: float | None, base: Any) -> None:
    """Each CV fold's weights file: text models and LLM terms fitted without the fold's mentions (folds by
    :func:`fold_of_id`), so a whole-graph run of the fold (``evals/cv_eval.py --fold-weights``) is held out."""
    folder.mkdir(parents=True, exist_ok=True)
    llm = result.get("llm") or {}
    carried = None if llm else base_fold_llm(base, a.folds)
    for k, models in enumerate(fold_models):
        if llm:
            weight, doc_floor, extra = llm_entries(base, a.llm_scoring, llm["fold_params"][llm["mode"]][k], floor)
            said = "fitted without this fold"
        elif carried:  # the base's own held-out terms of this fold: no fold's labels leak into its LLM terms
            weight, doc_floor, extra = llm_entries(base, carried["scoring"], carried["params"][k], base.llm_floor)
            said = f"carried over from {base.source}, its fold {k}'s (fitted without this fold)"
        else:
            weight, doc_floor, extra = llm_entries(base, a.llm_scoring, None, floor)
            said = f"carried over from {base.source} (fitted on every mention: not held out)"
        fit = {"fold": k, "folds": a.folds, "fold_of": "evals.fit.fold_of_id (SHA-1 of the mention id)",
               "command": result["command"], **architecture(a), "llm": said}
        doc = weights_document(models, llm_weight=weight, llm_floor=doc_floor, nil_row=True, fit=fit)
        doc.update(extra)
        write_weights(folder / f"fold{k}.json", doc)
    print(f"fold weights written to {folder}/fold0..{len(fold_models) - 1}.json", file=sys.stderr)


def _base_llm_record(base: Any) -> tuple[dict[str, Any] | None, Any]:
    """A base weights file's LLM record (its fit's ``llm`` entry, ``None`` when it has none) and the number of
    folds its per-fold terms were fitted with: the record's own ``folds`` when it was carried over, else the fit's."""
    fit = base.fit if isinstance(base.fit, dict) else {}
    llm = fit.get("llm")
    return (llm, llm.get("folds", fit.get("folds"))) if isinstance(llm, dict) else (None, None)


def carried_llm_record(base: Any) -> dict[str, Any] | str:
    """The ``fit.llm`` entry of a fit without the LLM: the base's own LLM record (its fitted and per-fold
    terms, so a later ``--no-llm`` refit on this file can carry them again) with ``carried_from`` naming it,
    or a sentence when the base records none."""
    llm, folds = _base_llm_record(base)
    if llm is not None:
        return {**llm, "carried_from": base.source, "folds": folds}
    return "carried over from " + base.source


def base_fold_llm(base: Any, folds: int) -> dict[str, Any] | None:
    """The per-fold LLM terms a base weights file records (its fit's ``llm.fold_params`` of the written mode),
    for a fit without the LLM (``--no-llm``) whose folds are the base's: ``{"scoring", "params": [per fold]}``,
    or ``None`` when the base has none for ``folds`` folds. Folds are fixed by the mention id
    (:func:`fold_of_id`), so fold k's terms were fitted without fold k's mentions."""
    llm, llm_folds = _base_llm_record(base)
    if llm is None or llm_folds != folds:
        return None
    params = (llm.get("fold_params") or {}).get(llm.get("mode"))
    if not isinstance(params, list) or len(params) != folds or not all(isinstance(p, dict) and "w" in p for p in params):
        return None
    return {"scoring": llm.get("llm_scoring", "likelihood"), "params": params}


def cv_record(result: dict[str, Any]) -> dict[str, Any]:
    """The weights file's ``fit.cv``: per set, the order-free text model's Top-1 (nil counted), non-nil Top-1,
    nil F1, out of fold (training sets) or held out (``--eval`` sets); with the LLM where measured."""
    out: dict[str, Any] = {"text_unordered": {}, "with_llm": {}}
    for name, r in result["sets"].items():
        f = r["text"]["fit"]
        out["text_unordered"][name] = {"top1": f["top1"]["p"], "top1_non_nil": f["top1_non_nil"]["p"],
                                       "nil_f1": f["nil"]["f1"], "n": f["top1"]["n"], "scored": r["scored"]}
        mode = (result.get("llm") or {}).get("mode")
        if r.get("llm") and mode:
            g = r["llm"]["fit " + mode]
            out["with_llm"][name] = {"top1": g["top1"]["p"], "top1_non_nil": g["top1_non_nil"]["p"],
                                     "nil_f1": g["nil"]["f1"], "n": g["top1"]["n"]}
    return out


def _settings(pairs: list[str]) -> dict[str, Any]:
    from graph.context import parse_settings

    return parse_settings(pairs)


def learning_curve(sets: list[dict[str, Any]], a: argparse.Namespace, thr: float | None, base: Any) -> dict[str, Any]:
    """Text-only fits on seeded subsets of the first training set, scored on held-out mentions (no LLM)."""
    first = next(s for s in sets if s["role"] == "train")
    evals = [s for s in sets if s["role"] == "eval"]
    sizes = [int(x) for x in str(a.learning_curve).split(",") if x.strip()]
    out: dict[str, Any] = {"train_set": first["name"], "sizes": {}}
    n = len(first["X"])
    print(f"\nlearning curve: text models fitted on N mentions of {first['name']} ({a.curve_repeats} seeded "
          f"subsets each), no LLM; Top-1 counting nil, mean over subsets [range]")
    for size in sizes:
        if size >= n:
            continue
        rows: dict[str, list] = {}
        for r in range(a.curve_repeats):
            idx = np.random.default_rng(a.seed + 1000 * r + size).choice(n, size, replace=False)
            rest = np.setdiff1d(np.arange(n), idx)
            models = fit_models([first["X"][i] for i in idx], first["gold"][idx], a.C,
                                has_clues=np.zeros(size, bool), exclude=a.drop_set, **architecture(a))
            m = models["text_unordered"]
            targets = [(first["name"] + " (rest)", [first["X"][i] for i in rest], first["gold"][rest],
                        first["nil"][rest])] + [(s["name"], s["X"], s["gold"], s["nil"]) for s in evals]
            for name, X, g, nl in targets:
                pred = np.array([decide(z, True, thr)[0] for z in _logits(m, X)])
                rows.setdefault(name, []).append(figures(pred, g, nl))
        out["sizes"][size] = {}
        for name, figs in rows.items():
            tops = [f["top1"]["p"] for f in figs]
            f1s = [f["nil"]["f1"] for f in figs if f["nil"]["f1"] is not None]
            out["sizes"][size][name] = {"top1_mean": float(np.mean(tops)), "top1_min": float(min(tops)),
                                        "top1_max": float(max(tops)), "n": figs[0]["top1"]["n"],
                                        "nil_f1_mean": float(np.mean(f1s)) if f1s else None}
            print(f"  N={size:5} on {name}: {100 * np.mean(tops):.1f} [{100 * min(tops):.1f}-{100 * max(tops):.1f}]"
                  + (f", nil F1 {np.mean(f1s):.2f}" if f1s else "") + f" (n={figs[0]['top1']['n']})")
    for s in evals:
        pred = np.array([decide(z, base.nil_row, thr)[0] for z in s["zb"]])
        out.setdefault("packaged", {})[s["name"]] = figures(pred, s["gold"], s["nil"])
        print(f"  packaged weights on {s['name']}: {fmt(out['packaged'][s['name']])}")
    return out


if __name__ == "__main__":
    sys.exit(main())
