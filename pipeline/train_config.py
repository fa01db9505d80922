"""Training settings (the `train:` group of the composed config) and their cross-field checks.

Kept free of torch/lightning imports so that composing and validating the config stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from pipeline.config_access import cfg_get as _get
from pipeline.errors import ConfigError

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "64", "64-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
# `train` keys that change how a run is executed or shown, not what it learns: a resume may change them (every
# world size trains on the same global batches), and runs that differ only in them share a recipe.
RUNTIME_KEYS = ("threads", "progress_bar", "progress_refresh_rate", "log_every_n_steps", "resume",
                "accelerator", "devices", "num_nodes", "strategy")
PROGRESS_BARS = ("tqdm", "rich", "none")
QUERY_TYPES = ("far", "local", "numeric", "dialogue")
# Validation splits scored at every validation: val (training-like documents) and val_long
# (evaluation-like long documents from the training seed family; absent from older data folders).
VAL_SPLITS = ("val", "val_long")
# Metrics the best checkpoint may be chosen by (all logged at every validation). `auto`: far recall on
# the metric each variant can reach (see `resolve_monitor`).
MONITORS = ("auto",) + tuple(f"{s}/recall{q}" for s in VAL_SPLITS for q in ("", *(f"_{t}" for t in QUERY_TYPES)))


@dataclass
class CurriculumStage:
    """Until optimizer step `until_step` (exclusive; null = to the end), train on documents of at
    most `max_segments` segments. Train short first: memory has to work across one boundary before
    it can work across three."""

    until_step: Optional[int] = None
    max_segments: int = 2


@dataclass
class TrainConfig:
    # optimisation
    batch_size: int = 64
    # tokens per batch at most (null = off): a batch of long documents holds fewer of them, so the long
    # pool of training documents costs about what a short batch costs (README "Time budget")
    max_batch_tokens: Optional[int] = None
    lr: float = 3.0e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.01  # applied to matrices only (not biases / norms)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8  # AdamW epsilon
    grad_clip: float = 1.0  # Trainer.gradient_clip_val (norm); 0 = off
    max_steps: int = 3000
    lm_loss_weight: float = 0.0  # weight of next-token loss on all tokens, added to the answer loss
    # weight of each query type's answers in the answer loss (a weighted mean; types not named weigh 1):
    # the types are far from equally common (numeric sums are ~6% of the default study's answers)
    answer_loss_weights: Dict[str, float] = field(default_factory=lambda: {q: 1.0 for q in QUERY_TYPES})
    # curriculum over training documents' n_segments; empty = all documents from step 0
    curriculum: List[CurriculumStage] = field(
        default_factory=lambda: [
            CurriculumStage(until_step=500, max_segments=2),
            CurriculumStage(until_step=None, max_segments=4),
        ]
    )
    # validation / checkpoints
    val_check_interval: int = 250  # optimizer steps between validations (and checkpoints)
    limit_val_batches: float = 1.0  # int-valued = number of batches, fraction = share of val batches
    val_batch_size: int = 64
    monitor: str = "auto"  # best.ckpt = max of this; auto: see resolve_monitor
    target_recall: float = 0.9  # steps_to_90: first validation where the monitored far recall >= this
    num_sanity_val_steps: int = 0
    # runtime
    threads: int = 1  # torch.set_num_threads; 1 measured fastest for tiny models on 2 cores
    accelerator: str = "cpu"
    devices: int = 1  # processes per node; > 1 with strategy ddp: batch_size stays the global batch
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    log_every_n_steps: int = 50
    progress_bar: str = "tqdm"
    progress_refresh_rate: int = 25
    resume: bool = True  # continue from checkpoints/last.ckpt when present




# Memories whose state spans the whole document, so far recall on long documents is within their reach.
DOCUMENT_MEMORIES = ("cmr", "rmt", "armt", "memorizing")


def resolve_monitor(monitor: str, variant_name: str, has_val_long: bool) -> str:
    """`auto` -> the metric each variant can reach: far recall on val_long for a document-spanning memory
    (cmr), and overall recall on val (far, local, sums, dialogue) for the rest: `full` is the ceiling on every
    task of the training length (val_long is longer than anything it trains on; chosen on far recall alone, its
    checkpoint came from the first step far recall hit 1.0, before the sums were learned), and the reach of
    `window` and `xl` ends a segment or two back: their far recall on long documents is at chance by design,
    and a checkpoint chosen on it would be chosen on noise."""
    if monitor != "auto":
        return monitor
    if variant_name in DOCUMENT_MEMORIES:
        return "val_long/recall_far" if has_val_long else "val/recall_far"
    return "val/recall"


def curriculum_limit(curriculum: Any, step: int) -> Optional[int]:
    """Max n_segments allowed at optimizer step `step` (None = no limit)."""
    for stage in curriculum or []:
        until = _get(stage, "until_step")
        if until is None or step < int(until):
            return int(_get(stage, "max_segments"))
    return None


def train_settings(cfg: Any) -> DictConfig:
    """`cfg.train` merged over TrainConfig's defaults (typos in keys fail here, not mid-run)."""
    part = cfg.get("train") if cfg is not None else None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), part or {})
    except Exception as e:  # omegaconf's ValidationError / ConfigKeyError
        raise ConfigError(f"bad train config: {e}") from None
    return merged


