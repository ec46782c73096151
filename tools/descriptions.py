"""How an entity's description is written for the embedder.

Sentence embedders (all-MiniLM-L6-v2 by default) are trained on natural sentences. A Wikidata-style
description is a list of fields (``Name: Marie Curie. Sex: female. Birth: 1867, Warsaw. Death: 1934,
Passy. Occupation: physicist, chemist. Spouse: Pierre Curie.``); :func:`embedding_description` writes it
as the lead of an encyclopedia article (``Marie Curie (1867 – 1934) was a physicist and chemist. She was
born in Warsaw. She married Pierre Curie. ...``): the life years in the first parenthesis, the occupations
in the first sentence, the other fields as sentences about *he* or *she* (from ``Sex:``; the name where it
is absent), in a fixed order drawn from the name. Prose and other text are left as they are.

The facts the features read come from the description as given (:mod:`tools.facts`); only the embedded text
(:func:`tools.texts.entity_text`, the knowledge base's stored vectors) is written this way. Measured:
docs/generalisation.md, "Attribute lists written as prose for the embedder".
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np

from tools.names import display_name, words

FIELDS = ("Name", "Sex", "Birth", "Death", "Religion", "Occupation", "Spouse", "Languages", "Alma mater",
          "Work starts", "Nick name")
"""The Wikidata fields WikiMEL-style descriptions carry (others stay inside the value before them)."""
_FIELD = re.compile(r"(?:^|(?<=\.)\s+)(" + "|".join(FIELDS) + r"):\s*")
_ANY_FIELD = re.compile(r"(?:^|[.;]\s+)([A-Z][A-Za-z ]{1,24}):\s")


def is_attribute_style(desc: str) -> bool:
    """Whether ``desc`` is a list of ``Field: value`` attributes (Wikidata style) rather than prose."""
    text = (desc or "").lstrip()
    return text.startswith("Name:") or len(_ANY_FIELD.findall(text)) >= 2


def _order(seed: int, who: str, n: int) -> np.ndarray:
    h = hashlib.sha256(f"{seed}:prose:{who}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little")).permutation(n)


def attribute_fields(desc: str) -> dict[str, str]:
    """``{field: value}`` of a Wikidata-style description (``Name: X. Sex: male. Birth: 1865, Place. ...``)."""
    parts = _FIELD.split(desc or "")
    return {k: v.strip().rstrip(".").strip() for k, v in zip(parts[1::2], parts[2::2])}


def _year_place(value: str) -> tuple[str, str]:
    year, _, place = (value or "").partition(",")
    year = year.strip()
    return (str(int(year)) if year.lstrip("-").isdigit() else ""), place.strip()


def prose_description(desc: str, name: str, *, seed: int = 0) -> str:
    """A Wikidata-style description as a Wikipedia-style lead (see ``f_prose``); other text is returned as is."""
    f = attribute_fields(desc)
    if "Name" not in f:
        return desc
    who = f.get("Name") or name
    born, born_in = _year_place(f.get("Birth", ""))
    died, died_in = _year_place(f.get("Death", ""))
    sex = f.get("Sex", "").lower()
    he, his = {"male": ("He", "His"), "female": ("She", "Her")}.get(sex, (who, f"{who}'s"))
    paren = (f" ({born} – {died})" if born and died else f" (born {born})" if born else f" (died {died})" if died
             else "")
    past = bool(died) or (born.isdigit() and int(born) < 1900)
    jobs = [j.strip().strip('"') for j in f.get("Occupation", "").split(",") if j.strip().strip('"')]
    if jobs:
        what = " and ".join([", ".join(jobs[:-1]), jobs[-1]] if len(jobs) > 1 else jobs)
        lead = f"{who}{paren} {'was' if past else 'is'} {'an' if what[0].lower() in 'aeiou' else 'a'} {what}."
    else:
        lead = f"{who}{paren}."
    rest = []
    if born_in:
        rest.append(f"{he} was born in {born_in}.")
    if died_in:
        rest.append(f"{he} died in {died_in}.")
    for key, text in (("Spouse", f"{he} married {{}}."), ("Alma mater", f"{he} studied at {{}}."),
                      ("Languages", f"{he} spoke {{}}."), ("Religion", f"{his} religion was {{}}."),
                      ("Work starts", f"{his} career began in {{}}."), ("Nick name", f"{he} was known as {{}}.")):
        if f.get(key):
            rest.append(text.format(f[key]))
    order = _order(seed, who, len(rest))
    return " ".join([lead, *(rest[i] for i in order)])


@lru_cache(maxsize=65536)
def embedding_description(desc: str, name: str = "") -> str:
    """``desc`` as the embedder sees it: a Wikidata-style attribute list written as prose, other text as is."""
    return prose_description(desc, name) if is_attribute_style(desc or "") else (desc or "")


def says_more_than_name(desc: str, name: str = "") -> bool:
    """Whether ``desc`` states anything beyond the entity's name. ``Name: Anne. Occupation: .`` (a
    knowledge base's record whose fields are all empty) says no more than an empty description: an
    attribute list counts when a field other than ``Name`` has a value, other text when it has a word
    the name lacks (the name as :func:`tools.names.display_name` shows it, disambiguator included; words as
    :func:`tools.names.words`: case, accents and punctuation do not count)."""
    desc = str(desc or "").strip()
    if is_attribute_style(desc):
        return any(value for field, value in attribute_fields(desc).items() if field != "Name")
    said = set(words(desc))
    return bool(said) and not said <= set(words(display_name(name)))
