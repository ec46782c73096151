"""Chat models run locally with transformers, behind ``huggingface:<name>`` specs.

``name`` is one of

* a hub id (``Qwen/Qwen2.5-1.5B-Instruct``) or a local model folder;
* a GGUF file: a local path ending in ``.gguf``, or ``<org>/<repo>/<file.gguf>``
  on the hub. transformers dequantizes it to float32 on load (slow for large
  files; llama.cpp via ``embedded`` or an ``openai:`` llama.cpp server is the
  fast way to run GGUF).

The model runs in a ``text-generation`` pipeline wrapped by
``langchain_huggingface`` (``HuggingFacePipeline`` -> ``ChatHuggingFace``);
the tokenizer is passed explicitly so nothing is looked up on the hub for a
local model. Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from tools.errors import ModelError

log = logging.getLogger(__name__)

# used when a tokenizer carries no chat template (base models, some GGUF files)
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
_DEQUANT_MARKER = "i2cr-dequantized.json"


def load_hf_chat_model(name: str, *, setting: str = "linker_model", temperature: float = 0.0,
                       max_tokens: int = 16) -> BaseChatModel:
    """A chat model for ``huggingface:<name>``; any loading failure is a ``ModelError`` naming it."""
    spec = f"huggingface:{name}"
    try:
        model, tokenizer = _shared_model_and_tokenizer(name)
        return chat_model_from(model, tokenizer, model_id=name, temperature=temperature, max_tokens=max_tokens)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{setting} '{spec}' could not be loaded: {type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=2)
def _shared_model_and_tokenizer(name: str) -> tuple[Any, Any]:
    """One copy of the weights per model, whatever temperature / answer length its chat models use."""
    return load_model_and_tokenizer(name)


def resolve_gguf(name: str) -> Path | None:
    """Local path of a GGUF ``name`` (downloading ``<org>/<repo>/<file.gguf>`` from the hub), else None."""
    if not name.lower().endswith(".gguf"):
        return None
    local = Path(name).expanduser()
    if local.is_file():
        return local
    parts = name.split("/")
    if name.startswith((".", "/", "~")) or len(parts) < 3:
        raise ModelError(f"huggingface:{name}: no such GGUF file (give a local path or "
                         "'<org>/<repo>/<file.gguf>' on the hub)")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:])))


def load_model_and_tokenizer(name: str) -> tuple[Any, Any]:
    """Float32 causal LM and tokenizer of a hub id, a local folder or a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolve_gguf(name)
    if gguf is not None:
        kwargs: dict[str, Any] = {"gguf_file": gguf.name}
        source = str(gguf.parent)
    else:
        kwargs, source = {}, name
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    if gguf is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = gguf_chat_template(gguf)  # transformers does not carry it over
    return model, tokenizer


