"""The linker chat model of a run, and the run's usage count.

``load_linker(settings)`` loads the model named by ``settings.linker_model``
with the run's decoding and transport settings (any object with the
``Context`` fields below); ``count_call`` adds one call to a ``usage`` dict.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from tools.models import load_chat_model


def load_linker(settings: Any) -> BaseChatModel:
    """The configured linker chat model (``linker_model``, ``openai_*``, ``temperature``, ``max_tokens``, ...)."""
    return load_chat_model(settings.linker_model, base_url=settings.openai_base_url, api_key=settings.openai_api_key,
                           temperature=settings.temperature, max_tokens=settings.max_tokens,
                           timeout=settings.request_timeout, max_retries=settings.max_retries)


def count_call(usage: dict[str, Any], input_tokens: int, output_tokens: int) -> None:
    """Add one LLM call and its tokens to the run's ``usage``."""
    usage["llm_calls"] = usage.get("llm_calls", 0) + 1
    usage["input_tokens"] = usage.get("input_tokens", 0) + int(input_tokens)
    usage["output_tokens"] = usage.get("output_tokens", 0) + int(output_tokens)
