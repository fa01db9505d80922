"""Models: one decoder, four memories (window, xl, full, cmr). `build_model` is the way in."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.models.config import (
    MODEL_NAMES,
    BackboneConfig,
    CMRConfig,
    FullConfig,
    MemoryConfig,
    WindowConfig,
    XLConfig,
    backbone_config,
    check_model,
    memory_config,
    validate,
)

__all__ = [
    "MODEL_NAMES",
    "BackboneConfig",
    "MemoryConfig",
    "WindowConfig",
    "XLConfig",
    "FullConfig",
    "CMRConfig",
    "MemoryLM",
    "ModelOutput",
    "build_model",
    "validate",
]


def build_model(backbone_cfg: Any, memory_cfg: Any, vocab_size: int):
    """MemoryLM for one variant. Configs may be dataclasses, DictConfigs or dicts."""
    from pipeline.models.base import MemoryLM
    from pipeline.models.cmr import CMRMemory
    from pipeline.models.full import FullMemory
    from pipeline.models.window import WindowMemory
    from pipeline.models.xl import XLMemory

    memories = {"window": WindowMemory, "xl": XLMemory, "full": FullMemory, "cmr": CMRMemory}
    backbone = backbone_config(backbone_cfg)
    mem = memory_config(memory_cfg)  # unknown name -> ConfigError listing MODEL_NAMES
    check_model(backbone, mem)
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size = {vocab_size!r} must be a positive integer")
    import torch

    with torch.random.fork_rng(devices=[]):  # building the memory must not shift the backbone's init
        memory = memories[mem.name](backbone, mem)
    return MemoryLM(backbone, memory, vocab_size)


def __getattr__(name: str):  # torch-importing names load lazily, so config-only users stay fast
    if name in ("MemoryLM", "ModelOutput"):
        from pipeline.models import base

        return getattr(base, name)
    raise AttributeError(name)