def gguf_chat_template(path: Path) -> str | None:
    """The ``tokenizer.chat_template`` string stored in a GGUF file, if any."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


class _SerialPipeline:
    """A pipeline callable by one thread at a time (graph branches may run concurrently)."""

    def __init__(self, pipe: Any):
        self._pipe = pipe
        self._lock = threading.Lock()
        self.task = pipe.task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._pipe(*args, **kwargs)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._pipe, item)


def _cache_kwarg(model: Any) -> str:
    """The forward() keyword of the key/value cache (``cache`` in newer transformers, else ``past_key_values``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    """The key/value cache of a forward() output, whichever name this transformers gives it."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _chat_class() -> type:
    from langchain_core.outputs import ChatResult
    from langchain_huggingface import ChatHuggingFace

    class CountingChatHuggingFace(ChatHuggingFace):
        """``ChatHuggingFace`` that also reports token counts in ``usage_metadata``."""

        def _generate(self, messages: list, stop: list[str] | None = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:
            result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
            n_in = len(self.tokenizer(self._to_chat_prompt(messages), add_special_tokens=False)["input_ids"])
            for gen in result.generations:
                n_out = len(self.tokenizer(gen.message.content, add_special_tokens=False)["input_ids"])
                gen.message.usage_metadata = {"input_tokens": n_in, "output_tokens": n_out,
                                              "total_tokens": n_in + n_out}
            return result

        def _prompt_ids(self, messages: list) -> list[int]:
            return self.tokenizer(self._to_chat_prompt(messages), add_special_tokens=False)["input_ids"]

        def label_logprobs(self, messages: list, labels: list[str]) -> tuple[dict[str, float], int]:
            """Log-probabilities of ``labels`` as the first answer token, from one forward pass."""
            import torch

            ids = self._prompt_ids(messages)
            first = [self.tokenizer(lab, add_special_tokens=False)["input_ids"][0] for lab in labels]
            model = self.llm.pipeline.model
            with self.llm.pipeline._lock, torch.no_grad():
                logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].double()
            chosen = torch.log_softmax(logits[first], dim=-1)
            return dict(zip(labels, chosen.tolist())), len(ids)

        def continuation_logprobs(self, messages: list, continuations: list[str]) -> tuple[list[list[float]], int]:
            """Per-token log-probabilities of each continuation as the start of the answer.

            The prompt is run once; the continuations then run together in one
            batch (right-padded) on copies of its key/value cache.
            """
            import copy

            import torch

            ids = self._prompt_ids(messages)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            conts = [self.tokenizer(c, add_special_tokens=False)["input_ids"] or [self.tokenizer.eos_token_id]
                     for c in continuations]
            model = self.llm.pipeline.model
            out: list[list[float]] = []
            with self.llm.pipeline._lock, torch.no_grad():
                run = model(torch.tensor([ids], device=model.device), use_cache=True)
                first = torch.log_softmax(run.logits[0, -1].double(), dim=-1)
                out = [[float(first[c[0]])] for c in conts]
                longer = [k for k, c in enumerate(conts) if len(c) > 1]
                if longer:
                    width = max(len(conts[k]) - 1 for k in longer)
                    batch = torch.full((len(longer), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(longer), len(ids) + width), dtype=torch.long)
                    mask[:, :len(ids)] = 1
                    for row, k in enumerate(longer):
                        tail = conts[k][:-1]
                        batch[row, :len(tail)] = torch.tensor(tail)
                        mask[row, len(ids):len(ids) + len(tail)] = 1
                    cache = copy.deepcopy(_cache_of(run))
                    cache.batch_repeat_interleave(len(longer))
                    step = model(batch.to(model.device), attention_mask=mask.to(model.device), use_cache=False,
                                 **{_cache_kwarg(model): cache})
                    rows = torch.log_softmax(step.logits.double(), dim=-1)
                    for row, k in enumerate(longer):
                        cont = conts[k]
                        out[k] += [float(rows[row, i, cont[i + 1]]) for i in range(len(cont) - 1)]
            return out, len(ids) + sum(len(c) for c in conts)

    return CountingChatHuggingFace


def chat_model_from(model: Any, tokenizer: Any, *, model_id: str, temperature: float,
                    max_tokens: int) -> BaseChatModel:
    """Wrap a loaded causal LM and tokenizer as a LangChain chat model."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    if not getattr(tokenizer, "chat_template", None):
        log.warning("huggingface:%s has no chat template; using a plain 'role: content' one", model_id)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    gen: dict[str, Any] = {"max_new_tokens": int(max_tokens)}
    if temperature and temperature > 0:
        gen.update(do_sample=True, temperature=float(temperature))
    else:  # greedy; drop sampling settings a model's generation_config may carry
        cfg = model.generation_config
        cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = False, None, None, None
        gen["do_sample"] = False
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, return_full_text=False, **gen)
    llm = HuggingFacePipeline(pipeline=_SerialPipeline(pipe), model_id=model_id)
    return _chat_class()(llm=llm, tokenizer=tokenizer, model_id=model_id,
                         temperature=float(temperature), max_tokens=int(max_tokens))


def load_gguf_dequantized(path: Path, *, spec: str, cache: Path, temperature: float,
                          max_tokens: int) -> BaseChatModel:
    """A chat model on GGUF ``path`` through transformers, its dequantized weights cached in ``cache``.

    The first load dequantizes the GGUF (about a minute for 1.5B parameters)
    and saves model and tokenizer (bfloat16 on disk, about half the float32
    size) to ``cache``; later loads read that folder directly.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        marker = cache / _DEQUANT_MARKER
        source = {"gguf": path.name, "size": path.stat().st_size}
        if _read_json(marker) == source:
            tokenizer = AutoTokenizer.from_pretrained(cache)
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        else:
            log.warning("%s: dequantizing %s with transformers (llama-cpp-python is not in use); "
                        "the result is cached in %s", spec, path.name, cache)
            model, tokenizer = load_model_and_tokenizer(str(path))
            if _is_dequantized(model):  # packed GGUF layers (the `kernels` package) load fast: nothing to cache
                _save_dequantized(model, tokenizer, cache, source)
        return chat_model_from(model, tokenizer, model_id=spec, temperature=temperature, max_tokens=max_tokens)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"linker_model '{spec}': transformers could not load {path}: "
                         f"{type(exc).__name__}: {exc} (pip install llama-cpp-python for the fast runtime)") from exc


def _is_dequantized(model: Any) -> bool:
    """True when no layer kept packed GGUF blocks (every weight is a plain float tensor)."""
    return not any("gguf" in type(m).__name__.lower() for m in model.modules())


def _save_dequantized(model: Any, tokenizer: Any, cache: Path, source: dict) -> None:
    """Save to a temporary folder and rename it to ``cache`` (a crash leaves no half-written cache)."""
    import torch

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    # the weights are plain floats now: drop the GGUF "quantizer" that forbids save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.to(torch.bfloat16).save_pretrained(tmp)
        model.to(torch.float32)  # the model in memory now equals what later runs reload
        tokenizer.save_pretrained(tmp)
        (tmp / _DEQUANT_MARKER).write_text(json.dumps(source))
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
