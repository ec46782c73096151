"""A LangChain chat model over a local GGUF file run by llama.cpp (``llama-cpp-python``).

One ``llama_cpp.Llama`` is loaded per GGUF file and shared by every chat model
on it (different temperatures or answer lengths do not load the weights
twice). A lock per ``Llama`` serialises calls from concurrent graph threads:
llama.cpp keeps one KV cache, and it reuses the longest common token prefix
of the previous prompt, so consecutive re-asks with the same long prompt only
evaluate their new tail.

Every ``Llama`` is made here (``shared_llama``), whatever spec loaded it, so two
safeguards apply to every llama.cpp load:

* **extra buffer types** (llama.cpp's weight repacking: ``CPU_REPACK``, and
  ``AMX`` on Sapphire-Rapids-class Intel CPUs) are turned off on CPUs with AMX,
  where llama.cpp's AMX matrix multiply crashes in ``decode``
  (ggml-org/llama.cpp#20824). ``$I2CR_LLAMA_EXTRA_BUFTS`` = ``auto`` (default:
  off on AMX, on elsewhere), ``on`` or ``off``. llama-cpp-python has no keyword
  for llama.cpp's ``use_extra_bufts``; ``_llama_class`` sets it on the model
  parameters before the weights load, and the load checks that it stuck.
* **a one-time probe**: before a GGUF is first used on a machine, a child
  process loads it and evaluates a few tokens with the same settings. A native
  crash there (SIGSEGV, SIGILL, abort) becomes a one-line ``ModelError`` naming
  the model, the file and the CPU instead of killing the caller. Success is
  recorded in the cache folder per (file, size, mtime, llama_cpp version, CPU
  flags, extra-buffer setting), so later runs skip it. ``$I2CR_LLAMA_PROBE=off``
  skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from tools.errors import ConfigError, ModelError

N_CTX = 8192  # the linker prompt with 10 described candidates and 4 clues is ~1-2k tokens
SEED = 0


def default_threads() -> int:
    """``$I2CR_LLAMA_THREADS`` if set (a busy shared machine can do better with fewer), else all cores."""
    raw = os.environ.get("I2CR_LLAMA_THREADS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"I2CR_LLAMA_THREADS={raw!r}: expected a positive integer")
        return int(raw)
    return os.cpu_count() or 1


class _SharedLlama:
    """A loaded ``Llama`` and the lock that serialises its use."""

    def __init__(self, llama: Any):
        self.llama = llama
        self.lock = threading.Lock()
        self._formatter: Any = None

    def formatter(self, model_name: str) -> Any:
        """The GGUF's own chat template as a prompt formatter (built once)."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llama = self.llama
            template = llama.metadata.get("tokenizer.chat_template")
            if not template:
                raise ModelError(f"linker_model '{model_name}': the GGUF has no chat template")
            eos, bos = llama.token_eos(), llama.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template, eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "")
        return self._formatter


# ---- the CPU and llama.cpp's extra buffer types ---------------------------------------------
EXTRA_BUFTS_ENV = "I2CR_LLAMA_EXTRA_BUFTS"
EXTRA_BUFTS_CHOICES = ("auto", "on", "off")
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
    """``$I2CR_LLAMA_EXTRA_BUFTS`` checked: ``auto`` (default), ``on`` or ``off``."""
    raw = os.environ.get(EXTRA_BUFTS_ENV, "").strip().lower() or "auto"
    if raw not in EXTRA_BUFTS_CHOICES:
        raise ConfigError(f"{EXTRA_BUFTS_ENV}={os.environ[EXTRA_BUFTS_ENV]!r}: expected one of "
                          f"{', '.join(EXTRA_BUFTS_CHOICES)}")
    return raw


