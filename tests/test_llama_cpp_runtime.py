"""The llama.cpp runtime on every x86-64 CPU (issue #12): the extra-buffer-type setting reaches llama.cpp,
quantized weights run through the real loader, and a native crash is a one-line ModelError, not a core dump.

The CPU is faked with a cpuinfo file written in the test; the GGUF files are tiny random models written
with gguf-py (F32, or Q4_0 quantized by gguf-py's own quantizer)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

sys.path.insert(0, str(Path(__file__).parent))
from tools import embedded_llm  # noqa: E402
from tools.errors import ConfigError, ModelError  # noqa: E402

from providers_helpers import write_tiny_quantized_gguf  # noqa: E402

if not embedded_llm.llama_cpp_available():
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)

import llama_cpp  # noqa: E402

from tools import llama_cpp_chat  # noqa: E402
from tools import llama_cpp_runtime as lc  # noqa: E402
from tools.llama_cpp_chat import LlamaCppChatModel, load_llama_cpp_chat_model  # noqa: E402

MESSAGES = [SystemMessage("Answer with the name of the entity."), HumanMessage("the river in paris is the")]
SPR_FLAGS = "fpu sse sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
ZEN_FLAGS = "fpu sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni"


def fake_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, flags: str) -> None:
    cpuinfo = tmp_path / f"cpuinfo-{name.split()[0]}"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(lc, "CPUINFO", str(cpuinfo))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Own cache folder (probe records), no setting from the environment, nothing loaded before."""
    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    for var in (lc.EXTRA_BUFTS_ENV, lc.PROBE_ENV, lc._FAULT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(llama_cpp_chat, "_LOADED", type(llama_cpp_chat._LOADED)())
    monkeypatch.setattr(lc, "_PROBED", set())
    yield


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_quantized_gguf(tmp_path_factory.mktemp("q4") / "tiny-llama-q4_0.gguf")


class LlamaLog:
    """llama.cpp's own log lines while in the ``with`` block (llama-cpp-python's callback restored after)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self.lines.append(text.decode("utf-8", "replace"))

        self._callback = callback

    def __enter__(self) -> LlamaLog:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def extra_buffers(self) -> set[str]:
        """Weight buffers other than plain CPU memory (``CPU_REPACK``, ``AMX``) llama.cpp reported at load."""
        out = set()
        for line in self.lines:
            if "model buffer size" in line:
                kind = line.split(":", 1)[1].split()[0]
                if kind not in ("CPU", "CPU_Mapped"):
                    out.add(kind)
        return out


# ---- the setting -----------------------------------------------------------------------------

def test_extra_buffer_types_are_off_by_default_and_on_an_amx_cpu_and_the_setting_is_checked(tmp_path, monkeypatch):
    fake_cpu(tmp_path, monkeypatch, "Intel(R) Xeon(R) Platinum 8488C", SPR_FLAGS)
    assert lc.cpu_has_amx() and "AMX: yes" in lc.cpu_summary() and "AVX-512: yes" in lc.cpu_summary()
    assert lc.extra_bufts_setting() == "off" and lc.use_extra_bufts() is False  # the default
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "auto")
    assert lc.use_extra_bufts() is False  # auto: never on a CPU with AMX
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "on")  # the user insists
    assert lc.use_extra_bufts() is True
    fake_cpu(tmp_path, monkeypatch, "AMD EPYC", ZEN_FLAGS)
    assert not lc.cpu_has_amx() and "AMX: no" in lc.cpu_summary()
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, " AUTO ")
    assert lc.use_extra_bufts() is True
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "")
    assert lc.use_extra_bufts() is False
    monkeypatch.setattr(lc, "CPUINFO", str(tmp_path / "absent"))  # not Linux: nothing known, no AMX
    assert not lc.cpu_has_amx() and "unknown CPU" in lc.cpu_summary()
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "maybe")
    with pytest.raises(ConfigError) as err:
        lc.use_extra_bufts()
    assert str(err.value) == "I2CR_LLAMA_EXTRA_BUFTS='maybe': expected one of off, auto, on"
    with pytest.raises(ConfigError, match="I2CR_LLAMA_EXTRA_BUFTS"):  # the loader reads it before any load
        load_llama_cpp_chat_model(tmp_path / "never-read.gguf", model_name="embedded", temperature=0,
                                  max_tokens=4)
    monkeypatch.delenv(lc.EXTRA_BUFTS_ENV)
    monkeypatch.setenv(lc.PROBE_ENV, "sometimes")
    with pytest.raises(ConfigError, match="I2CR_LLAMA_PROBE='sometimes': expected on or off"):
        load_llama_cpp_chat_model(tmp_path / "never-read.gguf", model_name="embedded", temperature=0,
                                  max_tokens=4)


def test_the_loader_passes_the_setting_to_llama_cpp(q4_gguf, tmp_path, monkeypatch):
    """On an AMX CPU the weights are not repacked (by default, and with ``auto``): the model parameters
    llama.cpp loaded with say so, and llama.cpp reports no extra weight buffer. Forced on, the same file
    is repacked (on a CPU and build that can), so the flag is what makes the difference. Through the
    ``embedded`` spec's loader, as a pip-installed user runs it."""
    fake_cpu(tmp_path, monkeypatch, "Intel(R) Xeon(R) Platinum 8488C", SPR_FLAGS)
    monkeypatch.setattr(embedded_llm, "embedded_gguf_path", lambda variant=None: q4_gguf)
    monkeypatch.setenv(lc.PROBE_ENV, "off")  # the probe has its own tests; here only the in-process load
    with LlamaLog() as log:
        model = embedded_llm.load_embedded_chat_model(None, temperature=0.0, max_tokens=4)
    assert isinstance(model, LlamaCppChatModel) and model.extra_bufts is False
    llama = model._shared().llama
    assert llama.model_params.use_extra_bufts is False
    assert any("model buffer size" in line for line in log.lines) and log.extra_buffers() == set()
    model.label_logprobs(MESSAGES, ["A", "B"])  # and it evaluates
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "auto")
    again = embedded_llm.load_embedded_chat_model(None, temperature=0.0, max_tokens=4)
    assert again.extra_bufts is False and again._shared() is model._shared()  # the same load, shared

    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "on")
    with LlamaLog() as log:
        forced = embedded_llm.load_embedded_chat_model(None, temperature=0.0, max_tokens=4)
    assert forced.extra_bufts is True and forced._shared().llama.model_params.use_extra_bufts is True
    assert forced._shared() is not model._shared()  # a different setting is a different load
    system = llama_cpp.llama_print_system_info().decode()
    if "REPACK = 1" in system and ("AVX2 = 1" in system or "AMX_INT8 = 1" in system):
        assert log.extra_buffers() & {"CPU_REPACK", "AMX"}, log.lines


