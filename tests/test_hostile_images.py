"""Hostile images, written in the test run: a bad image degrades to text (issue #12, part 3).

Every unusable file is dropped at the graph's entry with a warning naming it, and the mention is
linked on its text (and on a precomputed description when the record has one); ``i2cr link``
exits 0 and warns on stderr; with ``--strict-image`` / ``strict_image`` it is one line, exit 2.
Files that are unusual but fine (EXIF-rotated, 16-bit grey, float) are normalised, not blanked.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graph import Context, graph
from graph.cli import main
from tools.clues import ImageToolError, extract_clue, ocr
from tools.clues.image_io import MAX_PIXELS, load_image
from tools.errors import InputError, ModelError

from fakes import BagOfWordsEmbeddings, TableScorer, scripted
from providers_helpers import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
CANDS = [
    {"qid": "Q41421", "name": "Michael Jordan", "desc": "American basketball player for the Chicago Bulls"},
    {"qid": "Q810", "name": "Jordan", "desc": "country in Western Asia"},
]
INPUT = {"mention": "Jordan", "context": "Jordan scored 30 points for the Bulls", "candidates": CANDS}
DESC = {"Caption": "a man holding a basketball", "OCR text": "BULLS 23", "Tags": "basketball; sport"}


# ---- hostile files ----------------------------------------------------------------

def _png_header_only_cost(path: Path, width: int, height: int) -> None:
    """A complete, valid 1-bit greyscale PNG of any size, written in little memory and time.

    The all-zero rows are streamed through zlib in batches, so a 30000x30000 bomb (112 MB raw)
    is a 110 kB file written in well under a second.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte + packed zero pixels
    comp = zlib.compressobj(1)
    batch, left, parts = max(1, 4_000_000 // len(row)), height, []
    while left:
        n = min(batch, left)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _jpeg_bytes() -> bytes:
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_missing(d: Path) -> Path:
    return d / "missing.png"


def make_directory(d: Path) -> Path:
    (d / "folder.png").mkdir()
    return d / "folder.png"


def make_dangling_symlink(d: Path) -> Path:
    os.symlink(d / "gone.png", d / "dangling.png")
    return d / "dangling.png"


def make_zero_bytes(d: Path) -> Path:
    (d / "empty.png").write_bytes(b"")
    return d / "empty.png"


def make_text_as_png(d: Path) -> Path:
    (d / "notes.png").write_text("these are my holiday notes, not a picture\n")
    return d / "notes.png"


def make_svg(d: Path) -> Path:
    (d / "logo.svg").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
                                'height="10"><rect width="10" height="10" fill="red"/></svg>\n')
    return d / "logo.svg"


def make_truncated_jpeg(d: Path) -> Path:
    data = _jpeg_bytes()
    (d / "truncated.jpg").write_bytes(data[: data.index(b"\xff\xda") + 200])
    return d / "truncated.jpg"


def make_corrupt_jpeg_body(d: Path) -> Path:
    data = bytearray(_jpeg_bytes())
    start = data.index(b"\xff\xda") + 20
    for i in range(start, len(data) - 2):  # header intact, entropy-coded body replaced by invalid markers
        data[i] = 0xFF if i % 2 else 0xC8
    (d / "corrupt.jpg").write_bytes(bytes(data))
    return d / "corrupt.jpg"


def make_too_large(d: Path) -> Path:
    side = int(MAX_PIXELS ** 0.5) + 100  # just over our limit, under Pillow's bomb warning (89M)
    _png_header_only_cost(d / "large.png", side, side)
    return d / "large.png"


def make_png_bomb(d: Path) -> Path:
    _png_header_only_cost(d / "bomb.png", 30_000, 30_000)
    return d / "bomb.png"


def make_strip(d: Path) -> Path:
    _png_header_only_cost(d / "strip.png", 60_000_000, 1)
    return d / "strip.png"


