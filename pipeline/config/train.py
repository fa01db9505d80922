"""Training settings (the `train:` node; pipeline/config/schema.py TrainConfig): the allowed values, the checkpoint
monitor and the curriculum (checks: pipeline/config/checks.py). No torch/lightning imports: validating stays fast."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from pipeline.config.access import cfg_get as _get
from pipeline.config.schema import ProgressBar, QueryType, choices

# `train` keys that change how a run is executed or shown, not what it learns: a resume may change them (every
# world size trains on the same global batches), and runs that differ only in them share a recipe.
RUNTIME_KEYS = ("threads", "progress_bar", "progress_refresh_rate", "log_every_n_steps", "resume",
                "accelerator", "devices", "num_nodes", "strategy")
PROGRESS_BARS = choices(ProgressBar)
QUERY_TYPES = choices(QueryType)
# Validation splits scored at every validation: val (training-like documents) and val_long
# (evaluation-like long documents from the training seed family; absent from older data folders).
VAL_SPLITS = ("val", "val_long")
# Metrics the best checkpoint may be chosen by (all logged at every validation). `auto`: far recall on
# the metric each variant can reach (see `resolve_monitor`).
MONITORS = ("auto",) + tuple(f"{s}/recall{q}" for s in VAL_SPLITS for q in ("", *(f"_{t}" for t in QUERY_TYPES)))


def resolve_monitor(monitor: str, spans_document: bool, has_val_long: bool) -> str:
    """`auto` -> the metric each variant can reach: far recall on val_long for a memory whose state spans the
    document (MemoryConfig.spans_document: cmr, rmt, ...), and overall recall on val (far, local, sums, dialogue) for the rest: `full` is the ceiling on every
    task of the training length (val_long is longer than anything it trains on; chosen on far recall alone, its
    checkpoint came from the first step far recall hit 1.0, before the sums were learned), and the reach of
    `window` and `xl` ends a segment or two back: their far recall on long documents is at chance by design,
    and a checkpoint chosen on it would be chosen on noise."""
    if monitor != "auto":
        return monitor
    if spans_document:
        return "val_long/recall_far" if has_val_long else "val/recall_far"
    return "val/recall"


def curriculum_limit(curriculum: Any, step: int) -> Optional[int]:
    """Max n_segments allowed at optimizer step `step` (None = no limit)."""
    for stage in curriculum or []:
        until = _get(stage, "until_step")
        if until is None or step < int(until):
            return int(_get(stage, "max_segments"))
    return None


# what must equal the study's for runs beside it (memory baselines, the HF study) to stand beside its own rows
RECIPE_KEYS = ("data", "backbone", "train", "eval")


def recipe_matches(study_cfg: Mapping[str, Any], other_cfg: Mapping[str, Any],
                   keys: Sequence[str] = RECIPE_KEYS) -> list[str]:
    """The `keys` sections whose values differ between the two configs (empty: same recipe); in `train`, the
    keys that only say how a run is executed (RUNTIME_KEYS: threads, processes, ...) are not the recipe."""
    def recipe(cfg: Mapping[str, Any], key: str) -> dict:
        section = dict(cfg.get(key) or {})
        return {k: v for k, v in section.items() if k not in RUNTIME_KEYS} if key == "train" else section

    return [k for k in keys if recipe(study_cfg, k) != recipe(other_cfg, k)]
