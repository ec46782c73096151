"""A LangChain chat model over a local GGUF file run by llama.cpp (``llama-cpp-python``).

One ``llama_cpp.Llama`` is loaded per GGUF file and shared by every chat model
on it (different temperatures or answer lengths do not load the weights
twice). A lock per ``Llama`` serialises calls from concurrent graph threads:
llama.cpp keeps one KV cache, and it reuses the longest common token prefix
of the previous prompt, so consecutive re-asks with the same long prompt only
evaluate their new tail.

Every ``Llama`` is made here (``shared_llama``), whatever spec loaded it, so two
safeguards apply to every llama.cpp load:

* llama.cpp's **extra buffer types** (weight repacking) are off on CPUs with
  AMX, where llama.cpp's AMX kernels crash (``$I2CR_LLAMA_EXTRA_BUFTS``);
* a **one-time probe** in a child process turns a native crash into a
  ``ModelError`` naming the model, the file and the CPU.

Both live in ``tools/llama_cpp_runtime.py``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from tools.errors import ConfigError, ModelError
from tools.llama_cpp_runtime import SEED, ensure_llama_cpp_runs, new_llama, use_extra_bufts

N_CTX = 8192  # the linker prompt with 10 described candidates and 4 clues is ~1-2k tokens


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


# ---- the loaded models -----------------------------------------------------------------------
MAX_LOADED = 4
_LOADED: OrderedDict[tuple, _SharedLlama] = OrderedDict()
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


def _log_softmax(rows: Any) -> Any:
    """Row-wise log-softmax of a numpy array of logits."""
    import numpy as np

    rows = rows - rows.max(axis=-1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))


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

    def _prompt_and_continuations(self, shared: _SharedLlama, messages: list[BaseMessage],
                                  continuations: list[str]) -> tuple[list[int], list[list[int]]]:
        """The prompt's tokens and each continuation's (an empty one scores the end token); ``ModelError``
        when the prompt and the longest continuation do not fit the context window."""
        llama = shared.llama
        tokens = self._prompt_tokens(shared, messages)
        conts = [llama.tokenize(c.encode("utf-8"), add_bos=False, special=False) or [llama.token_eos()]
                 for c in continuations]
        if len(tokens) + max(len(c) for c in conts) > llama.n_ctx():
            raise ModelError(f"linker_model '{self.model_name}': prompt of {len(tokens)} tokens does not fit "
                             f"n_ctx={llama.n_ctx()}")
        return tokens, conts

    def continuation_logprobs(self, messages: list[BaseMessage], continuations: list[str]) -> tuple[list[list[float]], int]:
        """Per-token log-probabilities of each continuation as the start of the model's answer.

        The prompt (chat template, generation prompt included) is evaluated
        once in sequence 0, its shared prefix with the previous call reused
        from the KV cache. The continuations are then evaluated together in
        ONE llama.cpp batch: continuation ``j`` is sequence ``j+1``, which
        shares the prompt's cache cells (``llama_memory_seq_cp`` from seq 0,
        no copy of the data), so one forward pass of all their tokens replaces
        one decode per continuation. The other sequences are dropped after, so
        the cache holds the prompt only. Same scores as
        :meth:`continuation_logprobs_sequential` up to float rounding
        (tests/test_fast.py). Returns one list of token log-probabilities per
        continuation and the number of tokens evaluated.
        """
        import llama_cpp
        import numpy as np

        shared = self._shared()
        llama = shared.llama
        n_seq = int(llama.context_params.n_seq_max)
        if n_seq < 2 or not llama.context_params.kv_unified:
            return self.continuation_logprobs_sequential(messages, continuations)
        tokens, conts = self._prompt_and_continuations(shared, messages, continuations)
        n_vocab = llama.n_vocab()

        out: list[list[float]] = [[] for _ in conts]
        with shared.lock:
            _eval_prompt(llama, tokens)
            first = _log_softmax(np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64))
            n_prompt = llama.n_tokens
            mem = llama._ctx.memory
            for j, cont in enumerate(conts):
                out[j].append(float(first[cont[0]]))
            todo = [j for j, c in enumerate(conts) if len(c) > 1]
            # groups: at most n_seq - 1 sequences and n_batch tokens per decode
            groups: list[list[int]] = [[]]
            for j in todo:
                size = sum(len(conts[k]) - 1 for k in groups[-1])
                if groups[-1] and (len(groups[-1]) >= n_seq - 1 or size + len(conts[j]) - 1 > llama.n_batch):
                    groups.append([])
                groups[-1].append(j)
            llama_cpp.llama_memory_seq_rm(mem, 0, n_prompt, -1)
            for group in groups:
                if not group:
                    continue
                n_tok = sum(len(conts[j]) - 1 for j in group)
                batch = llama_cpp.llama_batch_init(n_tok, 0, 1)
                try:
                    rows_of: list[tuple[int, int]] = []  # (continuation, batch row of its first evaluated token)
                    k = 0
                    for s_id, j in enumerate(group, start=1):
                        llama_cpp.llama_memory_seq_rm(mem, s_id, -1, -1)
                        llama_cpp.llama_memory_seq_cp(mem, 0, s_id, 0, n_prompt)
                        rows_of.append((j, k))
                        for i, tok in enumerate(conts[j][:-1]):
                            batch.token[k] = tok
                            batch.pos[k] = n_prompt + i
                            batch.n_seq_id[k] = 1
                            batch.seq_id[k][0] = s_id
                            batch.logits[k] = True
                            k += 1
                    batch.n_tokens = k
                    rc = llama_cpp.llama_decode(llama._ctx.ctx, batch)
                    if rc != 0:
                        raise ModelError(f"linker_model '{self.model_name}': llama_decode returned {rc} "
                                         f"scoring {len(group)} names in one batch")
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llama._ctx.ctx), shape=(k, n_vocab))
                    for j, row0 in rows_of:
                        cont = conts[j]
                        rows = _log_softmax(logits[row0:row0 + len(cont) - 1].astype(np.float64))
                        out[j] += [float(rows[i, cont[i + 1]]) for i in range(len(cont) - 1)]
                finally:
                    llama_cpp.llama_batch_free(batch)
                    for s_id in range(1, len(group) + 1):
                        llama_cpp.llama_memory_seq_rm(mem, s_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, 0, n_prompt, -1)  # the cache holds the prompt only
        return out, len(tokens) + sum(len(c) for c in conts)

    def continuation_logprobs_sequential(self, messages: list[BaseMessage],
                                         continuations: list[str]) -> tuple[list[list[float]], int]:
        """Per-token log-probabilities of each continuation, one continuation decoded after another.

        The reference for :meth:`continuation_logprobs` (and its path when the context has one sequence).

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
        tokens, conts = self._prompt_and_continuations(shared, messages, continuations)
        n_vocab = llama.n_vocab()

        out: list[list[float]] = []
        with shared.lock:
            _eval_prompt(llama, tokens)
            first = _log_softmax(np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64))
            n_prompt = llama.n_tokens
            for cont in conts:
                lp = [float(first[cont[0]])]
                if len(cont) > 1:
                    llama._ctx.kv_cache_seq_rm(-1, n_prompt, -1)
                    llama._batch.set_batch(batch=cont[:-1], n_past=n_prompt, logits_all=True)
                    llama._ctx.decode(llama._batch)
                    rows = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(len(cont) - 1, n_vocab))
                    rows = _log_softmax(rows.astype(np.float64))
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
