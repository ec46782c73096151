"""Stress variants of an I2CR-format dataset (WikiMEL dev by default), seeded.

    python -m evals.variants --out DIR [DATA.json --labels LABELS.json] [--seed 0] [--nil-share 0.15]

Writes ``DIR/<variant>.json`` and ``DIR/<variant>_label.json`` for:

* ``a_shuffled`` — each candidate list shuffled;
* ``b_titles`` — names rewritten as Wikipedia titles: spaces as underscores,
  apostrophes and other URL-unsafe characters %-encoded, and for a third of the
  entities whose description gives an occupation, a disambiguator from it
  (``Dwayne_Johnson_(actor)``); the labels are rewritten the same way;
* ``c_no_attributes`` — the Wikidata attributes the features parse (``Sex:``,
  ``Birth:``, ``Death:``) removed from every description;
* ``d_nil`` — the gold removed from the list for ``--nil-share`` of the mentions
  whose gold is listed, labelled ``nil``;
* ``e_all`` — c, b, d and a together (in that order);
* ``f_prose`` — every Wikidata-style description rewritten as a Wikipedia-style lead in prose: the life
  years in the first parenthesis, the occupations in the first sentence, the other attributes as
  sentences about *he* or *she* (from ``Sex:``; the name where it is absent), in a seeded order
  (``Name: Marie Curie. Sex: female. Birth: 1867, Warsaw. Death: 1934 ...`` -> ``Marie Curie (1867 – 1934)
  was a physicist and chemist. She was born in Warsaw. ...``). The same facts in the form most knowledge
  bases give them.

Every choice is drawn from ``--seed`` (per record, from its id), so a variant is
the same on every machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from evals.metrics import normalize_name
from tools.descriptions import prose_description

DATA = Path(os.environ.get("I2CR_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data") / "wikimel"
"""Default data folder: ``$I2CR_SHARED_DATA/wikimel`` or ``../shared/data/wikimel`` beside the repository."""
VARIANTS = ("a_shuffled", "b_titles", "c_no_attributes", "d_nil", "e_all", "f_prose")
_ATTR = re.compile(r"\b(?:Sex|Birth|Death):[^.]*\.\s*")
_OCCUPATION = re.compile(r"\bOccupation:\s*([^,.]+)")


def _rng(seed: int, rid: str, salt: str) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}:{salt}:{rid}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def wiki_title(name: str, desc: str = "", *, seed: int = 0) -> str:
    """``name`` as a Wikipedia title: underscores, %-encoded punctuation, sometimes a ``_(occupation)``."""
    title = quote(" ".join(str(name).split()).replace(" ", "_"), safe="_()-.,:")
    occ = _OCCUPATION.search(desc or "")
    if occ and _rng(seed, name, "disamb").random() < 1 / 3:
        title += "_(" + occ.group(1).strip().replace(" ", "_") + ")"
    return title


def strip_attributes(desc: str) -> str:
    """A description without its ``Sex:``, ``Birth:`` and ``Death:`` attributes."""
    return _ATTR.sub("", desc or "").strip()


def prose(data: dict, labels: dict, seed: int) -> tuple[dict, dict]:
    """Variant (f): every Wikidata-style description rewritten as a prose lead."""
    out = {rid: {**rec, "Candentity": [{**c, "desc": prose_description(c.get("desc", ""), c.get("name", ""), seed=seed)}
                                       for c in rec.get("Candentity") or []]} for rid, rec in data.items()}
    return out, dict(labels)


def _gold_index(cands: list[dict], gold: str) -> int:
    g = normalize_name(gold)
    return next((i for i, c in enumerate(cands) if normalize_name(c.get("name")) == g), -1)


def shuffle(data: dict, labels: dict, seed: int) -> tuple[dict, dict]:
    """Variant (a): every candidate list in a seeded random order."""
    out = {}
    for rid, rec in data.items():
        cands = list(rec.get("Candentity") or [])
        perm = _rng(seed, rid, "shuffle").permutation(len(cands))
        out[rid] = {**rec, "Candentity": [cands[i] for i in perm]}
    return out, dict(labels)


def titles(data: dict, labels: dict, seed: int) -> tuple[dict, dict]:
    """Variant (b): names written as Wikipedia titles (underscores, %-encoding, disambiguators); labels follow."""
    out, new_labels = {}, {}
    for rid, rec in data.items():
        cands = [dict(c) for c in rec.get("Candentity") or []]
        gi = _gold_index(cands, labels.get(rid, "")) if rid in labels else -1
        for c in cands:
            c["name"] = wiki_title(c.get("name", ""), c.get("desc", ""), seed=seed)
        out[rid] = {**rec, "Candentity": cands}
        if rid in labels:
            gold = labels[rid]
            new_labels[rid] = gold if gold == "nil" else (cands[gi]["name"] if gi >= 0 else wiki_title(gold, seed=seed))
    return out, new_labels


def no_attributes(data: dict, labels: dict, seed: int) -> tuple[dict, dict]:
    """Variant (c): the Wikidata attributes removed from every description."""
    out = {rid: {**rec, "Candentity": [{**c, "desc": strip_attributes(c.get("desc", ""))}
                                       for c in rec.get("Candentity") or []]} for rid, rec in data.items()}
    return out, dict(labels)


def make_nil(data: dict, labels: dict, seed: int, share: float = 0.15) -> tuple[dict, dict]:
    """Variant (d): the gold removed from the list of a seeded ``share`` of mentions, labelled nil."""
    listed = [rid for rid, rec in data.items()
              if rid in labels and labels[rid] != "nil" and _gold_index(rec.get("Candentity") or [], labels[rid]) >= 0]
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(sorted(listed), size=int(round(share * len(listed))), replace=False).tolist()) if listed else set()
    out, new_labels = {}, dict(labels)
    for rid, rec in data.items():
        if rid in chosen:
            cands = list(rec["Candentity"])
            del cands[_gold_index(cands, labels[rid])]
            out[rid] = {**rec, "Candentity": cands}
            new_labels[rid] = "nil"
        else:
            out[rid] = rec
    return out, new_labels


def build_variants(data: dict, labels: dict, *, seed: int = 0, nil_share: float = 0.15) -> dict[str, tuple[dict, dict]]:
    """``{variant: (records, labels)}`` for every variant of :data:`VARIANTS`."""
    nil: Callable[[dict, dict, int], tuple[dict, dict]] = lambda d, l, s: make_nil(d, l, s, nil_share)  # noqa: E731
    out = {"a_shuffled": shuffle(data, labels, seed), "b_titles": titles(data, labels, seed),
           "c_no_attributes": no_attributes(data, labels, seed), "d_nil": nil(data, labels, seed)}
    d, l = data, labels
    for step in (no_attributes, titles, nil, shuffle):
        d, l = step(d, l, seed)
    out["e_all"] = (d, l)
    out["f_prose"] = prose(data, labels, seed)
    return out


def write_variants(data_path: str, labels_path: str, out_dir: str, *, seed: int = 0,
                   nil_share: float = 0.15) -> dict[str, dict[str, str]]:
    """Build the variants of a dataset file and write them; returns ``{variant: {"data", "labels"}}`` paths."""
    data: dict[str, Any] = json.loads(Path(data_path).read_text())
    labels: dict[str, str] = json.loads(Path(labels_path).read_text())
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (d, l) in build_variants(data, labels, seed=seed, nil_share=nil_share).items():
        dp, lp = folder / f"{name}.json", folder / f"{name}_label.json"
        dp.write_text(json.dumps(d, ensure_ascii=False))
        lp.write_text(json.dumps(l, ensure_ascii=False))
        paths[name] = {"data": str(dp), "labels": str(lp)}
    (folder / "variants.json").write_text(json.dumps({"source": str(data_path), "labels": str(labels_path),
                                                       "seed": seed, "nil_share": nil_share}, indent=1))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Write the variants of a dataset and their labels to a folder."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=str(DATA / "WikiMEL_dev.json"))
    p.add_argument("--labels", default=str(DATA / "WikiMEL_dev_label.json"))
    p.add_argument("--out", required=True, help="folder for the variant files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nil-share", type=float, default=0.15)
    a = p.parse_args(argv)
    if not 0 <= a.nil_share <= 1:
        p.error(f"--nil-share: expected a share between 0 and 1, got {a.nil_share}")
    for label, path in (("data", a.data), ("--labels", a.labels)):
        if not Path(path).is_file():
            p.error(f"{label}: file not found: {path}")
    for name, files in write_variants(a.data, a.labels, a.out, seed=a.seed, nil_share=a.nil_share).items():
        print(f"{name}: {files['data']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
