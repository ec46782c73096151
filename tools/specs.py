"""Parsing of ``provider:model`` strings used for every model setting."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from tools.errors import ConfigError


class ModelSpec(NamedTuple):
    """A parsed model spec: ``provider`` and the rest (model name, hub id or path)."""

    provider: str
    name: str


def parse_spec(spec: str, *, setting: str, providers: tuple[str, ...]) -> ModelSpec:
    """Split ``provider:name`` and check the provider is one of ``providers``.

    ``embedded`` alone (or ``embedded:<variant>``) names the packaged offline
    default. Raises ``ConfigError`` naming ``setting`` when the spec is malformed.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{setting}: empty model spec; expected one of {', '.join(p + ':...' for p in providers)}")
    spec = spec.strip()
    provider, sep, name = spec.partition(":")
    provider = provider.lower()
    if not sep:
        if provider == "embedded" and "embedded" in providers:
            return ModelSpec("embedded", "")
        raise ConfigError(f"{setting}: '{spec}' has no provider; write it as 'provider:model' "
                          f"with provider one of {list(providers)}")
    if provider not in providers:
        raise ConfigError(f"{setting}: unknown provider '{provider}' in '{spec}'; choose from {list(providers)}")
    if not name.strip() and provider != "embedded":
        raise ConfigError(f"{setting}: '{spec}' names no model after '{provider}:'")
    return ModelSpec(provider, name.strip())


# the providers each model setting accepts (the loaders in tools/ check the same lists;
# tests/test_bad_input.py keeps them in step)
PROVIDERS: dict[str, tuple[str, ...]] = {
    "linker_model": ("embedded", "openai", "huggingface"),
    "embedding_model": ("embedded", "huggingface", "openai", "onnx", "onnx-int8"),
    "verifier": ("embedded", "clip", "judge"),
    "caption_model": ("embedded", "openai", "huggingface"),
    "object_model": ("embedded", "huggingface"),
    "scene_model": ("embedded", "clip"),
}
OCR_ENGINES = ("rapidocr", "tesseract")
# a hub id: "name" or "org/name" (a GGUF on the hub: "org/repo/file.gguf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)*$")


def check_spec(spec: str, *, setting: str, providers: tuple[str, ...], base_url: str | None = None,
               api_key: str | None = None) -> ModelSpec:
    """Parse ``spec`` and check what can be checked without loading weights or calling a server.

    ``huggingface:``/``clip:`` paths must exist, other names must look like hub ids;
    ``openai:`` needs an API key (context or ``OPENAI_API_KEY``) or a base URL (context
    or ``OPENAI_BASE_URL``); ``judge:`` is checked as the chat spec it wraps.
    """
    parsed = parse_spec(spec, setting=setting, providers=providers)
    where = f"{setting} '{spec.strip()}'"
    if parsed.provider in ("huggingface", "clip") or (parsed.provider in ("onnx", "onnx-int8")
                                                         and parsed.name != "embedded"):
        _check_local_or_hub(parsed.name, where)
    elif parsed.provider == "openai":
        if not (api_key or os.environ.get("OPENAI_API_KEY")) and not (base_url or os.environ.get("OPENAI_BASE_URL")):
            raise ConfigError(f"{where}: no API key; set OPENAI_API_KEY (or I2CR_OPENAI_API_KEY), "
                              "or set openai_base_url for a keyless local server")
    elif parsed.provider == "judge":
        check_spec(parsed.name, setting=f"{setting} judge", providers=PROVIDERS["linker_model"],
                   base_url=base_url, api_key=api_key)
    return parsed


def _check_local_or_hub(name: str, where: str) -> None:
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        if not path.exists():
            raise ConfigError(f"{where}: no such file or folder: {path}")
        return
    if path.exists():
        return
    if name.lower().endswith(".gguf") and name.count("/") < 2:
        raise ConfigError(f"{where}: no such GGUF file (give a local path or '<org>/<repo>/<file.gguf>' on the hub)")
    if not _HUB_ID.match(name) or "//" in name or ".." in name:
        raise ConfigError(f"{where}: {name!r} is neither an existing local path nor a hub id ('org/name')")


def check_model_settings(ctx: Any) -> None:
    """Check every model setting of ``ctx`` (spec strings only; objects pass); ``ConfigError`` names the first bad one."""
    base_url, api_key = getattr(ctx, "openai_base_url", None), getattr(ctx, "openai_api_key", None)
    for setting, providers in PROVIDERS.items():
        spec = getattr(ctx, setting, "embedded")
        if isinstance(spec, str):
            check_spec(spec, setting=setting, providers=providers, base_url=base_url, api_key=api_key)
        elif spec is None or isinstance(spec, (int, float, bool, list, dict)):
            raise ConfigError(f"{setting}: expected a model spec string, got {spec!r:.80}")
    engine = str(getattr(ctx, "ocr_engine", "rapidocr") or "").strip().partition(":")[0].lower()
    if engine not in OCR_ENGINES:
        raise ConfigError(f"ocr_engine: unknown engine {getattr(ctx, 'ocr_engine', None)!r}; "
                          f"choose from {list(OCR_ENGINES)}")
