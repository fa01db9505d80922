"""Reading one key of a config node, whatever its form (DictConfig, dict or dataclass): the component
validators accept all three. A leaf module (it imports nothing from the package), so every schema can use it
without importing pipeline.config, which imports every schema."""
from __future__ import annotations

from typing import Any


def cfg_get(node: Any, key: str, default: Any = None) -> Any:
    """Read `key` from a DictConfig, dict or dataclass alike (component validators accept all three)."""
    if node is None:
        return default
    if isinstance(node, dict):
        return node.get(key, default)
    try:
        return node.get(key, default)  # DictConfig
    except AttributeError:
        return getattr(node, key, default)


def cfg_path(node: Any, dotted: str, default: Any = None) -> Any:
    """`cfg_get` along a dotted path (`backbone.window`): `default` where any part is missing or None."""
    for part in dotted.split("."):
        node = cfg_get(node, part)
        if node is None:
            return default
    return node
