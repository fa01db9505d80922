"""Training settings (the `train:` node; pipeline/schema.py TrainConfig): the allowed values, the checkpoint
monitor and the curriculum (checks: pipeline/config_checks.py). No torch/lightning imports: validating stays fast."""

from __future__ import annotations

from typing import Any, Optional

from pipeline.config_access import cfg_get as _get
from pipeline.schema import ProgressBar, QueryType, choices

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
