"""What the image rules out: a person the image shows as a man cannot be an entity recorded as female.

Inter-modal verification by cosine (``tools/verify.py``) measures agreement only weakly with the
offline models: the image description of the right entity scores about as high as that of a wrong one
(docs/method.md). A contradiction is sharper evidence: the description's person words (``a woman``,
``a boy``, ``his``; :func:`tools.features.gender_cue`, 0 when it names both or neither) against the
entity's sex as its description states it (:func:`tools.facts.entity_facts`: the ``Sex:`` attribute, or a
prose description's pronouns; 0 when it states neither). Either unknown means no contradiction, so
attribute-free descriptions, names alone and images without people are never refuted.
"""

from __future__ import annotations

from tools.facts import entity_facts
from tools.features import gender_cue

_SEX = {1: "male", -1: "female"}
_SHOWN = {1: "a man or boy", -1: "a woman or girl"}


def contradiction(entity: dict | None, image_text: str) -> str | None:
    """Why the image rules ``entity`` out, or ``None`` when nothing in it does."""
    if not entity or not image_text:
        return None
    shown = gender_cue(image_text)
    sex = entity_facts(str(entity.get("desc") or ""), str(entity.get("name") or ""))["sex"]
    if shown and sex and shown != sex:
        return f"the image shows {_SHOWN[shown]}; {entity.get('name')!s} is recorded as {_SEX[sex]}"
    return None
