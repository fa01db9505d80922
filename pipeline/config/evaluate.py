"""What the `eval:` node (pipeline/config/schema.py EvalConfig) implies: Table IV buckets, attention lengths (checks:
pipeline/config/checks.py). No torch import: the config layer must load fast and without the training stack."""

from __future__ import annotations

from typing import Any

from pipeline.config.access import cfg_get as _get
from pipeline.errors import ConfigError
from pipeline.config.schema import Device, Task, choices

# Every task the evaluation stage runs. The attention analysis is its own stage
# (`python -m pipeline.evaluate.attention`, experiments/attention/), configured by eval.attention.
TASKS = choices(Task)
DEVICES = choices(Device)


def data_rare_classes(full_cfg: Any) -> list[int] | None:
    """The intended training counts of the rare value classes, from the data config (if it has them)."""
    data = _get(full_cfg, "data")
    for key in ("rare_classes", "rare_counts", "rare_class_counts"):
        value = _get(data, key)
        if value is not None:
            return [int(v) for v in value]
    return None


def rare_buckets(full_cfg: Any) -> list[int]:
    """The Table IV buckets: eval.rare_buckets if set, else the data config's rare classes."""
    explicit = _get(_get(full_cfg, "eval"), "rare_buckets")
    if explicit is not None:
        return sorted(int(v) for v in explicit)
    from_data = data_rare_classes(full_cfg)
    if from_data is None:
        raise ConfigError("eval.rare_buckets is null and data has no rare_classes: set eval.rare_buckets, "
                          "e.g. [10, 50, 100, 500, 1000]")
    return sorted(from_data)


def attention_lengths(cfg: Any) -> list[int]:
    """eval.attention.lengths, or (null) every data.eval_lengths (the memory table is by N)."""
    lengths = _get(_get(_get(cfg, "eval"), "attention"), "lengths", None)
    if lengths is not None:
        return [int(n) for n in lengths]
    return sorted({int(n) for n in _get(_get(cfg, "data"), "eval_lengths")})
