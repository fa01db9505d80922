"""Experiment-tracking settings (the `logger:` group): Weights & Biases and CSV logs.

No heavy imports here: composing the config must not import wandb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from pipeline.errors import ConfigError

WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "offline"  # offline by default: no network needed, `wandb sync` later
    project: str = "cmr-repro"
    entity: Optional[str] = None
    group: Optional[str] = None  # null = the profile name
    tags: List[str] = field(default_factory=list)
    init_timeout: float = 10.0  # seconds an online run may take to reach the server before it logs offline


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = True


def validate(logger_cfg: Any, full_cfg: Any = None) -> None:
    """Check the wandb mode name (the env var WANDB_MODE is checked when a run starts)."""
    wb = logger_cfg.get("wandb") if logger_cfg is not None else None
    mode = wb.get("mode") if wb is not None else None
    if mode is not None and str(mode) not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is not allowed; allowed: {', '.join(WANDB_MODES)}")
    timeout = wb.get("init_timeout") if wb is not None else None
    if timeout is not None and not float(timeout) > 0:
        raise ConfigError(f"logger.wandb.init_timeout must be > 0 seconds, got {timeout}")
