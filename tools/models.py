"""Chat models from ``provider:model`` specs.

* ``embedded`` — the packaged offline default (see ``tools/embedded_llm.py``).
* ``openai:<model>`` — OpenAI or any OpenAI-compatible server (vLLM, Ollama,
  llama.cpp server) through ``langchain-openai``; base URL and key from the
  context or ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.
* ``huggingface:<hub id | local dir | file.gguf>`` — a local transformers
  text-generation pipeline through ``langchain-huggingface``.

A ``BaseChatModel`` instance is accepted in place of a spec (handy from Python).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import Any

from langchain_core.language_models import BaseChatModel

from tools.errors import ConfigError, ModelError
from tools.specs import parse_spec

CHAT_PROVIDERS = ("embedded", "openai", "huggingface")
_lock = threading.Lock()


def load_chat_model(
    spec: str | BaseChatModel,
    *,
    setting: str = "linker_model",
    base_url: str | None = None,
    api_key: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 16,
    timeout: float = 60.0,
    max_retries: int = 3,
) -> BaseChatModel:
    """Return a chat model for ``spec`` (cached: one instance per distinct configuration)."""
    if isinstance(spec, BaseChatModel):
        return spec
    parsed = parse_spec(spec, setting=setting, providers=CHAT_PROVIDERS)
    with _lock:
        return _load(parsed.provider, parsed.name, setting, base_url, api_key,
                     float(temperature), int(max_tokens), float(timeout), int(max_retries))


@lru_cache(maxsize=16)
def _load(provider: str, name: str, setting: str, base_url: str | None, api_key: str | None,
          temperature: float, max_tokens: int, timeout: float, max_retries: int) -> BaseChatModel:
    if provider == "openai":
        return _openai(name, setting, base_url, api_key, temperature, max_tokens, timeout, max_retries)
    if provider == "huggingface":
        return _huggingface(name, setting, temperature, max_tokens)
    from tools.embedded_llm import load_embedded_chat_model

    return load_embedded_chat_model(name or None, temperature=temperature, max_tokens=max_tokens)


def _openai(name: str, setting: str, base_url: str | None, api_key: str | None, temperature: float,
            max_tokens: int, timeout: float, max_retries: int) -> BaseChatModel:
    """An OpenAI-compatible chat model; the client retries timeouts and 5xx with backoff."""
    from langchain_openai import ChatOpenAI

    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not base_url:
            raise ConfigError(f"{setting} 'openai:{name}': no API key; set OPENAI_API_KEY (or I2CR_OPENAI_API_KEY), "
                              "or set openai_base_url for a keyless local server")
        api_key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) ignore the key
    # timeouts, connection errors, 408/409/429 and 5xx are retried by the openai client itself,
    # ``max_retries`` times with exponential backoff (honouring Retry-After)
    kwargs: dict[str, Any] = dict(model=name, base_url=base_url, api_key=api_key, temperature=temperature,
                                  timeout=timeout, max_retries=max_retries, seed=0, use_responses_api=False)
    if max_tokens:
        kwargs["max_tokens"] = max_tokens  # sent as max_completion_tokens
        if base_url and "api.openai.com" not in base_url:
            # llama.cpp server and older Ollama only read the legacy name
            kwargs["extra_body"] = {"max_tokens": max_tokens}
    return ChatOpenAI(**kwargs)


def _huggingface(name: str, setting: str, temperature: float, max_tokens: int) -> BaseChatModel:
    from tools.hf_local import load_hf_chat_model

    return load_hf_chat_model(name, setting=setting, temperature=temperature, max_tokens=max_tokens)


def invoke_model(model: BaseChatModel, messages: list, *, spec: Any,
                 setting: str = "linker_model") -> tuple[str, dict[str, int]]:
    """Call ``model``; return its text and token usage ``{"input_tokens", "output_tokens"}``.

    Any failure (after the client's own retries) becomes a ``ModelError`` naming the model.
    """
    try:
        reply = model.invoke(messages)
    except Exception as exc:  # the client already retried transient errors with backoff
        raise ModelError(failure_message(setting, spec, model, exc)) from exc
    content = getattr(reply, "content", reply)
    if isinstance(content, list):  # content blocks
        content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    meta = getattr(reply, "usage_metadata", None) or {}
    usage = {"input_tokens": int(meta.get("input_tokens") or 0), "output_tokens": int(meta.get("output_tokens") or 0)}
    return str(content), usage


def describe(spec: Any) -> str:
    """A short name of a spec or model object for messages and traces."""
    if isinstance(spec, str):
        return spec
    for attr in ("model_name", "model_id", "model"):
        value = getattr(spec, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(spec).__name__


def failure_message(setting: str, spec: Any, model: Any, exc: Exception) -> str:
    """``<setting> '<spec>' at <base url> failed: <why>`` — one line for a failed model call."""
    return f"{setting} '{describe(spec)}'{_where(model)} failed: {_failure(exc)}"


def _where(model: Any) -> str:
    """`` at <base url>`` for a remote (OpenAI-compatible) model or embedder, else nothing."""
    model = getattr(model, "bound", model)  # model.bind(...) wraps the model
    url = getattr(model, "openai_api_base", None)
    if not url:
        for client in (getattr(model, "root_client", None), getattr(model, "client", None)):
            url = getattr(client, "base_url", None) or getattr(getattr(client, "_client", None), "base_url", None)
            if url:
                break
    return f" at {str(url).rstrip('/')}" if url else ""


def _failure(exc: Exception) -> str:
    """One line on why a call failed (HTTP status and retries for API errors)."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:300]
    if status is not None:
        return f"HTTP {status} after retries: {text}"
    name = type(exc).__name__
    if "Timeout" in name:
        return f"timed out (after retries): {text}"
    if "Connection" in name:
        return f"could not connect (after retries): {text}"
    return f"{name}: {text}"