def validate(train_cfg: Any, full_cfg: Any = None) -> None:
    """Cross-field checks for `cfg.train` (raises ConfigError naming the key)."""
    t = train_cfg
    _check_numbers(t)
    _check_loss_weights(t)
    choices = {"accelerator": ACCELERATORS, "precision": PRECISIONS, "strategy": STRATEGIES,
               "progress_bar": PROGRESS_BARS,
               "monitor": MONITORS}
    for k, allowed in choices.items():
        v = _get(t, k)
        if v is not None and str(v) not in allowed:
            raise ConfigError(f"train.{k}={v!r} is not allowed; allowed: {', '.join(allowed)}")

    world = int(_get(t, "devices") or 1) * int(_get(t, "num_nodes") or 1)
    if world > 1 and int(_get(t, "batch_size") or 0) % world:
        raise ConfigError(f"train.batch_size={_get(t, 'batch_size')} is the global batch and must split evenly over "
                          f"devices x num_nodes = {world} processes")
    _check_curriculum(list(_get(t, "curriculum") or []), _get(full_cfg, "data"))


def _check_numbers(t: Any) -> None:
    """Sizes and rates: positive, non-negative or in [0, 1] as each must be."""
    def pos(key: str, strict: bool = True, kind=float) -> None:
        v = _get(t, key)
        if v is None:
            return
        try:
            fv = kind(v)
        except (TypeError, ValueError):
            raise ConfigError(f"train.{key} must be a number, got {v!r}") from None
        if not math.isfinite(fv) or (fv <= 0 if strict else fv < 0):
            raise ConfigError(f"train.{key} must be {'> 0' if strict else '>= 0'} and finite, got {v!r}")

    for k in ("batch_size", "max_batch_tokens", "max_steps", "val_check_interval", "val_batch_size", "threads",
              "devices", "num_nodes", "log_every_n_steps"):
        pos(k, kind=int)
    for k in ("lr",):
        pos(k)
    for k in ("eps",):
        pos(k)
    for k in ("warmup_steps", "weight_decay", "grad_clip", "lm_loss_weight", "num_sanity_val_steps",
              "min_lr_ratio", "limit_val_batches"):
        pos(k, strict=False)
    for k in ("beta1", "beta2", "min_lr_ratio", "target_recall"):
        v = _get(t, k)
        if v is not None and not (0.0 <= float(v) <= 1.0):
            raise ConfigError(f"train.{k} must be in [0, 1], got {v!r}")
    lvb = _get(t, "limit_val_batches")
    if lvb is not None and float(lvb) > 1.0 and float(lvb) != int(float(lvb)):
        raise ConfigError(f"train.limit_val_batches: a fraction <= 1.0 or a whole number of batches, got {lvb!r}")


def _check_loss_weights(t: Any) -> None:
    for q, w in dict(_get(t, "answer_loss_weights") or {}).items():
        if str(q) not in QUERY_TYPES:
            raise ConfigError(f"train.answer_loss_weights: unknown query type {q!r}; known: {', '.join(QUERY_TYPES)}")
        try:
            fw = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"train.answer_loss_weights.{q} must be a number, got {w!r}") from None
        if not math.isfinite(fw) or fw < 0:
            raise ConfigError(f"train.answer_loss_weights.{q} must be >= 0 and finite, got {w!r}")


def _check_curriculum(stages: list, data: Any) -> None:
    """Stages with increasing until_step, only the last open-ended, the first allowing the shortest document."""
    prev_until = -1
    for i, st in enumerate(stages):
        ms, until = _get(st, "max_segments"), _get(st, "until_step")
        if ms is None or int(ms) < 1:
            raise ConfigError(f"train.curriculum[{i}].max_segments must be >= 1, got {ms!r}")
        if until is None:
            if i != len(stages) - 1:
                raise ConfigError(f"train.curriculum[{i}].until_step is null but is not the last stage")
        else:
            if int(until) <= prev_until:
                raise ConfigError(f"train.curriculum until_step must increase; stage {i} has {until!r}")
            prev_until = int(until)

    lo = _get(data, "train_min_segments")
    if stages and lo is not None:
        first = int(_get(stages[0], "max_segments"))
        if first < int(lo):
            raise ConfigError(
                f"train.curriculum[0].max_segments={first} is below data.train_min_segments={lo}: "
                "no training document would be allowed at step 0"
            )
