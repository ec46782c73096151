"""What a description states about its entity (``tools.facts``): Wikidata attributes as before, prose read
from its pronouns and lead parenthesis, and nothing read from attribute-free or non-person text."""

from __future__ import annotations

import numpy as np
import pytest

from tools.embeddings import get_embedder
from tools.facts import entity_facts, is_attribute_style, lead_years, pronoun_sex
from tools.features import ALL_FEATURES, candidate_features
from tools.refute import contradiction

from fakes import BagOfWordsEmbeddings

COL = {n: i for i, n in enumerate(ALL_FEATURES)}
CURIE = ("Marie Curie (7 November 1867 – 4 July 1934) was a Polish and naturalised-French physicist and chemist. "
         "She was the first woman to win a Nobel Prize; her husband Pierre shared it.")
BIDEN = ("Joe Biden (born November 20, 1942) is an American politician who served as the 46th president. "
         "He was vice president under Barack Obama, and his son Hunter...")


@pytest.mark.parametrize("desc,name,expected", [
    (CURIE, "Marie Curie", {"sex": -1, "birth": 1867, "death": 1934}),
    (BIDEN, "Joe Biden", {"sex": 1, "birth": 1942, "death": None}),
    ("William Herbert, 1st Earl of Pembroke (died 1469) was a Welsh nobleman. He fought at Edgecote.",
     "William Herbert", {"sex": 1, "birth": None, "death": 1469}),
    # the name's own words are not pronouns: He Zizhen is "she" in her own description
    ("He Zizhen (1909–1984) was a Chinese revolutionary. She married Mao Zedong in 1928; her daughter...",
     "He Zizhen", {"sex": -1, "birth": 1909, "death": 1984}),
    # a building's years are not a life: without a person's pronouns no date is read
    ("The Eiffel Tower (1887–1889) is a wrought-iron lattice tower in Paris. It is named after Gustave Eiffel.",
     "Eiffel Tower", {"sex": 0, "birth": None, "death": None}),
    # both sexes about as often: unknown
    ("Sonny & Cher (1964–1977) were an American duo. He wrote the songs and she sang them; his and her...",
     "Sonny & Cher", {"sex": 0, "birth": None, "death": None}),
    # attributes are read as before, and an attribute-free record states nothing
    ("Name: X. Sex: female. Birth: 0037, Anzio. Death: 0068.", "X", {"sex": -1, "birth": 37, "death": 68}),
    ("Name: Alberta Vaughn. Occupation: actor.", "Alberta Vaughn", {"sex": 0, "birth": None, "death": None}),
    ("Name: Young Man Afraid Of His Horses. Occupation: tribal chief. Languages: Lakota.",
     "Young Man Afraid Of His Horses", {"sex": 0, "birth": None, "death": None}),
    ("", "Nobody", {"sex": 0, "birth": None, "death": None}),
])
def test_facts_from_attributes_and_prose(desc, name, expected):
    assert entity_facts(desc, name) == expected


def test_the_parts():
    assert is_attribute_style("Name: X. Occupation: actor.") and is_attribute_style("Occupation: actor. Spouse: Y.")
    assert not is_attribute_style(CURIE)
    assert pronoun_sex("she said her piece; he nodded", "") == 0 and pronoun_sex("He ran. He won.", "") == 1
    assert lead_years("Bratz (film) is a 2007 film (2007–2008).") == (None, None)  # no year before the verb
    assert lead_years("Tom (born c. 1950) is a farmer.") == (1950, None)
    assert lead_years("Ann (1990 - 1950) was a typo.") == (None, None)  # a range that runs backwards is not a life
    assert lead_years("Myron V. George (1900 – 1972) was a police officer.") == (1900, 1972)  # initials
    assert lead_years("Greg Moore (racing driver) (1975 – 1999) was a racer.") == (1975, 1999)  # a title's bracket
    assert lead_years("Ann is a farmer (born 1950).") == (None, None)  # after the lead's verb: not the lead's


def test_prose_descriptions_reach_the_gender_and_date_features_and_the_refutation():
    """A list described in prose (Wikipedia leads, a user's own knowledge base) gets the same fact evidence as one
    described by Wikidata attributes; before, prose moved none of these features."""
    cands = [{"name": "Marie Curie", "desc": CURIE}, {"name": "Joe Biden", "desc": BIDEN},
             {"name": "Eiffel Tower", "desc": "The Eiffel Tower (1887–1889) is a lattice tower. It is in Paris."}]
    f = candidate_features("Curie", "She spoke at the ceremony in 2011.", cands, get_embedder(BagOfWordsEmbeddings()), ranked=False)
    assert list(f[:, COL["gender_text"]]) == [1, -1, 0]
    assert list(f[:, COL["years_fit"]]) == [-1, 1, 0]  # dead by 2011 / alive in 2011 / not a life
    assert list(f[:, COL["died_before_1900"]]) == [0, 0, 0]
    assert contradiction(cands[0], "a man in a suit at a lectern") is not None
    assert contradiction(cands[1], "a man in a suit at a lectern") is None
    assert contradiction(cands[2], "a man in a suit at a lectern") is None
    bare = [{"name": "Marie Curie", "desc": "Name: Marie Curie. Occupation: physicist."}]
    g = candidate_features("Curie", "She spoke in 2011.", bare, get_embedder(BagOfWordsEmbeddings()), ranked=False)
    assert g[0, COL["gender_text"]] == 0 and g[0, COL["years_fit"]] == 0 and np.isfinite(g).all()
    assert contradiction(bare[0], "a man in a suit") is None


def test_the_embedder_reads_an_attribute_list_as_prose_and_other_text_as_it_is():
    from tools.texts import entity_text

    marie = {"name": "Marie_Curie", "desc": "Name: Marie Curie. Sex: female. Birth: 1867, Warsaw. Death: 1934, "
                                            "Passy. Occupation: physicist, chemist. Spouse: Pierre Curie."}
    text = entity_text(marie)
    assert text.startswith("Marie Curie. Marie Curie (1867 – 1934) was a physicist and chemist. ")
    assert "She was born in Warsaw." in text and "She married Pierre Curie." in text and "Sex:" not in text
    assert text == entity_text(dict(marie))  # the same text every time (the sentence order is fixed by the name)
    assert entity_text({"name": "Ebro", "desc": "a river in Spain"}) == "Ebro. a river in Spain"
    assert entity_text({"name": "Ebro", "desc": ""}) == "Ebro"
    bare = entity_text({"name": "Alberta Vaughn", "desc": "Name: Alberta Vaughn. Occupation: actor."})
    assert bare == "Alberta Vaughn. Alberta Vaughn is an actor."
    # the facts still come from the description as given
    assert entity_facts(marie["desc"], "Marie Curie") == {"sex": -1, "birth": 1867, "death": 1934}
