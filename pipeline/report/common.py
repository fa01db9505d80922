"""What every part of the report shares: statuses, verdict words, the variant order, and the
per-seed accuracy and distance binning every table is computed with."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.models.registry import NAMES

PASSED, FAILED, NOT_RUN = "PASSED", "FAILED", "NOT RUN"
SUPPORTED, NOT_SUPPORTED, MIXED = "supported", "not supported", "mixed"
NOT_TESTED = "not tested"  # the evidence was not produced (a stage did not run)
NOT_TESTABLE = "not testable"  # the evidence exists, but a validity check it depends on failed
VARIANT_ORDER = NAMES  # the registry's order
# roles the claims give variants: the paper's method, its baseline (no memory) and the quality ceiling
METHOD, PAPER_BASELINE, CEILING = "cmr", "window", "full"
# the method against every other variant but the ceiling
COMPARISONS = tuple((METHOD, v) for v in NAMES if v not in (METHOD, CEILING))
# the method in red, the others in the registry's order
COLORS = {METHOD: "tab:red", **dict(zip((v for v in NAMES if v != METHOD),
                                        ("tab:gray", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown",
                                         "tab:pink", "tab:olive", "tab:cyan")))}


def variant_order(variants) -> list[str]:
    vs = list(dict.fromkeys(variants))
    return sorted(vs, key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER), v))


def doc_mean_over_seeds(sub: pd.DataFrame) -> float:
    """Mean over seeds of each seed's accuracy (a seed's accuracy: mean over its documents)."""
    if sub.empty:
        return math.nan
    return float(sub.groupby(["seed", "split", "doc_id"])["correct"].mean().groupby(level="seed").mean().mean())


def per_seed_accuracy(sub: pd.DataFrame) -> dict[int, float]:
    """{seed: accuracy (mean over its documents)}."""
    doc = sub.groupby(["seed", "split", "doc_id"])["correct"].mean()
    return {int(s): float(a) for s, a in doc.groupby(level="seed").mean().items()}


def distance_bin(segments: pd.Series) -> pd.Series:
    """Lower edge of the power-of-two bin of a distance in segments: 0, 1, 2, 4, 8, ..."""
    seg = segments.clip(lower=0).astype("int64")
    return seg.where(seg < 1, 2 ** np.floor(np.log2(seg.clip(lower=1))).astype("int64"))


def segment_distance(preds: pd.DataFrame, window: int) -> pd.Series:
    """Segments between the fact's and the query's (what a segment reader's reach is counted in; a
    fact 20 tokens back may sit two segments back). Predictions without query_pos: distance // window."""
    if "query_pos" not in preds:
        return preds["distance"] // window
    return preds["query_pos"] // window - (preds["query_pos"] - preds["distance"]) // window
