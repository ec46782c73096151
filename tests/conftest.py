"""Shared test setup: offline hub, the tests folder importable (for ``fakes``), the ``no_model_loads`` fixture."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the busy-machine note of `i2cr eval` (evals/machine.py) would add a stderr line whenever something else runs
# beside the tests (a CI machine is shared): off here, and on in the tests of the note itself
os.environ.setdefault("I2CR_BUSY_CHECK", "0")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any chat model or embedder is loaded."""
    from tools import embeddings, models

    def refuse(*a, **k):
        raise AssertionError(f"a model was loaded: {a}")

    monkeypatch.setattr(models, "_load", refuse)
    monkeypatch.setattr(embeddings, "_load", refuse)
