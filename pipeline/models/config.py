"""Model configuration: typed backbone and memory configs (pipeline/schema.py) from any mapping, the memories'
modules and the allowed values (checks: pipeline/config_checks.py). No torch import: validating stays fast."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pipeline.errors import ConfigError
from pipeline.schema import (MEMORY_CONFIGS, MODEL_NAMES, BackboneConfig, CMRConfig, Eviction, MemoryConfig, Mode,
                             Positions, ScoreInput, Selection, choices, from_dict)

# variant -> (module, class): pipeline.models.build_model imports only the chosen memory's module, so a stage
# that trains or evaluates one variant depends on that file alone among the memories (dvc.yaml lists them so)
MEMORIES = {
    "window": ("pipeline.models.window", "WindowMemory"),
    "xl": ("pipeline.models.xl", "XLMemory"),
    "full": ("pipeline.models.full", "FullMemory"),
    "cmr": ("pipeline.models.cmr", "CMRMemory"),
    "rmt": ("pipeline.models.rmt", "RMTMemory"),
    "armt": ("pipeline.models.armt", "ARMTMemory"),
    "memorizing": ("pipeline.models.memorizing", "MemorizingMemory"),
}

POSITIONS = choices(Positions)
SELECTIONS = choices(Selection)
EVICTIONS = choices(Eviction)
MODES = choices(Mode)
SCORE_INPUTS = choices(ScoreInput)
HF_VARIANTS = ("window", "cmr")  # the memories pipeline/models/hf.py attaches to a pretrained LM


def _as_dict(cfg: Any) -> dict:
    """Plain dict from a dataclass, DictConfig or mapping (no OmegaConf import unless needed)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConfigError(f"expected a config mapping, got {type(cfg).__name__}")


def _build(cls: type, d: dict, where: str):
    """cls(**d) as schema.from_dict builds it, after naming the keys that are no field of cls."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(known)}")
    return from_dict(cls, d)


def backbone_config(cfg: Any) -> BackboneConfig:
    """BackboneConfig from any mapping; unknown keys are an error, not silently dropped."""
    if isinstance(cfg, BackboneConfig):
        return cfg
    return _build(BackboneConfig, _as_dict(cfg), "backbone")


def memory_config(cfg: Any) -> MemoryConfig:
    """The typed memory config for `cfg.name` (a typed one as it is); unknown names list the allowed ones."""
    if isinstance(cfg, MemoryConfig) and type(cfg) is MEMORY_CONFIGS.get(cfg.name):
        return cfg
    d = dataclasses.asdict(cfg) if isinstance(cfg, MemoryConfig) else _as_dict(cfg)
    name = d.get("name")
    if name not in MEMORY_CONFIGS:
        raise ConfigError(f"models.<variant>.name = {name!r} is not a known memory; allowed: {list(MODEL_NAMES)}")
    return _build(MEMORY_CONFIGS[name], d, f"models.{name}")


def resolve_cmr_layers(mem: CMRConfig, n_layers: int) -> tuple[list[int], list[int]]:
    """(capture layers, reweave layers) with the null defaults filled in.

    Bank of layer l holds outputs of block l; reweave at layer j acts on the input of block j.
    Hierarchical mode: reweave j reads banks l < j (states no deeper than its own input).
    """
    capture = list(mem.capture_layers) if mem.capture_layers is not None else list(range(n_layers - 1))
    if mem.reweave_layers is not None:
        reweave = list(mem.reweave_layers)
    else:
        reweave = list(range(min(capture) + 1, n_layers)) if capture else []
    return sorted(capture), sorted(reweave)
