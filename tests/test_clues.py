"""Clue tools on real image files generated here (offline, small, CPU)."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw, ImageFont

from tools.clues import caption, extract_clue, objects, ocr, scene
from tools.clues.base import Clue
from tools.clues.image_io import image_data_url, load_image
from tools.errors import ConfigError, InputError, ModelError


def ctx(**overrides):
    """A context with the offline defaults (and whatever the test overrides)."""
    base = dict(ocr_engine="rapidocr", object_model="embedded", scene_model="embedded", caption_model="embedded",
                use_precomputed_clues=True, openai_base_url=None, openai_api_key=None,
                request_timeout=5.0, max_retries=0)
    base.update(overrides)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def text_image(tmp_path_factory) -> str:
    """640x480 white picture with large black 'NATO 2024' and a smaller second line below."""
    path = tmp_path_factory.mktemp("img") / "nato.png"
    img = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(img)
    draw.text((40, 60), "NATO 2024", fill="black", font=ImageFont.load_default(size=96))
    draw.text((40, 300), "Brussels summit", fill="black", font=ImageFont.load_default(size=48))
    img.save(path)
    return str(path)


@pytest.fixture(scope="module")
def scene_image(tmp_path_factory) -> str:
    """640x480 drawn landscape: blue sky, green field, a grey house, a red flag; saved as JPEG."""
    path = tmp_path_factory.mktemp("img") / "scene.jpg"
    img = Image.new("RGB", (640, 480), (110, 170, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 300, 640, 480), fill=(60, 150, 60))
    draw.rectangle((380, 200, 560, 330), fill=(150, 150, 150))
    draw.polygon([(370, 200), (470, 130), (570, 200)], fill=(120, 50, 40))
    draw.line((120, 320, 120, 140), fill=(80, 60, 40), width=6)
    draw.rectangle((123, 140, 213, 195), fill=(200, 30, 30))
    draw.ellipse((520, 30, 580, 90), fill=(255, 230, 80))
    img.save(path, quality=92)
    return str(path)


@pytest.fixture()
def corrupt_image(tmp_path) -> str:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(range(256)))
    return str(path)


# ---- image reading ------------------------------------------------------------------

def test_corrupt_image_is_an_input_error_naming_the_path(corrupt_image):
    with pytest.raises(InputError, match="broken.jpg"):
        load_image(corrupt_image)
    for clue_type in ("ocr", "objects", "scene", "caption"):
        with pytest.raises(InputError, match="broken.jpg"):
            extract_clue(clue_type, image=corrupt_image, image_desc=None, ctx=ctx(), gathered={})


def test_missing_image_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        load_image(str(tmp_path / "nope.png"))


def test_transparent_png_becomes_rgb_on_white(tmp_path):
    path = tmp_path / "logo.png"
    Image.new("RGBA", (20, 10), (0, 0, 0, 0)).save(path)
    img = load_image(str(path))
    assert img.mode == "RGB" and img.getpixel((5, 5)) == (255, 255, 255)


def test_data_url_is_a_downscaled_jpeg(scene_image):
    import base64
    import io

    url = image_data_url(scene_image, max_side=256)
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(img.size) == 256


# ---- OCR ----------------------------------------------------------------------------

def test_rapidocr_reads_large_text_in_reading_order(text_image):
    clue = ocr.extract(text_image, ctx(), {})
    assert clue.type == "ocr" and clue.source.startswith("rapidocr")
    assert "NATO" in clue.text and "2024" in clue.text
    assert clue.text.index("NATO") < clue.text.lower().index("brussels")
    lines = clue.details["lines"]
    assert all(0.0 <= ln["confidence"] <= 1.0 and len(ln["box"]) == 4 for ln in lines)
    assert all(ln["confidence"] >= clue.details["min_confidence"] for ln in lines)


def test_ocr_confidence_floor_drops_lines(text_image):
    clue = ocr.extract(text_image, ctx(ocr_min_confidence=1.01), {})
    assert clue.text == "" and clue.details["dropped"] >= 1


def test_reading_order_rows_then_columns():
    lines = [{"text": "right", "box": [300, 12, 400, 40]}, {"text": "below", "box": [0, 100, 80, 130]},
             {"text": "left", "box": [0, 10, 100, 42]}]
    assert [ln["text"] for ln in ocr.reading_order(lines)] == ["left", "right", "below"]


def test_unknown_ocr_engine_is_a_config_error(text_image):
    with pytest.raises(ConfigError, match="ocr_engine"):
        ocr.extract(text_image, ctx(ocr_engine="abbyy"), {})


def test_tesseract_lines_grouped_with_confidences(text_image, monkeypatch):
    """The tesseract path groups pytesseract's words into lines (a stand-in module; the binary is optional)."""
    data = {"text": ["NATO", "2024", "", "Brussels"], "conf": ["96", "91", "-1", "40"],
            "block_num": [1, 1, 1, 2], "par_num": [1, 1, 1, 1], "line_num": [1, 1, 1, 1],
            "left": [40, 300, 0, 40], "top": [60, 62, 0, 300], "width": [200, 150, 0, 200], "height": [90, 88, 0, 40]}
    fake = types.SimpleNamespace(Output=types.SimpleNamespace(DICT="dict"),
                                 image_to_data=lambda img, lang, output_type: data)
    monkeypatch.setitem(sys.modules, "pytesseract", fake)
    clue = ocr.extract(text_image, ctx(ocr_engine="tesseract:eng"), {})
    assert clue.text == "NATO 2024"  # 'Brussels' at 0.40 is under the floor
    assert clue.details["lines"][0]["box"] == [40.0, 60.0, 450.0, 150.0]
    assert clue.source == "tesseract (eng)"


