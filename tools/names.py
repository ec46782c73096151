"""Entity names as people read them, whatever the knowledge base's convention.

Knowledge bases spell names differently: Wikidata labels (``Barack Obama``),
Wikipedia titles (``Spanish_language``, ``Bratz_(film)``,
``Australia_women%27s_national_basketball_team``), lower-cased keys. Before a
name is scored (features, embeddings) or shown to the LLM it is normalised
here:

* percent-encoding decoded, underscores turned into spaces, spacing collapsed;
* a trailing disambiguator such as ``(film)`` or ``(classification)`` split
  off: it is not part of the name, but it is evidence about the entity's type,
  kept as such (:func:`split_name`);
* names differing only in case, accents, punctuation or spacing share one
  :func:`name_key` (``Usgs`` and ``USGS``).

Cheap, general evidence of a mention naming an entity (no lists fitted to any
dataset): :func:`is_acronym_of` (``UN`` / ``USGS`` ->
``United States Geological Survey``), :func:`prefix_share` (``Spanish``
-> ``Spain``: a mention that shares a long prefix with a name word, as
demonyms and derived forms do), :func:`name_coverage` (how much of the name
the mention accounts for: ``Australian`` covers ``Australia`` but a third of
``Australian Defence Force``) and :func:`spelling_similarity` (character-level:
``Kallita`` ~ ``Kalitta``, ``United Naitions`` ~ ``United Nations``).
A mention's English possessive is not part of the name it names
(:func:`strip_possessive`: ``Sydney's`` -> ``Sydney``).
"""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher
from urllib.parse import unquote

_DISAMBIGUATOR = re.compile(r"^(?P<base>.*\S)\s*\((?P<dis>[^()]+)\)\s*$")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_POSSESSIVE = re.compile(r"(?<=\w)['\u2019]s\b|(?<=s)['\u2019](?=\s|$)", re.IGNORECASE)
_STOP = {"of", "the", "and", "for", "in", "on", "at", "de", "du", "des", "la", "le", "del", "da", "do", "a", "an", "&"}


def fold(text: str) -> str:
    """Lower case without accents."""
    text = unicodedata.normalize("NFKD", str(text or ""))
    return "".join(ch for ch in text if not unicodedata.combining(ch)).lower()


def clean_name(name: str) -> str:
    """The name as text: percent-encoding decoded, underscores as spaces, spacing collapsed."""
    text = str(name or "")
    if "%" in text:
        text = unquote(text)
    return " ".join(text.replace("_", " ").split())


def split_name(name: str) -> tuple[str, str]:
    """``(base name, disambiguator)`` of a cleaned name: ``Bratz_(film)`` -> ``("Bratz", "film")``.

    A name that is only a parenthesis, or has none at its end, has an empty disambiguator.
    """
    text = clean_name(name)
    m = _DISAMBIGUATOR.match(text)
    if not m:
        return text, ""
    return m.group("base").strip(), " ".join(m.group("dis").split())


_COMMA = re.compile(r"^(?P<head>[^,]*),\s+(?P<qual>[A-Z\d][^()]*)$")  # linear: no nested free runs
_LETTER = re.compile(r"[^\W\d_]")
_NOT_QUALIFIER = re.compile(r"^(?:jr|sr|inc|ltd|llc|plc|co|corp|d\.?\s?c|[ivx]+|\d+(?:st|nd|rd|th))\b\.?", re.IGNORECASE)
_SERIAL = re.compile(r",\s+(?:and|or|&)\s", re.IGNORECASE)
_OF = re.compile(r"\sof\s")  # a title "X of Y": with a one-word head, a royal style