def test_a_llama_cpp_that_ignores_the_setting_is_an_error_not_a_silent_load(q4_gguf, monkeypatch):
    from llama_cpp import Llama

    class Stubborn(Llama):  # a llama-cpp-python whose parameters the property no longer reaches
        def __init__(self, *args, extra_bufts: bool, **kwargs):
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lc, "_llama_class", lambda: Stubborn)
    monkeypatch.setenv(lc.PROBE_ENV, "off")
    with pytest.raises(ModelError, match=r"did not take use_extra_bufts=False \(got True\)"):
        lc.new_llama(str(q4_gguf), n_ctx=128, n_threads=1, extra_bufts=False)


# ---- quantized weights through the real loader ------------------------------------------------

def _left_to_right(llama, prompt_tokens: list[int], answer: str) -> list[float]:
    """Token log-probabilities of ``answer`` after the prompt, evaluated one token at a time from scratch."""
    out = []
    llama.reset()
    llama.eval(prompt_tokens)
    for tok in llama.tokenize(answer.encode(), add_bos=False):
        logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
        out.append(float(logits[tok] - logits.max() - np.log(np.exp(logits - logits.max()).sum())))
        llama.eval([tok])
    return out


def test_quantized_gguf_scores_equal_a_left_to_right_evaluation_with_and_without_extra_buffers(
        q4_gguf, monkeypatch):
    assert q4_gguf.read_bytes()[:4] == b"GGUF"
    from gguf import GGMLQuantizationType, GGUFReader

    kinds = {t.name: t.tensor_type for t in GGUFReader(str(q4_gguf)).tensors}
    assert kinds["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_0
    assert kinds["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32

    answers = ["the river", "a", "paris is the king"]
    by_setting = {}
    for setting in ("off", "on"):
        monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, setting)
        model = load_llama_cpp_chat_model(q4_gguf, model_name="embedded:tiny-q4", temperature=0.0, max_tokens=4,
                                          n_ctx=256)
        assert model.extra_bufts is (setting == "on")
        llama = model._shared().llama
        scores, n = model.continuation_logprobs(MESSAGES, answers)
        ptoks = model._prompt_tokens(model._shared(), MESSAGES)
        assert llama.n_tokens == len(ptoks) and n == len(ptoks) + sum(len(s) for s in scores)
        assert [len(s) for s in scores] == [len(llama.tokenize(a.encode(), add_bos=False)) for a in answers]
        assert all(np.isfinite(s).all() and max(s) < 0 for s in scores)
        for answer, got in zip(answers, scores):
            assert np.allclose(got, _left_to_right(llama, ptoks, answer), atol=2e-3), (setting, answer)
        text = model.invoke(MESSAGES).content  # and it generates
        assert isinstance(text, str)
        by_setting[setting] = scores
    # repacked or not, the same numbers up to rounding (the repacked kernels round the activations
    # differently: up to 0.06 nats seen); a broken kernel is off by whole nats
    diffs = np.abs(np.concatenate(by_setting["off"]) - np.concatenate(by_setting["on"]))
    assert diffs.max() < 0.15 and diffs.mean() < 0.03, diffs


# ---- the probe --------------------------------------------------------------------------------

def test_a_native_crash_in_the_probe_is_a_one_line_model_error(q4_gguf, tmp_path, monkeypatch):
    fake_cpu(tmp_path, monkeypatch, "AMD EPYC 9B45", ZEN_FLAGS)
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "on")
    monkeypatch.setenv(lc._FAULT_ENV, "segv")  # the child loads the model, then segfaults for real
    with pytest.raises(ModelError) as err:
        load_llama_cpp_chat_model(q4_gguf, model_name="embedded", temperature=0, max_tokens=4, n_ctx=128)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"linker_model 'embedded': llama.cpp crashed (SIGSEGV) evaluating {q4_gguf} on this CPU "
                          "(AMD EPYC 9B45; AVX-512: yes; AMX: no; llama.cpp extra buffer types on); "
                          "try I2CR_LLAMA_EXTRA_BUFTS=off"), msg
    records = tmp_path / "cache" / "models" / "llama_cpp_probe"
    assert not records.exists() or not list(records.iterdir())  # a crash is not recorded as a success
    assert not llama_cpp_chat._LOADED  # and nothing was loaded in this process

    monkeypatch.delenv(lc.EXTRA_BUFTS_ENV)  # off, the default: the hint no longer suggests it
    with pytest.raises(ModelError, match=r"crashed \(SIGSEGV\).*extra buffer types off\); try I2CR_NO_LLAMA_CPP=1"):
        load_llama_cpp_chat_model(q4_gguf, model_name="embedded", temperature=0, max_tokens=4, n_ctx=128)


