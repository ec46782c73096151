"""What an image rules out: its person words against an entity's recorded sex."""

from __future__ import annotations

import pytest

from tools.refute import contradiction

MAN = {"name": "Fred Thompson", "desc": "Name: Fred Thompson. Sex: male. Birth: 1942."}
WOMAN = {"name": "Emma Thompson", "desc": "Name: Emma Thompson. Sex: female. Birth: 1959."}
PLACE = {"name": "Thompson, Manitoba", "desc": "city in Manitoba, Canada"}


@pytest.mark.parametrize("entity, image_text, refuted", [
    (MAN, "a woman smiling in a white jacket", True),
    (WOMAN, "a boy sitting in a chair; a young boy", True),
    (WOMAN, "a woman smiling in a white jacket", False),
    (MAN, "a man and a woman hugging each other", False),   # both: no cue
    (MAN, "a microphone on a lectern", False),              # no person words
    (PLACE, "a woman smiling", False),                      # no recorded sex
    ({"name": "X", "desc": "Sex: male"}, "", False),        # no image text
    (None, "a woman", False),                               # nil answer
])
def test_a_contradiction_needs_both_a_cue_and_an_attribute(entity, image_text, refuted):
    reason = contradiction(entity, image_text)
    assert bool(reason) == refuted
    if reason:
        assert entity["name"] in reason and ("female" in reason) == (entity is WOMAN)
