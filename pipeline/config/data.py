"""The document generator's config (pipeline/config/schema.py DataConfig) from any mapping, and its choices.

No torch import: `report` and `--help` must start fast. Its checks: pipeline/config/checks.py (check_data_fields; the layouts' dry run: pipeline.data.documents.check_data).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import ConfigError
from pipeline.config.schema import DataConfig, DocKind, EvalFacts, Filler, LocalFormat, RootConfig, choices, from_dict

FILLER_SOURCES = choices(Filler)
LOCAL_FORMATS = choices(LocalFormat)
DOC_KINDS = choices(DocKind)
EVAL_FACTS = choices(EvalFacts)


def keys() -> list[str]:
    return [f.name for f in dataclasses.fields(DataConfig)]


def as_data_config(obj: Any) -> DataConfig:
    """DataConfig from a DataConfig, a dict / DictConfig of its keys, or a whole config with `.data`."""
    if isinstance(obj, DataConfig):
        return obj
    if isinstance(obj, RootConfig):
        return obj.data
    from omegaconf import DictConfig, OmegaConf

    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    if not isinstance(obj, dict):
        raise ConfigError(f"data: expected a mapping of DataConfig keys, got {type(obj).__name__}")
    if "data" in obj and isinstance(obj["data"], dict):
        obj = obj["data"]
    unknown = sorted(set(obj) - set(keys()))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key; allowed keys: {', '.join(keys())}")
    return from_dict(DataConfig, obj)