def use_extra_bufts() -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types: off on AMX CPUs unless forced on."""
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

    return _Llama


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
# ~40 tokens: evaluated as one batch (matrix-matrix kernels, where the repacked/AMX weights run), then one token
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
    from tools.embedded_llm import cache_dir

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
    root = str(Path(__file__).resolve().parents[1])
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from tools.llama_cpp_chat import _probe_child; _probe_child(sys.argv[2:])")
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


# ---- the loaded models -----------------------------------------------------------------------
MAX_LOADED = 4
_LOADED: "OrderedDict[tuple, _SharedLlama]" = OrderedDict()
_LOAD_LOCK = threading.Lock()


def shared_llama(path: str, *, n_ctx: int, n_threads: int, extra_bufts: bool, model_name: str) -> _SharedLlama:
    """The loaded ``Llama`` of ``path`` (probed first, loaded once); any failure is a ``ModelError`` naming it."""
    key = (str(path), n_ctx, n_threads, extra_bufts)
    with _LOAD_LOCK:
        shared = _LOADED.get(key)
        if shared is not None:
            _LOADED.move_to_end(key)
            return shared
        try:
            ensure_llama_cpp_runs(path, model_name=model_name, extra_bufts=extra_bufts, n_threads=n_threads)
            llama = new_llama(path, n_ctx=n_ctx, n_threads=n_threads, extra_bufts=extra_bufts)
        except (ModelError, ConfigError):
            raise
        except Exception as exc:
            raise ModelError(f"linker_model '{model_name}': llama.cpp could not load {path}: "
                             f"{type(exc).__name__}: {exc}") from exc
        shared = _LOADED[key] = _SharedLlama(llama)
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)
        return shared


def _eval_prompt(llama: Any, tokens: list[int]) -> None:
    """Evaluate ``tokens``, reusing the KV cache of the longest prefix shared with the previous prompt.

    At least the last token is evaluated again, so the context's logits are the prompt's.
    """
    common = 0
    for a, b in zip(llama._input_ids.tolist(), tokens):
        if a != b:
            break
        common += 1
    keep = min(common, len(tokens) - 1)
    if keep <= 0:
        llama.reset()
    else:
        llama.n_tokens = keep  # eval() drops the KV cache beyond this point
    llama.eval(tokens[keep:])


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    raise ValueError(f"unsupported message type {type(message).__name__} (use system, human or AI messages)")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


class LlamaCppChatModel(BaseChatModel):
    """Chat completions from a GGUF file with llama.cpp's own chat template (from the file)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    model_name: str = "embedded"
    temperature: float = 0.0
    max_tokens: int = 16
    seed: int = SEED
    n_ctx: int = N_CTX
    n_threads: int = Field(default_factory=lambda: default_threads())
    extra_bufts: bool = Field(default_factory=lambda: use_extra_bufts())  # see the module docstring

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_path": self.model_path, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.seed, "n_ctx": self.n_ctx,
                "extra_bufts": self.extra_bufts}

    def _shared(self) -> _SharedLlama:
        return shared_llama(self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                            extra_bufts=self.extra_bufts, model_name=self.model_name)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        chat = [{"role": _role(m), "content": _text(m.content)} for m in messages]
        temperature = float(kwargs.get("temperature", self.temperature))
        params: dict[str, Any] = dict(messages=chat, max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
                                      temperature=temperature, seed=self.seed, stop=stop or [])
        if temperature == 0:  # llama.cpp samples greedily at temperature 0; pin the rest too
            params.update(top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        shared = self._shared()
        with shared.lock:
            out = shared.llama.create_chat_completion(**params)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        n_in, n_out = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        message = AIMessage(
            content=choice["message"].get("content") or "",
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
            response_metadata={"model_name": self.model_name, "finish_reason": choice.get("finish_reason")},
        )
        return ChatResult(generations=[ChatGeneration(message=message)],
                          llm_output={"model_name": self.model_name, "token_usage": usage})

    def _prompt_tokens(self, shared: _SharedLlama, messages: list[BaseMessage]) -> list[int]:
        """The chat prompt (the GGUF's template, generation prompt included) as tokens."""
        chat = [{"role": _role(m), "content": _text(m.content)} for m in messages]
        prompt = shared.formatter(self.model_name)(messages=chat).prompt
        return shared.llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def label_logprobs(self, messages: list[BaseMessage], labels: list[str]) -> tuple[dict[str, float], int]:
        """Log-probabilities of each of ``labels`` as the first answer token, from one forward pass.

        The chat template of the GGUF renders the prompt (generation prompt
        included); the tokens it shares with the previous call stay in the KV
        cache, so only the new tail is evaluated. Returns the log-softmax over
        the labels' first tokens and the number of prompt tokens.
        """
        import numpy as np

        shared = self._shared()
        llama = shared.llama
        tokens = self._prompt_tokens(shared, messages)
        label_ids = []
        for label in labels:
            ids = llama.tokenize(label.encode("utf-8"), add_bos=False, special=False)
            label_ids.append(ids[0])
        with shared.lock:
            _eval_prompt(llama, tokens)
            logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
        chosen = logits[label_ids]
        chosen = chosen - chosen.max()
        logp = chosen - np.log(np.exp(chosen).sum())
        return dict(zip(labels, logp.tolist())), len(tokens)

    def continuation_logprobs(self, messages: list[BaseMessage], continuations: list[str]) -> tuple[list[list[float]], int]:
        """Per-token log-probabilities of each continuation as the start of the model's answer.

        The prompt (chat template, generation prompt included) is evaluated
        once, its shared prefix with the previous call reused from the KV
        cache; each continuation is then evaluated after it in one batch, and
        the cache is cut back to the prompt before the next. Returns one list
        of token log-probabilities per continuation and the number of tokens
        evaluated (prompt plus continuations).
        """
        import numpy as np

        shared = self._shared()
        llama = shared.llama
        tokens = self._prompt_tokens(shared, messages)
        conts = [llama.tokenize(c.encode("utf-8"), add_bos=False, special=False) or [llama.token_eos()]
                 for c in continuations]
        n_vocab = llama.n_vocab()
        if len(tokens) + max(len(c) for c in conts) > llama.n_ctx():
            raise ModelError(f"linker_model '{self.model_name}': prompt of {len(tokens)} tokens does not fit "
                             f"n_ctx={llama.n_ctx()}")

        def log_softmax(rows: Any) -> Any:
            rows = rows - rows.max(axis=-1, keepdims=True)
            return rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))

        out: list[list[float]] = []
        with shared.lock:
            _eval_prompt(llama, tokens)
            first = log_softmax(np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64))
            n_prompt = llama.n_tokens
            for cont in conts:
                lp = [float(first[cont[0]])]
                if len(cont) > 1:
                    llama._ctx.kv_cache_seq_rm(-1, n_prompt, -1)
                    llama._batch.set_batch(batch=cont[:-1], n_past=n_prompt, logits_all=True)
                    llama._ctx.decode(llama._batch)
                    rows = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(len(cont) - 1, n_vocab))
                    rows = log_softmax(rows.astype(np.float64))
                    lp += [float(rows[i, cont[i + 1]]) for i in range(len(cont) - 1)]
                out.append(lp)
            llama._ctx.kv_cache_seq_rm(-1, n_prompt, -1)  # the cache holds the prompt only, as n_tokens says
        return out, len(tokens) + sum(len(c) for c in conts)


def load_llama_cpp_chat_model(path: str | Path, *, model_name: str, temperature: float,
                              max_tokens: int, n_ctx: int = N_CTX) -> LlamaCppChatModel:
    """A ``LlamaCppChatModel`` on ``path``, probed and its weights loaded now (errors name ``model_name``).

    ``$I2CR_LLAMA_EXTRA_BUFTS`` and ``$I2CR_LLAMA_THREADS`` are read here; a bad
    value is a ``ConfigError``.
    """
    model = LlamaCppChatModel(model_path=str(path), model_name=model_name, temperature=temperature,
                              max_tokens=max_tokens, n_ctx=n_ctx)
    model._shared()
    return model