def feature_name(name: str) -> tuple[str, str]:
    """``(name, qualifier)`` as the features compare it with a mention: :func:`split_name`'s base and
    disambiguator, and a Wikipedia comma qualifier split off the base too (``Forrestdale, Western
    Australia`` -> ``Forrestdale`` + ``Western Australia``; ``Andrew Adonis, Baron Adonis`` -> ``Andrew
    Adonis`` + ``Baron Adonis``): the place or title that tells homonyms apart, evidence about the entity
    (its words found in the text), not part of what a mention says. Not split: suffixes that belong to
    the name (``Washington, D.C.``, ``Discovery, Inc.``, ``Jr.``, regnal numbers), a numbered peerage,
    which is a name the person goes by (``Arthur Wellesley, 1st Duke of Wellington``: "the Duke of
    Wellington"), a royal style, a one-word head with a title "of" somewhere (``Catherine, Princess of
    Wales``, ``Mary, Queen of Scots``: the whole is how the person is named), dates (``July 12, 2007``) and
    serial commas (``Banking, Housing, and Urban Affairs``)."""
    base, dis = split_name(name)
    m = _COMMA.match(base)
    if (not m or not _LETTER.search(m.group("head")) or _SERIAL.search(base) or _NOT_QUALIFIER.match(m.group("qual"))
            or m.group("head").rstrip()[-1:].isdigit()):
        return base, dis
    if len(m.group("head").split()) == 1 and _OF.search(m.group("qual")):
        return base, dis
    qual = " ".join(m.group("qual").split())
    return m.group("head").strip(), f"{qual}; {dis}" if dis else qual


def display_name(name: str) -> str:
    """What the LLM and the embedder see: the cleaned name, disambiguator kept in brackets."""
    base, dis = split_name(name)
    return f"{base} ({dis})" if dis else base


def answer_name(name: str) -> str:
    """The name as a model would answer it: the cleaned name without its disambiguator
    (``Kevin_Rudd_(diplomat)`` -> ``Kevin Rudd``); the whole cleaned name if that would leave nothing."""
    base, _ = split_name(name)
    return base or clean_name(name)


def name_key(name: str) -> str:
    """A key equal for names that differ only in case, accents, punctuation, spacing or encoding."""
    return " ".join(_WORD.findall(fold(clean_name(name))))


def words(text: str) -> list[str]:
    """Accent-folded lower-case word tokens."""
    return _WORD.findall(fold(text))


def initials(name: str) -> str:
    """Initials of a name's words, function words left out (``United Nations`` -> ``un``)."""
    base, _ = split_name(name)
    toks = [t for t in re.split(r"[\s\-/]+", base) if t]
    letters = [w[0] for w in (fold(t) for t in toks) if w and w not in _STOP and w[0].isalnum()]
    return "".join(letters)


def is_acronym_of(mention: str, name: str) -> bool:
    """Whether ``mention`` looks like an acronym (2-8 letters, mostly capitals or dotted) of ``name``'s words."""
    m = str(mention or "").strip()
    compact = re.sub(r"[.\s]", "", m)
    if not 2 <= len(compact) <= 8 or not compact.isalnum():
        return False
    caps = sum(ch.isupper() for ch in compact)
    if caps < max(2, len(compact) - 1) and "." not in m:
        return False
    ini = initials(name)
    return len(ini) >= 2 and fold(compact) == ini


_PARTICLES = _STOP | {"van", "von", "der", "den", "di", "della", "y", "bin", "ibn", "al", "el"}
_HONORIFICS = {"mr", "mrs", "ms", "miss", "dr", "sir", "dame", "lord", "lady", "president", "king", "queen",
               "prince", "princess", "pope", "saint", "st", "general", "senator", "governor", "mayor", "prof"}
_CLASH_IGNORED = _PARTICLES | _HONORIFICS


def _word_matches(w: str, others: list[str]) -> bool:
    """``w`` is one of ``others``, or a prefix of one or has one as its prefix (``Steve`` / ``Steven``; an
    initial ``K`` / ``Kaczynski``): at least 3 letters shared, or one of the two is a single letter."""
    return any(w == o or ((min(len(w), len(o)) >= 3 or 1 in (len(w), len(o))) and (o.startswith(w) or w.startswith(o)))
               for o in others)


