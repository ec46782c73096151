"""Lenient reading of a linker's answer: a number, a name, a QID or nil.

Small models answer messily ("3.", "Candidate 3: Jens Stoltenberg", "**2**",
"The answer is Jens Stoltenberg", "None of them"). :func:`parse_answer`
maps such text to a candidate index, to nil, or to "unparseable"; it never
returns anything that is not one of the candidates.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_NIL = re.compile(r"^\W*(nil|null|none|no match|no candidate|n/a|unknown)\b|\bnone of (the|them|these)\b"
                  r"|\bno (suitable |matching )?candidate\b", re.I)
_LEADING_NUMBER = re.compile(r"^\W*(?:candidate|option|answer|number|no\.?|#)?\s*:?\s*(\d{1,4})(?!\d)(?![.,]\d)", re.I)
_NUMBER = re.compile(r"(?<![\w.])(\d{1,4})(?![\d])(?![.,]\d)")
_QID = re.compile(r"\bQ\d+\b")


class Answer(NamedTuple):
    """``kind`` is ``entity`` (``index`` into the candidate list), ``nil`` or ``unparseable``."""

    kind: Literal["entity", "nil", "unparseable"]
    index: int | None = None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[_\W]+", " ", text.lower()).split())


def parse_answer(raw: str, names: list[str], *, qids: list[str | None] | None = None,
                 allow_nil: bool = True) -> Answer:
    """Map ``raw`` to a candidate index (0-based) among ``names``, nil, or unparseable.

    Numbers are read 1-based, as the prompt numbers the candidates.
    """
    text = _THINK.sub(" ", raw or "").strip()
    if not text:
        return Answer("unparseable")
    n = len(names)
    m = _LEADING_NUMBER.match(text)
    if m:
        number = int(m.group(1))
        if 1 <= number <= n:
            return Answer("entity", number - 1)
        if number == 0 and allow_nil:
            return Answer("nil")
    if qids:
        for q in _QID.findall(text):
            if q in qids:
                return Answer("entity", qids.index(q))
    norm = f" {_norm(text)} "
    best = None
    for i, name in enumerate(names):
        key = _norm(name)
        if key and f" {key} " in norm and (best is None or len(key) > len(_norm(names[best]))):
            best = i
    if best is not None:
        return Answer("entity", best)
    if allow_nil and _NIL.search(text):
        return Answer("nil")
    for m in _NUMBER.finditer(text):
        number = int(m.group(1))
        if 1 <= number <= n:
            return Answer("entity", number - 1)
    return Answer("unparseable")