# ---- objects ------------------------------------------------------------------------

def test_embedded_objects_runs_and_says_what_it_is(scene_image):
    clue = objects.extract(scene_image, ctx(), {})
    assert clue.type == "objects"
    assert "haar" in clue.source and "efficientnet-lite0" in clue.source and "not a detector" in clue.source
    assert clue.details["classifier"].startswith("efficientnet-lite0")
    for item in clue.details["main_subject"]:
        assert 0.05 <= item["probability"] <= 1.0 and item["label"] in clue.text
    assert set(clue.details["counts"]) <= {"face", "person"}


def test_embedded_objects_on_a_real_photo():
    """Grace Hopper's portrait (matplotlib's sample data): one face, a uniform as the main subject."""
    cbook = pytest.importorskip("matplotlib.cbook")
    path = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    clue = objects.extract(path, ctx(), {})
    assert clue.details["counts"].get("face") == 1
    assert clue.details["main_subject"][0]["label"] == "military uniform"
    assert clue.text.startswith("1 face; main subject: military uniform")


def test_no_faces_on_a_blank_picture():
    assert objects.detect_faces_people(Image.new("RGB", (320, 240), "white")) == {"faces": [], "people": []}


def test_imagenet_labels_and_classifier_probabilities(scene_image):
    from tools.clues.imagenet import classify, imagenet_labels, top_classes

    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[834] == "suit"
    probs = classify(scene_image)
    assert probs.shape == (1000,) and abs(float(probs.sum()) - 1.0) < 1e-3
    assert top_classes(probs, k=3)[0][1] >= top_classes(probs, k=3)[-1][1]


