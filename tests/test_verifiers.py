"""Verification scorers: a tiny random CLIP built offline, the judge with a fake chat model."""

from __future__ import annotations

import json
import math
import string
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw

from tools.errors import InputError, ModelError
from tools.verifiers.clip import ClipScorer, load_clip
from tools.verifiers.judge import JudgeScorer, parse_score

ENTITY = {"name": "NATO", "desc": "North Atlantic Treaty Organization, an intergovernmental military alliance. " * 20}


def ctx(**overrides):
    from fakes import BagOfWordsEmbeddings

    base = dict(embedding_model=BagOfWordsEmbeddings(), openai_base_url=None, openai_api_key=None,
                use_precomputed_clues=True, scene_model="embedded", request_timeout=5.0, max_retries=0)
    base.update(overrides)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random-weight CLIP (tiny text/vision towers, a 90-token BPE vocab) saved as a local checkpoint."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    chars = list(string.ascii_lowercase + string.digits + ".,'-!?():;/")
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges = ["t h", "th e</w>", "a n", "an d</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    torch.manual_seed(0)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model_dir = root / "tiny-clip"
    CLIPModel(config).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return str(model_dir)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "flag.png"
    img = Image.new("RGB", (640, 480), (20, 40, 120))
    ImageDraw.Draw(img).ellipse((220, 140, 420, 340), outline="white", width=12)
    img.save(path)
    return str(path)


# ---- CLIP ---------------------------------------------------------------------------

def test_clip_scorer_loads_a_local_checkpoint_through_transformers(tiny_clip, picture):
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(tiny_clip)
    assert scorer.name == f"clip:{tiny_clip}" and scorer.default_threshold == 0.31
    value = scorer.score(ENTITY, image=picture, image_desc=None, ctx=ctx())
    assert isinstance(value, float) and math.isfinite(value) and -1.0 <= value <= 1.0
    model, processor = load_clip(tiny_clip)
    assert isinstance(model, CLIPModel) and isinstance(processor, CLIPProcessor)
    # deterministic, also from a fresh scorer (no cached embeddings)
    assert ClipScorer(tiny_clip).score(ENTITY, image=picture, image_desc=None, ctx=ctx()) == pytest.approx(value, abs=1e-6)


def test_clip_scores_differ_between_entities_and_long_text_is_truncated(tiny_clip, picture):
    from tools.verifiers.clip import max_text_length

    scorer = ClipScorer(tiny_clip)
    model, processor = load_clip(tiny_clip)
    assert max_text_length(model, processor) == 77
    other = scorer.score({"name": "Brussels", "desc": "capital of Belgium"}, image=picture, image_desc=None, ctx=ctx())
    assert other != scorer.score(ENTITY, image=picture, image_desc=None, ctx=ctx())


def test_clip_through_get_scorer(tiny_clip, picture):
    from tools.verify import get_scorer

    scorer = get_scorer(SimpleNamespace(verifier=f"clip:{tiny_clip}"))
    assert isinstance(scorer, ClipScorer) and scorer.model_name == tiny_clip


def test_clip_without_image_falls_back_to_the_text_scorer(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    desc = {"Caption": "NATO summit flags", "Tags": "flag; building"}
    value = scorer.score(ENTITY, image=None, image_desc=desc, ctx=ctx())
    assert 0.0 < value <= 1.0  # 'nato' overlaps in the bag-of-words test embedder
    assert scorer.score(ENTITY, image=None, image_desc=None, ctx=ctx()) == 0.0


def test_clip_bad_image_and_bad_model(tiny_clip, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.png"):
        ClipScorer(tiny_clip).score(ENTITY, image=str(bad), image_desc=None, ctx=ctx())
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), "red").save(good)
    with pytest.raises(ModelError, match="verifier 'clip:.*missing-model' could not be loaded"):
        ClipScorer(str(tmp_path / "missing-model")).score(ENTITY, image=str(good), image_desc=None, ctx=ctx())


def test_scene_zero_shot_with_clip(tiny_clip, picture):
    from tools.clues import scene

    clue = scene.extract(picture, ctx(scene_model=f"clip:{tiny_clip}"), {})
    assert clue.source.startswith(f"clip:{tiny_clip} zero-shot")
    assert clue.details["setting"] in ("indoor", "outdoor")
    assert sum(clue.details["setting_probability"].values()) == pytest.approx(1.0, abs=1e-3)
    labels = {label for label, _ in scene.place_labels()}
    assert all(p["label"] in labels for p in clue.details["places"]) and len(clue.details["places"]) == 3
    again = scene.extract(picture, ctx(scene_model=f"clip:{tiny_clip}"), {})
    assert again.text == clue.text


def test_scene_with_unloadable_clip_names_the_setting(tmp_path, picture):
    from tools.clues import scene

    with pytest.raises(ModelError, match="scene_model 'clip:"):
        scene.extract(picture, ctx(scene_model=f"clip:{tmp_path / 'none'}"), {})


# ---- judge --------------------------------------------------------------------------

def test_judge_sends_the_image_as_a_data_url_and_parses_messy_answers(picture):
    from fakes import scripted

    model = scripted("Sure! I'd rate this **0.8** out of 1.")
    scorer = JudgeScorer(model)
    assert scorer.default_threshold == 0.5 and scorer.name.startswith("judge:")
    assert scorer.score(ENTITY, image=picture, image_desc=None, ctx=ctx()) == pytest.approx(0.8)
    assert "data:image/jpeg;base64," in model.prompts[0] and "NATO" in model.prompts[0]
    # cached: the model is not asked twice for the same image and entity
    assert scorer.score(ENTITY, image=picture, image_desc=None, ctx=ctx()) == pytest.approx(0.8)
    assert len(model.prompts) == 1


def test_judge_reasks_once_then_fails_with_the_model_named(picture):
    from fakes import scripted

    assert JudgeScorer(scripted("I cannot tell.", "7/10")).score(
        ENTITY, image=picture, image_desc=None, ctx=ctx()) == pytest.approx(0.7)
    with pytest.raises(ModelError, match="gave no 0-1 score"):
        JudgeScorer(scripted("hmm", "still unsure")).score(ENTITY, image=picture, image_desc=None, ctx=ctx())


def test_judge_without_image_uses_the_description_as_text():
    from fakes import scripted

    model = scripted("0.25")
    scorer = JudgeScorer(model)
    desc = {"Caption": "a crowd at a summit", "OCR text": "NATO"}
    assert scorer.score(ENTITY, image=None, image_desc=desc, ctx=ctx()) == pytest.approx(0.25)
    assert "Image description: a crowd at a summit" in model.prompts[0] and "data:image" not in model.prompts[0]
    assert scorer.score(ENTITY, image=None, image_desc=None, ctx=ctx()) == 0.0


def test_judge_spec_through_get_scorer():
    from tools.verify import get_scorer

    scorer = get_scorer(SimpleNamespace(verifier="judge:openai:gpt-4o-mini"))
    assert isinstance(scorer, JudgeScorer) and scorer.name == "judge:openai:gpt-4o-mini"


@pytest.mark.parametrize("answer, expected", [
    ("0.8", 0.8), ("Score: 8/10", 0.8), ("85%", 0.85), ("**0.7**", 0.7), ("7", 0.7), ("Rating: 4/5", 0.8),
    ("yes", 1.0), ("No.", 0.0), ("0,75", 0.75), ("There are 2 people; score 0.3", 0.3), ("no idea", None), ("No, it does not match.", 0.0),
    ("I cannot tell", None), ("", None),
])
def test_parse_score(answer, expected):
    assert parse_score(answer) == (None if expected is None else pytest.approx(expected))
