"""Models: one decoder, and the memories that decide how it reads a long input (pipeline/models/registry.py lists
them; each is one module). `build_model` is the way in."""

from __future__ import annotations

from typing import Any

from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.errors import ConfigError
from pipeline.models.registry import NAMES, backbone_config, check_model, memory_class, memory_config

__all__ = ["NAMES", "BackboneConfig", "MemoryConfig", "MemoryLM", "ModelOutput", "build_model"]


def build_model(backbone_cfg: Any, memory_cfg: Any, vocab_size: int):
    """MemoryLM for one variant. Configs may be dataclasses, DictConfigs or dicts."""
    import torch

    from pipeline.models.base import MemoryLM

    backbone = backbone_config(backbone_cfg)
    mem = memory_config(memory_cfg)  # unknown name -> ConfigError listing the memories
    check_model(backbone, mem)
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size = {vocab_size!r} must be a positive integer")
    if backbone.hf_model is not None:
        return _build_hf(backbone, mem, vocab_size)
    with torch.random.fork_rng(devices=[]):  # building the memory must not shift the backbone's init
        memory = memory_class(mem.name)(backbone, mem)
    return MemoryLM(backbone, memory, vocab_size)


def _build_hf(backbone: BackboneConfig, mem: MemoryConfig, vocab_size: int):
    """The memory around a pretrained causal LM (pipeline/models/hf.py), loaded with from_pretrained."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ConfigError("backbone.hf_model needs the `hf` extra: pip install -e '.[hf]'") from None
    import torch

    from pipeline.models.hf import build_hf_model

    try:
        lm = AutoModelForCausalLM.from_pretrained(backbone.hf_model)
    except OSError as e:
        raise ConfigError(f"backbone.hf_model = {backbone.hf_model!r} could not be loaded ({str(e).splitlines()[0]}); "
                          "offline, pretrain one with `cmr-repro hf-pretrain`") from None
    if lm.config.vocab_size != vocab_size:
        raise ConfigError(f"backbone.hf_model's vocabulary ({lm.config.vocab_size} tokens) is not the data's tokenizer "
                          f"({vocab_size}): pretrain it on these data (`cmr-repro hf-pretrain`)")
    with torch.random.fork_rng(devices=[]):
        return build_hf_model(lm, mem, backbone.window)


def __getattr__(name: str):  # torch-importing names load lazily, so config-only users stay fast
    if name in ("MemoryLM", "ModelOutput"):
        from pipeline.models import base

        return getattr(base, name)
    raise AttributeError(name)
