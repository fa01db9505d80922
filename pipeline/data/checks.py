"""The data config's whole check: its fields (data/config.py), then a dry run of the document layouts
(templates well formed, planted facts fit a segment, rare counts fit the training split). Apart from
data/config.py so that the schema imports nothing of the generator, which imports the schema."""
from __future__ import annotations

from typing import Any

from pipeline.data.config import DataConfig, validate as check_fields
from pipeline.data.documents import check_layouts


def validate(data_cfg: Any, full_cfg: Any = None) -> DataConfig:
    """`validate(cfg.data, cfg)` or `validate(cfg)`: raise ConfigError naming the key; return the DataConfig."""
    c = check_fields(data_cfg, full_cfg)
    check_layouts(c)
    return c
