"""What the eval scripts share: where the data is, the labels beside a dataset, the settings' defaults,
and the error wrapper of a script's ``main``.

Data: ``--data`` (each script's flag), else ``$I2CR_DATA_DIR``, else the documented
``../shared/data`` beside the repository (``<data dir>/wikimel/WikiMEL_dev.json``...).
Labels: ``--labels``, else the ``<dataset>_label.json`` beside the dataset when there is one
(the I2CR layout: ``WikiMEL_dev.json`` and ``WikiMEL_dev_label.json``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.errors import I2CRError

DATA_ENV = "I2CR_DATA_DIR"
REPO = Path(__file__).resolve().parent.parent


def data_dir(override: str | Path | None = None) -> Path:
    """The shared data folder: ``override``, else ``$I2CR_DATA_DIR``, else ``../shared/data`` beside the repository."""
    if override:
        return Path(override)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data"


def wikimel_dev() -> Path:
    """The default dataset of the scripts: WikiMEL's dev split in the shared data folder."""
    return data_dir() / "wikimel" / "WikiMEL_dev.json"


def default_labels(data: str | Path) -> str | None:
    """The gold labels that go with ``data``: ``<stem>_label.json`` beside it, when it exists."""
    path = Path(data)
    labels = path.with_name(f"{path.stem}_label.json")
    return str(labels) if labels.is_file() else None


def defaults() -> Any:
    """``Context()`` of the environment: where a script's defaults come from (never a second copy of them)."""
    from graph.context import Context

    return Context()


def run_main(prog: str, main: Callable[..., Any], *args: Any) -> int:
    """Run a script's ``main``; an ``I2CRError`` (bad data, labels, settings, model) prints
    ``<prog>: error: <one line>`` and returns 2, Ctrl-C returns 130; else ``main``'s code (``None`` = 0)."""
    try:
        code = main(*args)
    except I2CRError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
