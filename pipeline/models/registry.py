"""The memories, in one list. A memory is one module, pipeline/models/<name>.py, that declares its config
dataclass (a MemoryConfig with its defaults and `check`), its Memory class, and `MEMORY = <its class>`; everything
else (the config's typing and checks, Hydra's schema, the CLI's help, the report's row order and colours, the
benchmarks) reads this list. Adding a memory: its module, its test, a conf/model/<name>.yaml and a line below.

Importing this module imports no memory (no torch): a memory's module loads when its config or class is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Optional, Sequence

from pipeline.config.access import cfg_path
from pipeline.config.checks import check_backbone, longest_input
from pipeline.config.load import as_dataclass, recipe_train
from pipeline.config.schema import BackboneConfig, MemoryConfig, RootConfig

# the study's order (report rows, colours, CLI help): no memory, the cache, the ceiling, the other memories, and the
# method under test last
NAMES: tuple[str, ...] = ("window", "xl", "full", "rmt", "armt", "memorizing", "gdn", "cmr")


def _module(name: str) -> Any:
    if name not in NAMES:
        from pipeline.errors import ConfigError

        raise ConfigError(f"models.<variant>.name = {name!r} is not a known memory; allowed: {', '.join(NAMES)}")
    return importlib.import_module(f"pipeline.models.{name}")


def memory_class(name: str) -> type:
    """The memory's nn.Module class (imports its module, and torch)."""
    return _module(name).MEMORY


def config_class(name: str) -> type:
    """The memory's config dataclass."""
    return memory_class(name).Config


def config_classes() -> dict[str, type]:
    return {name: config_class(name) for name in NAMES}


def register(store: Any) -> None:
    """Each memory's config into Hydra's ConfigStore as `schema/model/<name>`, first in conf/model/<name>.yaml."""
    for name, cls in config_classes().items():
        store.store(group="schema/model", name=name, node=cls)


def backbone_config(cfg: Any) -> BackboneConfig:
    """BackboneConfig from any mapping; unknown keys are an error, not silently dropped."""
    return cfg if isinstance(cfg, BackboneConfig) else as_dataclass(BackboneConfig, cfg, "backbone")


def memory_config(cfg: Any) -> MemoryConfig:
    """The typed config of memory `cfg.name` (a typed one as it is); unknown names and keys are ConfigErrors."""
    if isinstance(cfg, MemoryConfig) and type(cfg) is not MemoryConfig:
        return cfg
    d = dataclasses.asdict(cfg) if isinstance(cfg, MemoryConfig) else as_dataclass(dict, cfg, "models.<variant>")
    cls = config_class(d.get("name"))
    return as_dataclass(cls, d, f"models.{cls.name}")


def check_model(backbone: BackboneConfig, mem: MemoryConfig) -> None:
    """Checks that need only the backbone and one memory (build_model runs these)."""
    check_backbone(backbone)
    if backbone.hf_model is not None and not mem.on_pretrained:
        from pipeline.errors import ConfigError

        supported = [n for n, c in config_classes().items() if c.on_pretrained]
        raise ConfigError(f"`{mem.name}` on a pretrained Hugging Face backbone (backbone.hf_model) is not "
                          f"supported; supported: {supported}")
    mem.check(backbone)


def check_models(cfg: Any, full_cfg: Any = None, variants: Optional[Sequence[str]] = None) -> dict[str, MemoryConfig]:
    """The configs of `variants` (default: study.variants, else every configured model) typed by their memories
    and checked against the backbone (and, for a memory reading whole documents, against the longest input).
    Only their modules are imported, so a stage depends on the memories it runs alone. `cfg`: a whole config
    in any form, or a part of `full_cfg`."""
    from pipeline.errors import ConfigError

    root = full_cfg if full_cfg is not None else cfg
    backbone = backbone_config(cfg_path(root, "backbone", {}) or {})
    nodes = cfg_path(root, "models", {}) or {}
    typed = {}
    for v in list(variants or cfg_path(root, "study.variants", None) or list(nodes)):
        if v not in nodes:
            raise ConfigError(f"unknown variant {v!r}: models.{v} is not configured (study.variants or --variant "
                              f"names it); allowed: "
                              f"{', '.join(nodes)}")
        name = cfg_path(nodes[v], "name")
        if name not in NAMES:
            raise ConfigError(f"models.{v}.name = {name!r} is not a known memory; allowed: {', '.join(NAMES)}")
        mem = typed[v] = memory_config(nodes[v])
        if mem.name != v:
            raise ConfigError(f"models.{v}.name = {mem.name!r} must equal its key {v!r}")
        check_model(backbone, mem)
        if mem.recipe:
            recipe_train(cfg_path(root, "train", {}) or {}, mem.recipe, f"models.{v}.recipe")
        if mem.whole_sequence and backbone.positions == "learned":  # rotary positions have no table to outgrow
            need = max([longest_input(root), *(cfg_path(root, "eval.overhead.lengths", []) or [])])
            if backbone.max_positions < need:
                raise ConfigError(
                    f"backbone.max_positions = {backbone.max_positions} must be >= {need}, the longest input "
                    f"`{v}` reads (data.eval_lengths / val_long_lengths / rare_eval_length / training documents / "
                    f"eval.overhead.lengths)")
    return typed


def typed_models(cfg: RootConfig, variants: Optional[Sequence[str]] = None) -> RootConfig:
    """`cfg` with the memories of `variants` (default: the study's) as their dataclasses, checked (check_models);
    every other `models.<variant>` stays as it is."""
    return dataclasses.replace(cfg, models={**cfg.models, **check_models(cfg, variants=variants)})