def name_clash(mention: str, name: str) -> float:
    """1.0 when a mention of two or more words and the name each have a word the other lacks: another person
    of the same family or given name (``Mel Gibson`` / ``James K. Gibson``, ``Lech Walesa`` / ``Lech
    Kaczynski``), another team of the same city (``Manchester City`` / ``Manchester United``). Words match as
    in :func:`_word_matches`; function words, honorifics and initials are left out on both sides. 0.0 for a
    one-word mention, an acronym of the name, or when either side accounts for every word of the other
    (``Benjamin Netanyahu`` / ``Benjamin``, ``Otto von Bismarck`` / ``Otto Bismarck``)."""
    m = [w for w in words(strip_possessive(mention)) if w not in _CLASH_IGNORED]
    n = [w for w in words(split_name(name)[0]) if w not in _CLASH_IGNORED]
    if len(m) < 2 or not n or is_acronym_of(mention, name):
        return 0.0
    m_extra = [w for w in m if len(w) > 1 and not _word_matches(w, n)]
    n_extra = [w for w in n if len(w) > 1 and not _word_matches(w, m)]
    return float(bool(m_extra and n_extra))


def prefix_share(mention: str, name: str, min_len: int = 3) -> float:
    """Share of the mention's words that share a prefix of at least ``min_len`` letters and 60% of the
    shorter word with a word of the name without being equal to it (``Spanish`` ~ ``Spain``,
    ``Canadian`` ~ ``Canada``): derived forms, not the same word. Words shorter than 4 letters are ignored."""
    m_words = [w for w in words(mention) if len(w) >= 4]
    n_words = [w for w in words(split_name(name)[0]) if len(w) >= 4]
    if not m_words or not n_words:
        return 0.0
    hits = 0
    for w in m_words:
        if any(w != v and _derived(w, v, min_len) for v in n_words):
            hits += 1
    return hits / len(m_words)


def strip_possessive(mention: str) -> str:
    """The mention without English possessive endings: ``Sydney's`` -> ``Sydney``, ``Nintendo’s`` ->
    ``Nintendo``, ``the Jones'`` -> ``the Jones``. Other apostrophes (``O'Brien``) stay."""
    return _POSSESSIVE.sub("", str(mention or "")).strip()


def _derived(w: str, v: str, min_len: int = 3) -> bool:
    """``w`` and ``v`` share a prefix of at least ``min_len`` letters and 60% of the shorter word."""
    k = 0
    while k < min(len(w), len(v)) and w[k] == v[k]:
        k += 1
    return k >= min_len and k >= 0.6 * min(len(w), len(v))


def name_coverage(mention: str, name: str) -> float:
    """Share of the name's content words (function words left out) that the mention accounts for: the
    same word, or a derived form of it (a long shared prefix, words of 4+ letters: ``Australian`` ->
    ``Australia``). ``Colorado`` covers ``Colorado`` wholly and 2 of the 3 words of ``Colorado Springs,
    Colorado``. 0.0 for an empty name."""
    m_words = words(strip_possessive(mention))
    n_words = [w for w in words(split_name(name)[0]) if w not in _STOP] or words(split_name(name)[0])
    if not n_words:
        return 0.0
    m_set = set(m_words)
    long_m = [w for w in m_words if len(w) >= 4]
    hits = sum(v in m_set or (len(v) >= 4 and any(_derived(w, v) for w in long_m)) for v in n_words)
    return hits / len(n_words)


def spelling_similarity(mention: str, name: str) -> float:
    """Character-level similarity (0..1, difflib's ratio) of the mention and the name without its
    disambiguator, both as :func:`name_key`: misspellings and transliterations score high
    (``Panthopath`` ~ ``Panthapath`` 0.9) where word matching sees nothing."""
    a = name_key(strip_possessive(mention))
    b = name_key(split_name(name)[0])
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()
