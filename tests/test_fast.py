"""Fast on each machine (issue #16, section 2): batched work inside a batch actor gives the same answers.

- several candidate names scored in ONE llama.cpp batch (one sequence each, sharing the prompt's KV
  cells) == one decode per name, on tiny random GGUFs (F32 and Q4_0) built in the test;
- the embedder's batched embedding == per-text embedding; its persistent entity-vector cache survives
  the process and returns the same vectors;
- ``Linker.link_many`` with the batch path gives the same predictions as ``graph.invoke`` per mention.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

sys.path.insert(0, str(Path(__file__).parent))
from tools import embedded_llm  # noqa: E402

from providers_helpers import write_tiny_gguf, write_tiny_quantized_gguf  # noqa: E402

MESSAGES = [SystemMessage("Answer with the name of the entity."), HumanMessage("the river in paris is the")]
NAMES = ["the river", "a", "paris is the king", "Seine", "Michael Jordan (basketball)", "the river of kings",
         "x", "Paris Saint-Germain", "Jordan", "Q"]


@pytest.fixture
def isolated_llama(tmp_path, monkeypatch):
    from tools import llama_cpp_chat
    from tools import llama_cpp_runtime as lc

    monkeypatch.setenv("I2CR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(llama_cpp_chat, "_LOADED", type(llama_cpp_chat._LOADED)())
    monkeypatch.setattr(lc, "_PROBED", set())
    return tmp_path


@pytest.mark.parametrize("kind", ["f32", "q4_0"])
def test_names_scored_in_one_batch_equal_one_decode_per_name(isolated_llama, kind):
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    path = isolated_llama / f"tiny-{kind}.gguf"
    gguf = write_tiny_gguf(path) if kind == "f32" else write_tiny_quantized_gguf(path)
    model = load_llama_cpp_chat_model(gguf, model_name=f"embedded:tiny-{kind}", temperature=0.0, max_tokens=4,
                                      n_ctx=256)
    llama = model._shared().llama
    assert llama.context_params.n_seq_max >= 2 and llama.context_params.kv_unified
    seq, n_seq = model.continuation_logprobs_sequential(MESSAGES, NAMES)
    multi, n_multi = model.continuation_logprobs(MESSAGES, NAMES)
    assert n_multi == n_seq
    assert [len(s) for s in multi] == [len(s) for s in seq]
    diff = np.abs(np.concatenate(multi) - np.concatenate(seq))
    assert diff.max() <= 1e-3, diff.max()
    n_prompt = len(model._prompt_tokens(model._shared(), MESSAGES))
    assert llama.n_tokens == n_prompt  # the cache holds the prompt only, as before
    # the other sequences are gone: scoring again (prompt from the cache) gives the same numbers
    again, _ = model.continuation_logprobs(MESSAGES, NAMES)
    assert np.abs(np.concatenate(again) - np.concatenate(multi)).max() <= 1e-4
    # a longer prompt sharing the prefix, then generation, still work on sequence 0
    longer = [MESSAGES[0], HumanMessage("the river in paris is the one that")]
    a, _ = model.continuation_logprobs(longer, NAMES[:3])
    b, _ = model.continuation_logprobs_sequential(longer, NAMES[:3])
    assert np.abs(np.concatenate(a) - np.concatenate(b)).max() <= 1e-3
    assert isinstance(model.invoke(MESSAGES).content, str)


def test_more_names_than_sequences_are_scored_in_groups(isolated_llama, monkeypatch):
    if not embedded_llm.llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from tools.llama_cpp_chat import load_llama_cpp_chat_model

    gguf = write_tiny_gguf(isolated_llama / "tiny.gguf")
    model = load_llama_cpp_chat_model(gguf, model_name="embedded:tiny", temperature=0.0, max_tokens=4, n_ctx=256)
    llama = model._shared().llama
    monkeypatch.setattr(llama.context_params, "n_seq_max", 4)  # 3 names per decode
    seq, _ = model.continuation_logprobs_sequential(MESSAGES, NAMES)
    multi, _ = model.continuation_logprobs(MESSAGES, NAMES)
    assert np.abs(np.concatenate(multi) - np.concatenate(seq)).max() <= 1e-3
