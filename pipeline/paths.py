"""Where each stage's runs live: experiments/<kind>/<variant>/s<seed>/.

One folder per variant (the DVC stage's out) holding one folder per seed, so a stage can train
or evaluate a variant's seeds side by side in parallel processes and DVC still tracks the
variant as one unit (changing `models.cmr` reruns only cmr's seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config.access import cfg_path

KINDS = ("train", "eval", "attention", "overhead", "stress")


def experiments_dir(cfg: Any) -> Path:
    return Path(cfg_path(cfg, "paths.experiments_dir", "experiments"))


def variant_dir(cfg: Any, kind: str, variant: str) -> Path:
    """experiments/<kind>/<variant>: the DVC out of the `<kind>@<variant>` stage."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; allowed: {', '.join(KINDS)}")
    return experiments_dir(cfg) / kind / variant


def run_dir(cfg: Any, kind: str, variant: str, seed: int) -> Path:
    """experiments/<kind>/<variant>/s<seed>: one run."""
    return variant_dir(cfg, kind, variant) / f"s{int(seed)}"


def run_name(variant: str, seed: int) -> str:
    """The run's name in logs and wandb: <variant>-s<seed>."""
    return f"{variant}-s{int(seed)}"
