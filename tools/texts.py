"""How entities and mentions are written as text: one home for the strings every scorer embeds.

``entity_text`` ("name. description") is what reflection, verification, the
fused features and the baselines compare; ``query_text`` ("mention. context")
is the text side of those comparisons; ``entity_ref`` is the short
``{qid, name}`` form of an entity in traces and progress events, ``entity_public``
the ``{qid, name, desc}`` form the graph returns; ``name_text`` and ``mention_text`` are the
name alone and the mention alone (compared by the fused linker's ``name_sim``).
"""

from __future__ import annotations

from typing import Any

from tools.descriptions import embedding_description
from tools.names import display_name, strip_possessive


def entity_text(entity: dict) -> str:
    """Name and description of an entity as one string ("name. desc", or the name alone).

    The name is normalised first (``tools.names.display_name``: underscores, %-encoding, a
    Wikipedia title's disambiguator kept in brackets), so every scorer sees the same clean text; a
    Wikidata-style attribute list is written as prose (:func:`tools.descriptions.embedding_description`).
    """
    name = name_text(entity)
    desc = embedding_description(str(entity.get("desc") or "").strip(), name)
    return f"{name}. {desc}" if desc else name


def name_text(entity: dict) -> str:
    """An entity's normalised name alone (``tools.names.display_name``): what ``entity_text`` gives
    when there is no description."""
    return display_name(str(entity.get("name") or "")).strip()


def mention_text(mention: str) -> str:
    """The mention alone, without an English possessive (``Sydney's`` -> ``Sydney``): compared with
    :func:`name_text` by the fused linker's ``name_sim``."""
    return strip_possessive(str(mention or "")).strip()


def query_text(mention: str, context: str) -> str:
    """A mention and its context as one string ("mention. context", or the mention alone)."""
    return f"{mention}. {context}" if context else mention


def entity_ref(entity: dict | None) -> dict[str, Any] | None:
    """``{qid, name}`` of an entity (``qid`` may be ``None``); ``None`` for nil."""
    return None if entity is None else {"qid": entity.get("qid"), "name": entity["name"]}


def entity_public(entity: dict | None) -> dict[str, Any] | None:
    """``{qid, name, desc}`` of an entity (the keys it has), as the graph returns it; ``None`` for nil."""
    return None if entity is None else {k: entity[k] for k in ("qid", "name", "desc") if k in entity}
