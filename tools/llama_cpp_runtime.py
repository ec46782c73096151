"""llama.cpp on this CPU: the extra-buffer-type setting and the one-time probe in a child process.

Kept apart from ``tools/llama_cpp_chat.py`` so that the probe's child imports
only ``llama_cpp`` (no LangChain: 1-6 s less per probe on a busy 2-core machine).

* **Extra buffer types** are llama.cpp's repacked copies of the weights
  (``CPU_REPACK``; ``AMX`` on Sapphire-Rapids-class Intel CPUs). llama.cpp's
  AMX matrix multiply segfaults in ``decode`` (ggml-org/llama.cpp#20824), and
  on the AVX-512 EPYC measured (docs/embedded-llm.md) the plain weights were
  faster than the repacked ones and used ~600 MB less memory, so they are off
  by default on every CPU. ``$I2CR_LLAMA_EXTRA_BUFTS``: ``off`` (default),
  ``auto`` (off on a CPU whose flags include ``amx_tile``/``amx_int8``/
  ``amx_bf16``, on elsewhere) or ``on``. llama-cpp-python 0.3.x has no keyword
  for llama.cpp's ``use_extra_bufts`` model parameter; ``_llama_class`` sets it
  on the parameters before the weights load and ``new_llama`` checks it stuck.
* **The probe**: before a GGUF is first used with a setting on a CPU, a child
  process loads it and evaluates 30 tokens as a batch and one more token. A
  child killed by a signal (SIGSEGV, SIGILL, SIGABRT...) becomes a one-line
  ``ModelError`` naming the model, the file and the CPU, instead of a core dump
  of the caller. A success is recorded in ``<cache>/models/llama_cpp_probe/``
  per (file, size, mtime, llama_cpp version, CPU model and flags, setting), so
  later runs skip it. ``$I2CR_LLAMA_PROBE=off`` skips it altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from tools.errors import ConfigError, ModelError

SEED = 0


# ---- the CPU and llama.cpp's extra buffer types ---------------------------------------------
EXTRA_BUFTS_ENV = "I2CR_LLAMA_EXTRA_BUFTS"
EXTRA_BUFTS_CHOICES = ("off", "auto", "on")
EXTRA_BUFTS_DEFAULT = "off"  # measured: no loss (a gain) on AVX-512 without AMX; AMX crashes with them
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


@lru_cache(maxsize=4)
def _read_cpuinfo(path: str) -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:  # not Linux: no /proc/cpuinfo
        pass
    return model, flags


def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags from ``CPUINFO`` (``/proc/cpuinfo``); empty where unreadable."""
    return _read_cpuinfo(CPUINFO)


