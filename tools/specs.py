"""Parsing of ``provider:model`` strings used for every model setting."""

from __future__ import annotations

from typing import NamedTuple

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