def test_summarize_counts_in_plain_words():
    from collections import Counter

    assert objects.summarize(Counter({"person": 2, "tie": 1, "bus": 3})) == "3 buses, 2 people, 1 tie"


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> str:
    """A random-weight YOLOS detector saved locally (no pretrained backbone, no hub)."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    path = tmp_path_factory.mktemp("yolos")
    torch.manual_seed(0)
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         image_size=[64, 64], patch_size=16, num_detection_tokens=5,
                         id2label={0: "person", 1: "flag"}, label2id={"person": 0, "flag": 1})
    YolosForObjectDetection(config).save_pretrained(path)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return str(path)


def test_huggingface_detector_from_local_path(tiny_detector, scene_image):
    clue = objects.extract(scene_image, ctx(object_model=f"huggingface:{tiny_detector}", object_min_confidence=0.0), {})
    assert clue.source == f"huggingface:{tiny_detector} (object-detection)"
    detections = clue.details["detections"]
    assert detections, "a 0.0 floor keeps every detection token"
    assert {d["label"] for d in detections} <= {"person", "flag"}
    assert sum(clue.details["counts"].values()) == len(detections)
    assert all(len(d["box"]) == 4 for d in detections)
    # the default floor (0.5) drops what a random model is unsure of, and the clue is still well formed
    strict = objects.extract(scene_image, ctx(object_model=f"huggingface:{tiny_detector}"), {})
    assert all(d["confidence"] >= 0.5 for d in strict.details["detections"])


@pytest.fixture(scope="module")
def tiny_owlvit(tmp_path_factory) -> str:
    """A random-weight OWL-ViT (open-vocabulary detector) with a character-level CLIP tokenizer, saved locally."""
    import string

    import torch
    from transformers import (
        CLIPTokenizer,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    root = tmp_path_factory.mktemp("owlvit")
    chars = list(string.ascii_lowercase + string.digits + ".,'-")
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    processor = OwlViTProcessor(
        image_processor=OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")))
    torch.manual_seed(0)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = OwlViTConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, **special),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    OwlViTForObjectDetection(config).save_pretrained(root / "tiny-owlvit")
    processor.save_pretrained(root / "tiny-owlvit")
    return str(root / "tiny-owlvit")


def test_open_vocabulary_detector_uses_the_label_list(tiny_owlvit, scene_image):
    settings = ctx(object_model=f"huggingface:{tiny_owlvit}", object_min_confidence=0.0, object_labels="person, flag")
    clue = objects.extract(scene_image, settings, {})
    assert clue.source == f"huggingface:{tiny_owlvit} (zero-shot-object-detection)"
    assert clue.details["detections"] and {d["label"] for d in clue.details["detections"]} <= {"person", "flag"}
    assert objects.object_labels(ctx())[:2] == ["person", "face"]  # the shipped list when none is set


def test_unloadable_detector_is_a_model_error_naming_it(tmp_path, scene_image):
    with pytest.raises(ModelError, match="object_model 'huggingface:.*nothing-here"):
        objects.extract(scene_image, ctx(object_model=f"huggingface:{tmp_path / 'nothing-here'}"), {})


# ---- scene --------------------------------------------------------------------------

def test_embedded_scene_heuristic_on_drawn_landscape(scene_image):
    clue = scene.extract(scene_image, ctx(), {})
    assert clue.source.startswith("heuristic")
    assert "outdoor" in clue.details["setting"]
    assert "sky-like colours in upper third" in clue.details["cues"]


def test_embedded_scene_sees_a_document(text_image):
    clue = scene.extract(text_image, ctx(), {})
    assert clue.details["setting"].startswith("graphic or document")


def test_place_labels_are_tagged():
    labels = scene.place_labels()
    assert len(labels) >= 40 and {w for _, w in labels} == {"indoor", "outdoor"}


# ---- caption ------------------------------------------------------------------------

def test_composed_caption_uses_gathered_clues(text_image):
    gathered = {"ocr": Clue("ocr", "NATO 2024", "test"), "objects": Clue("objects", "2 faces; main subject: suit", "test"),
                "scene": Clue("scene", "indoor", "test")}
    clue = caption.extract(text_image, ctx(), gathered)
    assert clue.text == "a picture with: 2 faces; main subject: suit; scene: indoor; text: 'NATO 2024'"
    assert "composed" in clue.source and "not a captioning model" in clue.source


def test_composed_caption_runs_missing_tools(text_image):
    clue = extract_clue("caption", image=text_image, image_desc=None, ctx=ctx(), gathered={})
    assert "NATO" in clue.text and "text:" in clue.text


def test_caption_with_a_vision_chat_model_sends_the_image(text_image):
    from fakes import scripted

    model = scripted("  A white sign reading NATO 2024.\n")
    clue = caption.extract(text_image, ctx(caption_model=model), {})
    assert clue.text == "A white sign reading NATO 2024."
    assert "data:image/jpeg;base64," in model.prompts[0]


def test_precomputed_description_wins_when_allowed(text_image):
    desc = {"Caption": "a man in a suit", "OCR text": "HELLO"}
    assert extract_clue("ocr", image=text_image, image_desc=desc, ctx=ctx(), gathered={}).text == "HELLO"
    own = extract_clue("ocr", image=text_image, image_desc=desc, ctx=ctx(use_precomputed_clues=False), gathered={})
    assert "NATO" in own.text
    json.dumps(own.to_dict())  # serialisable for the graph state


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> str:
    """A random-weight BLIP captioner (tiny towers, a 15-word WordPiece vocab) saved locally."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    root = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "the", "nato", "flag", "sign",
             "with", "text", "[DEC]"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(root / "vocab.txt"), bos_token="[DEC]"))
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=14, pad_token_id=0, sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model_dir = root / "tiny-blip"
    BlipForConditionalGeneration(config).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return str(model_dir)


def test_huggingface_captioner_from_local_path(tiny_captioner, scene_image):
    clue = caption.extract(scene_image, ctx(caption_model=f"huggingface:{tiny_captioner}"), {})
    assert clue.source.startswith(f"huggingface:{tiny_captioner} (image-")
    assert clue.text and set(clue.text.split()) <= {"a", "picture", "of", "the", "nato", "flag", "sign", "with", "text"}
    again = caption.extract(scene_image, ctx(caption_model=f"huggingface:{tiny_captioner}"), {})
    assert again.text == clue.text  # greedy decoding: deterministic