def cpu_has_amx(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU advertises Intel AMX (``amx_tile``/``amx_int8``/``amx_bf16``)."""
    flags = cpu_model_and_flags()[1] if flags is None else flags
    return any(f in flags for f in AMX_FLAGS)


def extra_bufts_setting() -> str:
    """``$I2CR_LLAMA_EXTRA_BUFTS`` checked: ``off`` (default), ``auto`` or ``on``."""
    raw = os.environ.get(EXTRA_BUFTS_ENV, "").strip().lower() or EXTRA_BUFTS_DEFAULT
    if raw not in EXTRA_BUFTS_CHOICES:
        raise ConfigError(f"{EXTRA_BUFTS_ENV}={os.environ[EXTRA_BUFTS_ENV]!r}: expected one of "
                          f"{', '.join(EXTRA_BUFTS_CHOICES)}")
    return raw


def use_extra_bufts() -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types: only when ``on``, or ``auto`` without AMX."""
    setting = extra_bufts_setting()
    if setting != "auto":
        return setting == "on"
    return not cpu_has_amx()


def cpu_summary() -> str:
    """``AMD EPYC; AVX-512: yes; AMX: no`` -- what the error messages and the benchmark print."""
    model, flags = cpu_model_and_flags()
    avx512 = "yes" if "avx512f" in flags else "no"
    return f"{model or 'unknown CPU'}; AVX-512: {avx512}; AMX: {'yes' if cpu_has_amx(flags) else 'no'}"


@lru_cache(maxsize=1)
def _llama_class() -> type:
    """``llama_cpp.Llama`` taking ``extra_bufts=``: llama.cpp's ``use_extra_bufts`` model parameter.

    llama-cpp-python 0.3.x has no keyword for it. Its ``__init__`` assigns
    ``self.model_params = llama_model_default_params()``, fills it in and only
    then loads the weights from it; the property below sets the flag on that
    struct as it is assigned. A later version that takes the keyword gets it
    directly.
    """
    import inspect

    from llama_cpp import Llama

    takes_keyword = "use_extra_bufts" in inspect.signature(Llama.__init__).parameters

    class _Llama(Llama):
        def __init__(self, *args: Any, extra_bufts: bool, **kwargs: Any):
            self._i2cr_extra_bufts = bool(extra_bufts)
            if takes_keyword:
                kwargs["use_extra_bufts"] = bool(extra_bufts)
            super().__init__(*args, **kwargs)

        @property
        def model_params(self) -> Any:
            return self.__dict__["model_params"]

        @model_params.setter
        def model_params(self, params: Any) -> None:
            params.use_extra_bufts = self._i2cr_extra_bufts
            self.__dict__["model_params"] = params

        @property
        def context_params(self) -> Any:
            return self.__dict__["context_params"]

        @context_params.setter
        def context_params(self, params: Any) -> None:
            # several sequences in one KV buffer: the candidate names are scored side by side
            # after one shared prompt (tools/llama_cpp_chat.py, continuation_logprobs)
            params.n_seq_max = max(int(params.n_seq_max), N_SEQ_MAX)
            params.kv_unified = True
            self.__dict__["context_params"] = params

    return _Llama


N_SEQ_MAX = 32
"""Sequences of a llama.cpp context (unified KV cache): seq 0 holds the prompt, the others a continuation each."""


def new_llama(path: str, *, n_ctx: int, n_threads: int, extra_bufts: bool) -> Any:
    """A ``Llama`` on ``path`` with llama.cpp's ``use_extra_bufts`` = ``extra_bufts`` (checked after the load)."""
    llama = _llama_class()(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                           seed=SEED, verbose=False, extra_bufts=extra_bufts)
    got = bool(llama.model_params.use_extra_bufts)
    if got != extra_bufts:  # a llama-cpp-python that no longer builds its parameters the way _llama_class expects
        llama.close()
        raise ModelError(f"llama-cpp-python did not take use_extra_bufts={extra_bufts} (got {got}); "
                         f"set {EXTRA_BUFTS_ENV} to match or pin llama-cpp-python==0.3.36")
    return llama


# ---- the one-time probe in a child process ---------------------------------------------------
PROBE_ENV = "I2CR_LLAMA_PROBE"
PROBE_TIMEOUT_S = 600.0
PROBE_N_CTX = 256
# 30 tokens (Qwen2.5) evaluated as one batch (matrix-matrix kernels, where the repacked/AMX weights run), then one token
PROBE_TEXT = ("The river flows through the old city. The king of the band played a song in Paris and "
              "London; the film won the prize of the year.")
_FAULT_ENV = "I2CR_LLAMA_PROBE_FAULT"  # test hook: the probe child crashes itself (segv) after loading
_PROBED: set[str] = set()


def _probe_enabled() -> bool:
    raw = os.environ.get(PROBE_ENV, "").strip().lower() or "on"
    if raw not in ("on", "off"):
        raise ConfigError(f"{PROBE_ENV}={os.environ[PROBE_ENV]!r}: expected on or off")
    return raw == "on"


def probe_key(path: str | Path, *, extra_bufts: bool) -> tuple[str, dict]:
    """The probe record's name and what it covers: the file (path, size, mtime), llama_cpp, CPU, setting."""
    import llama_cpp

    st = os.stat(path)
    model, flags = cpu_model_and_flags()
    info = {"file": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "llama_cpp": getattr(llama_cpp, "__version__", "?"), "cpu": model,
            "cpu_flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "extra_bufts": extra_bufts}
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:24], info


def _probe_dir() -> Path:
    from tools.cache import cache_dir

    return cache_dir() / "llama_cpp_probe"


def ensure_llama_cpp_runs(path: str | Path, *, model_name: str, extra_bufts: bool, n_threads: int) -> float:
    """Load ``path`` and evaluate a few tokens in a child process once per file/CPU/setting.

    Returns the seconds the probe took (0 when a record of an earlier
    successful probe exists). A child killed by a signal, or failing, is a
    one-line ``ModelError`` naming the model, the file and the CPU.
    """
    if not _probe_enabled():
        return 0.0
    key, info = probe_key(path, extra_bufts=extra_bufts)
    record = _probe_dir() / f"{key}.json"
    if key in _PROBED or record.is_file():
        _PROBED.add(key)
        return 0.0
    root = str(Path(__file__).resolve().parents[1])  # the child runs this very code, installed or not
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from tools.llama_cpp_runtime import _probe_child; _probe_child(sys.argv[2:])")
    argv = [sys.executable, "-c", code, root, str(path), "1" if extra_bufts else "0", str(n_threads)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ModelError(f"linker_model '{model_name}': llama.cpp did not load and evaluate {path} within "
                         f"{PROBE_TIMEOUT_S:.0f} s (a check run once per model; skip it with {PROBE_ENV}=off)") from None
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise ModelError(_probe_failure(proc, path=path, model_name=model_name, extra_bufts=extra_bufts))
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(record.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**info, "seconds": round(seconds, 2), "n_threads": n_threads}) + "\n")
    os.replace(tmp, record)
    _PROBED.add(key)
    return seconds


