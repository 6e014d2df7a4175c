"""The one lookup behind every type-keyed registry (detectors, frame sources): config -> constructor."""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")


def build_from_registry(
    config: Mapping[str, Any], registry: Mapping[str, Callable[[Mapping[str, Any]], T]], what: str
) -> T:
    """Call the constructor that ``config["type"]`` names with the other keys; errors name ``what``."""
    if not isinstance(config, Mapping):
        raise TypeError(f"{what} config: expected a mapping with a 'type' key, got {config!r}")
    kind = config.get("type")
    if kind not in registry:
        raise ValueError(f"{what} config: unknown type {kind!r} (known types: {', '.join(sorted(registry))})")
    return registry[kind]({key: value for key, value in config.items() if key != "type"})
