"""What an entity's description states about it: sex, birth year, death year.

Two styles of description are read:

* **Wikidata attributes** (``Name: George V. Sex: male. Birth: 1865, Marlborough House. Death: 1936 ...``),
  as WikiMEL and RichpediaMEL give them: the ``Sex:``, ``Birth:`` and ``Death:`` fields.
* **Prose** (``Joe Biden (born November 20, 1942) is an American politician ... He ...``), as Wikipedia leads
  and most users' own knowledge bases give them:
  - the sex from the pronouns that refer to the subject: he/him/his/himself against she/her/hers/herself,
    one used at least twice as often as the other. Words of the entity's own name are not counted
    (*He Zizhen* is not "he").
  - the years from the first parenthesis of the first sentence: ``(born ... 1942)`` is a birth,
    ``(1865 – 1936)`` a birth and a death, ``(died 1469)`` a death. These are read only when the pronouns
    show a person: a building's ``(1887–1889)`` is not a life.

A description with any of those attributes, or in attribute style, is never read as prose. So an attribute-free one
(``Name: Alberta Vaughn. Occupation: actor.``) states neither a sex nor dates. What a description
does not state is unknown: sex 0, years ``None``. Unknown moves no feature (``tools.features``) and
refutes nothing (``tools.refute``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from tools.descriptions import is_attribute_style

_SEX = re.compile(r"\bSex:\s*(male|female)", re.IGNORECASE)
_BIRTH = re.compile(r"\bBirth:\s*(-?\d{1,4})")
_DEATH = re.compile(r"\bDeath:\s*(-?\d{1,4})")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
HE_PRONOUNS = frozenset({"he", "him", "his", "himself"})
SHE_PRONOUNS = frozenset({"she", "her", "hers", "herself"})
_LEAD_PAREN = re.compile(r"\(([^()]{0,120})\)")
_PAREN_YEAR = re.compile(r"(?<!\d)(\d{3,4})(?!\d)")
_LEAD_VERB = re.compile(r"\b(?:is|was|are|were|has|had)\b|[.!?]\s+[a-z]")
_RANGE = re.compile(r"[–—-]|\bto\b")
UNKNOWN: dict[str, Any] = {"sex": 0, "birth": None, "death": None}


def pronoun_sex(desc: str, name: str = "") -> int:
    """+1 / -1 when the prose refers to its subject as he (she) at least twice as often as she (he), else 0.
    The words of ``name`` are not counted."""
    skip = {w.lower() for w in _WORD.findall(name or "")}
    words = [w.lower() for w in _WORD.findall(desc or "")]
    he = sum(w in HE_PRONOUNS for w in words if w not in skip)
    she = sum(w in SHE_PRONOUNS for w in words if w not in skip)
    if he > 2 * she:
        return 1
    if she > 2 * he:
        return -1
    return 0


def lead_years(desc: str) -> tuple[int | None, int | None]:
    """Birth and death years from the lead's parenthesis: the first one with a year before the lead's verb
    (``X (1867 – 1934) was ...``; initials such as ``Myron V. George`` do not end the lead). ``None`` when not
    stated."""
    text = (desc or "")[:400]
    verb = _LEAD_VERB.search(text)
    lead = text[:verb.start()] if verb else text
    for m in _LEAD_PAREN.finditer(lead):  # a title's own bracket, "Greg Moore (racing driver) (1975 – 1999)"
        inside = m.group(1)
        years = [int(y) for y in _PAREN_YEAR.findall(inside)]
        if years:
            break
    else:
        return None, None
    low = inside.lower()
    if re.search(r"\b(born|b\.)", low):
        return years[0], None
    if re.search(r"\b(died|d\.)", low):
        return None, years[0]
    if len(years) >= 2 and _RANGE.search(inside) and years[0] <= years[-1]:
        return years[0], years[-1]
    return None, None


@lru_cache(maxsize=65536)
def entity_facts(desc: str, name: str = "") -> dict[str, Any]:
    """``{"sex": +1 male / -1 female / 0 unknown, "birth": year | None, "death": year | None}`` as ``desc``
    states them (attributes, or prose; see the module). ``name``: the entity's name, left out of the pronouns.
    The returned dict is shared: do not change it."""
    desc = desc or ""
    if not desc.strip():
        return UNKNOWN
    sex, birth, death = _SEX.search(desc), _BIRTH.search(desc), _DEATH.search(desc)
    if sex or birth or death or is_attribute_style(desc):
        return {"sex": 0 if not sex else (1 if sex.group(1).lower() == "male" else -1),
                "birth": int(birth.group(1)) if birth else None, "death": int(death.group(1)) if death else None}
    sex = pronoun_sex(desc, name)
    birth, death = lead_years(desc) if sex else (None, None)
    return {"sex": sex, "birth": birth, "death": death}