# (maker, words the reason must contain)
BAD = {
    "missing": (make_missing, "file not found"),
    "directory": (make_directory, "is a directory"),
    "dangling_symlink": (make_dangling_symlink, "dangling symbolic link"),
    "zero_bytes": (make_zero_bytes, "empty file (0 bytes)"),
    "text_renamed_png": (make_text_as_png, "not an image format"),
    "svg": (make_svg, "SVG"),
    "truncated_jpeg": (make_truncated_jpeg, "image file is truncated"),
    "corrupt_jpeg_body": (make_corrupt_jpeg_body, "not a readable image"),
    "too_large": (make_too_large, "too large"),
    "png_bomb_30000x30000": (make_png_bomb, "too large (900,000,000 pixels"),
    "png_60000000x1": (make_strip, "too large (60000000x1"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    return {name: maker(d) for name, (maker, _) in BAD.items()}


def run(inputs: dict, model=None, scorer=None, **settings):
    settings.setdefault("clue_order", ["ocr"])
    ctx = Context(linker_mode="llm", linker_model=model or scripted("1"), embedding_model=BagOfWordsEmbeddings(),
                  verifier=scorer or TableScorer({}), reflection_threshold=0.0, **settings)
    return graph.invoke({**INPUT, **inputs}, context=ctx)


# ---- the graph: linked on text, reason recorded -------------------------------------

@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_is_dropped_and_the_mention_linked_on_text(case, bad_files):
    path = str(bad_files[case])
    out = run({"image": path})
    assert out["entity"]["qid"] == "Q41421"
    assert out["status"] == "text_only" and out["stop_round"] == 1
    assert len(out["warnings"]) == 1
    warning = out["warnings"][0]
    assert path in warning and BAD[case][1] in warning and "linked on its text" in warning
    assert "\n" not in warning
    noted = [t for t in out["trace"] if t["step"] == "input"]
    assert noted and noted[0]["note"] == warning
    assert out["trace"][0]["step"] == "input"  # recorded before anything else happened


@pytest.mark.parametrize("case", list(BAD))
def test_strict_image_makes_a_bad_image_an_input_error(case, bad_files):
    path = str(bad_files[case])
    with pytest.raises(InputError) as err:
        run({"image": path, "id": "m7"}, strict_image=True)
    message = str(err.value)
    assert message.startswith("input 'm7': image: ") and path in message and BAD[case][1] in message
    assert "\n" not in message


def test_precomputed_description_is_still_used_when_the_image_is_bad(bad_files):
    # text round picks the country; the image (its description) disagrees; the OCR clue of the description
    # ("BULLS 23") leads to the player, whom it confirms
    model = scripted("2", "1")
    out = run({"image": str(bad_files["corrupt_jpeg_body"]), "image_desc": DESC}, model,
              TableScorer({"Michael Jordan": 0.9}))
    assert out["entity"]["qid"] == "Q41421" and out["status"] == "clue_verified:ocr"
    assert out["clues"][0]["source"] == "precomputed" and out["clues"][0]["text"] == "BULLS 23"
    assert "BULLS 23" in model.prompts[1]
    assert len(out["warnings"]) == 1 and "corrupt.jpg" in out["warnings"][0]
    assert "precomputed image description" in out["warnings"][0]


def test_eval_record_carries_the_warning(bad_files):
    from evals.datasets import Example
    from evals.runner import evaluate_one

    ctx = Context(linker_mode="llm", linker_model=scripted("1"), embedding_model=BagOfWordsEmbeddings(),
                  verifier=TableScorer({}), reflection_threshold=0.0)
    ex = Example(id="r1", inputs={**INPUT, "image": str(bad_files["png_bomb_30000x30000"])},
                 gold={"qid": "Q41421", "name": "Michael Jordan"})
    rec = evaluate_one(graph, ex, ctx, lambda inputs: {})
    assert "error" not in rec and rec["correct"] is True and rec["status"] == "text_only"
    assert len(rec["warnings"]) == 1 and "bomb.png" in rec["warnings"][0] and "too large" in rec["warnings"][0]


# ---- clue tools and verifiers on an image they cannot use ----------------------------

class ResizeImgError(Exception):
    """Stands in for rapidocr's error of that name, which has an empty message."""


@pytest.fixture()
def photo(tmp_path) -> str:
    path = tmp_path / "photo.png"
    Image.new("RGB", (48, 32), "white").save(path)
    return str(path)


def _broken_rapidocr(monkeypatch):
    def engine(array):
        raise ResizeImgError()

    monkeypatch.setattr(ocr, "_rapidocr_engine", lambda: engine)


def test_failing_clue_tool_is_noted_and_skipped_with_a_message_naming_tool_and_image(photo, monkeypatch):
    _broken_rapidocr(monkeypatch)
    out = run({"image": photo})  # TableScorer({}) fails the text answer, so the OCR round is tried
    assert out["entity"]["qid"] == "Q41421" and out["status"] == "fallback"
    expected = f"ocr tool 'rapidocr' failed on image {photo}: ResizeImgError; skipped"
    assert out["warnings"] == [expected]
    clue_steps = [t for t in out["trace"] if t["step"] == "clue"]
    assert clue_steps[0]["note"] == expected


def test_any_tool_exception_with_an_empty_message_still_names_tool_image_and_type(photo, monkeypatch):
    from tools.clues import scene

    def boom(*args, **kwargs):
        raise ValueError()

    monkeypatch.setattr(scene, "extract", boom)
    with pytest.raises(ImageToolError) as err:
        extract_clue("scene", image=photo, image_desc=None, ctx=Context(), gathered={})
    assert str(err.value) == f"scene tool 'embedded' failed on image {photo}: ValueError"
    out = run({"image": photo}, clue_order=["scene"])
    assert out["warnings"] == [f"scene tool 'embedded' failed on image {photo}: ValueError; skipped"]


def test_a_clue_model_that_cannot_be_loaded_still_stops_the_run(photo, monkeypatch):
    def unloadable():
        raise ModelError("ocr_engine 'rapidocr' could not be loaded: OSError: no model file")

    monkeypatch.setattr(ocr, "_rapidocr_engine", unloadable)
    with pytest.raises(ModelError, match="could not be loaded"):
        run({"image": photo})


def test_verifier_that_cannot_use_the_image_lets_the_text_answer_stand(photo):
    class BrokenVerifier(TableScorer):
        name = "broken-verifier"

        def score(self, entity, *, image, image_desc, ctx):
            raise ImageToolError("verifier 'broken-verifier'", "RuntimeError", image)

    out = run({"image": photo}, scorer=BrokenVerifier({}))
    assert out["entity"]["qid"] == "Q41421" and out["status"] == "text_only"
    assert out["warnings"] == [f"verifier 'broken-verifier' failed on image {photo}: RuntimeError; "
                               "not verified, the text answer stands"]


def test_clip_failure_on_an_image_is_an_image_error_naming_it(photo, monkeypatch):
    from tools.verifiers import clip

    scorer = clip.ClipScorer("tiny")
    monkeypatch.setattr(scorer, "_model", lambda: (None, None))
    monkeypatch.setattr(clip, "embed_images", lambda *a: (_ for _ in ()).throw(RuntimeError()))
    with pytest.raises(ImageToolError) as err:
        scorer.image_embedding(photo)
    assert str(err.value) == f"verifier 'clip:tiny' failed on image {photo}: RuntimeError"


def test_text_scorer_leaves_out_a_tool_the_image_defeats(photo, monkeypatch):
    from tools.clues import Clue, objects, scene
    from tools.verify import TextEmbeddingScorer

    _broken_rapidocr(monkeypatch)
    monkeypatch.setattr(objects, "extract", lambda *a: Clue("objects", "2 people", "fake"))
    monkeypatch.setattr(scene, "extract", lambda *a: Clue("scene", "indoor", "fake"))
    text = TextEmbeddingScorer().image_text(photo, None, Context())
    assert text == "2 people. indoor. a picture with: 2 people; scene: indoor"  # OCR left out, twice


# ---- unusual but fine: normalised ----------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    upright = load_image(str(path))
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    out = run({"image": str(path)}, scorer=TableScorer({"Michael Jordan": 0.9}))  # verified: no tool runs
    assert out["status"] == "text_verified" and out["warnings"] == []


def _gradient(dtype, lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi, 64 * 32, dtype=np.float64).reshape(32, 64).astype(dtype)


@pytest.mark.parametrize("name,array", [
    ("grey16.png", _gradient(np.uint16, 1000, 60000)),
    ("grey16.tif", _gradient(np.uint16, 0, 4095)),       # 12-bit data in 16 bits: would be nearly all white
    ("grey32.tif", _gradient(np.int32, -70000, 70000)),  # 'I' with negative values
    ("float.tif", _gradient(np.float32, 0.0, 1.0)),      # 'F' in 0..1: would be all black
])
def test_wide_greyscale_is_scaled_by_its_range_not_blank(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I", "F")
    arr = np.asarray(load_image(str(path)))[:, :, 0].astype(int)
    assert arr.min() == 0 and arr.max() == 255
    assert arr.std() > 50
    assert (np.diff(arr.reshape(-1)) >= 0).all()  # the gradient keeps its order


def test_float_image_with_nan_and_constant_image(tmp_path):
    arr = _gradient(np.float32, -1.0, 1.0)
    arr[0, :5] = np.nan
    Image.fromarray(arr).save(tmp_path / "nan.tif")
    out = np.asarray(load_image(str(tmp_path / "nan.tif")))[:, :, 0]
    assert out[0, :5].tolist() == [0] * 5 and out.max() == 255
    Image.fromarray(np.full((8, 8), 300, np.int32)).save(tmp_path / "flat.tif")
    assert np.asarray(load_image(str(tmp_path / "flat.tif"))).max() == 255  # one value, clipped, not an error


def test_size_limits_are_checked_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our limits do not depend on Pillow's
    bomb = make_png_bomb(tmp_path)
    with pytest.raises(InputError, match=r"too large \(30000x30000 = 900,000,000 pixels"):
        load_image(str(bomb))
    path = tmp_path / "banner.png"
    Image.new("L", (3000, 20), 255).save(path)  # rapidocr fails on such strips (ResizeImgError)
    with pytest.raises(InputError, match=r"too elongated to be a picture \(3000x20"):
        load_image(str(path))
    Image.new("L", (2000, 20), 255).save(path)  # 100:1 is still a picture
    assert load_image(str(path)).size == (2000, 20)


# ---- the command line ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with FakeOpenAI(reply="1") as fake:
        yield fake


@pytest.fixture(scope="module")
def cands_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "cands.json"
    path.write_text(json.dumps(CANDS))
    return str(path)


def cli_args(server, cands_file: str, image: str, *extra: str) -> list[str]:
    return ["link", "--mention", "Jordan", "--context", INPUT["context"], "--candidates", cands_file,
            "--image", image, "--model", "openai:tiny-test-model", "--set", f"openai_base_url={server.base_url}",
            "--set", "embedding_model=openai:tiny-embed", "--set", "linker_mode=llm",
            "--set", "reflection_threshold=0", "--compact", *extra]


@pytest.mark.parametrize("case", list(BAD))
def test_cli_links_on_text_exit_0_and_warns_on_stderr(case, bad_files, server, cands_file, capsys):
    path = str(bad_files[case])
    code = main(cli_args(server, cands_file, path))
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["entity"] == {"qid": "Q41421", "name": "Michael Jordan"} and result["status"] == "text_only"
    assert len(result["warnings"]) == 1 and path in result["warnings"][0] and BAD[case][1] in result["warnings"][0]
    assert out.err.strip() == f"i2cr: warning: {result['warnings'][0]}"


@pytest.mark.parametrize("case", list(BAD))
def test_cli_strict_image_exit_2_one_line(case, bad_files, server, cands_file, capsys):
    path = str(bad_files[case])
    code = main(cli_args(server, cands_file, path, "--strict-image"))
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("i2cr: error: image: ") and path in lines[0]


def test_cli_script_on_a_png_bomb(bad_files, server, cands_file):
    """The real ``python -m graph.cli``: no traceback, exit 0 with a warning; exit 2 with --strict-image."""
    bomb = str(bad_files["png_bomb_30000x30000"])
    proc = subprocess.run([sys.executable, "-m", "graph.cli", *cli_args(server, cands_file, bomb)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "DecompressionBomb" not in proc.stderr
    assert f"i2cr: warning: image: too large (900,000,000 pixels; the limit is 80,000,000): {bomb}" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["entity"]["qid"] == "Q41421" and bomb in result["warnings"][0]
    proc = subprocess.run([sys.executable, "-m", "graph.cli", *cli_args(server, cands_file, bomb, "--strict-image")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"i2cr: error: image: too large (900,000,000 pixels; the limit is 80,000,000): {bomb} (strict_image is on)"]



def test_a_dataset_record_whose_image_file_is_missing_is_linked_on_its_text(tmp_path):
    """A JSONL record naming an image that is not there: the eval record has a prediction and the reason."""
    from evals.datasets import load_dataset
    from evals.runner import evaluate_one

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**INPUT, "id": "m1", "image": "gone.jpg", "gold": "Michael Jordan"}) + "\n")
    (ex,) = load_dataset(path).examples
    ctx = Context(linker_mode="llm", linker_model=scripted("1"), embedding_model=BagOfWordsEmbeddings(),
                  verifier=TableScorer({}), reflection_threshold=0.0)
    rec = evaluate_one(graph, ex, ctx, lambda inputs: {})
    assert "error" not in rec and rec["correct"] is True and rec["status"] == "text_only"
    assert len(rec["warnings"]) == 1 and "gone.jpg" in rec["warnings"][0] and "not found" in rec["warnings"][0]