def _probe_failure(proc: subprocess.CompletedProcess, *, path: str | Path, model_name: str, extra_bufts: bool) -> str:
    """The one-line message of a failed probe child."""
    where = f"on this CPU ({cpu_summary()}; llama.cpp extra buffer types {'on' if extra_bufts else 'off'})"
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        hint = (f"try {EXTRA_BUFTS_ENV}=off, I2CR_NO_LLAMA_CPP=1 (transformers, slower) or another linker_model"
                if extra_bufts else "try I2CR_NO_LLAMA_CPP=1 (transformers, slower) or another linker_model")
        return f"linker_model '{model_name}': llama.cpp crashed ({name}) evaluating {path} {where}; {hint}"
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    said = next((ln[len("i2cr-probe: "):] for ln in reversed(lines) if ln.startswith("i2cr-probe: ")), None)
    if said is None:
        said = lines[-1] if lines else f"exit status {proc.returncode}"
    return f"linker_model '{model_name}': llama.cpp could not load {path}: {said}"


def _probe_child(args: list[str]) -> None:
    """The probe's child process: load, evaluate ``PROBE_TEXT`` as a batch, then one more token."""
    import faulthandler

    faulthandler.enable()  # a crash leaves a Python traceback in the captured stderr
    path, extra, n_threads = args[0], args[1] == "1", int(args[2])
    try:
        llama = new_llama(path, n_ctx=PROBE_N_CTX, n_threads=n_threads, extra_bufts=extra)
    except Exception as exc:
        print(f"i2cr-probe: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    if os.environ.get(_FAULT_ENV) == "segv":
        import ctypes

        ctypes.string_at(0)  # a real segmentation fault, as a broken kernel would cause
    tokens = llama.tokenize(PROBE_TEXT.encode("utf-8"), add_bos=False)[:64]
    llama.eval(tokens)
    llama.eval(tokens[:1])
    sys.exit(0)