def test_the_probe_runs_once_per_file_and_setting_and_is_recorded(q4_gguf, tmp_path, monkeypatch):
    fake_cpu(tmp_path, monkeypatch, "AMD EPYC", ZEN_FLAGS)
    seconds = lc.ensure_llama_cpp_runs(q4_gguf, model_name="embedded", extra_bufts=True, n_threads=1)
    assert seconds > 0
    records = list((tmp_path / "cache" / "models" / "llama_cpp_probe").glob("*.json"))
    assert len(records) == 1 and '"extra_bufts": true' in records[0].read_text()

    def no_child(*args, **kwargs):
        raise AssertionError("the probe ran again")

    monkeypatch.setattr(lc.subprocess, "run", no_child)
    lc._PROBED.clear()  # as in a new process: the record on disk is enough
    assert lc.ensure_llama_cpp_runs(q4_gguf, model_name="embedded", extra_bufts=True, n_threads=1) == 0.0
    monkeypatch.setenv(lc.EXTRA_BUFTS_ENV, "on")  # the loader finds the record too
    model = load_llama_cpp_chat_model(q4_gguf, model_name="embedded", temperature=0, max_tokens=4, n_ctx=128)
    assert model.extra_bufts is True
    with pytest.raises(AssertionError, match="ran again"):  # another setting, or another CPU, is probed anew
        lc.ensure_llama_cpp_runs(q4_gguf, model_name="embedded", extra_bufts=False, n_threads=1)
    fake_cpu(tmp_path, monkeypatch, "Intel(R) Xeon(R) Platinum 8488C", SPR_FLAGS)
    with pytest.raises(AssertionError, match="ran again"):
        lc.ensure_llama_cpp_runs(q4_gguf, model_name="embedded", extra_bufts=True, n_threads=1)


def test_a_file_llama_cpp_cannot_load_is_a_model_error_naming_model_and_file(tmp_path, monkeypatch):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError) as err:  # found by the probe's child
        load_llama_cpp_chat_model(bad, model_name="embedded:broken", temperature=0, max_tokens=4)
    assert str(err.value).startswith(f"linker_model 'embedded:broken': llama.cpp could not load {bad}: ")
    assert "\n" not in str(err.value)
    monkeypatch.setenv(lc.PROBE_ENV, "off")  # and by the in-process load
    with pytest.raises(ModelError, match=rf"linker_model 'embedded:broken': llama.cpp could not load {bad}: "):
        load_llama_cpp_chat_model(bad, model_name="embedded:broken", temperature=0, max_tokens=4)
