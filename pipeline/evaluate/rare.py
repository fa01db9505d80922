"""Table IV: recall of rare values, bucketed by how often the answer token ACTUALLY occurs in the
saved training split (data/train_counts.json), not by the class the generator intended.

A query goes to the configured bucket (rare class) nearest to its measured count on a log scale
(so 12 -> 10, 300 -> 500 with buckets 10/50/100/500/1000; the edges are geometric midpoints).
Answers never seen in training get bucket 0, reported separately rather than hidden in bucket 10.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from pipeline.evaluate.predict import accuracy_table, predict_splits

TASK = "rare"
SPLIT = "rare"


def splits(cfg: Any) -> list[tuple[str, None]]:
    return [(SPLIT, None)]  # length = the document's token count


def assign_bucket(count: int, buckets: Sequence[int]) -> int:
    """The bucket nearest to `count` in log space (ties -> the smaller bucket); 0 for unseen tokens."""
    if count <= 0:
        return 0
    ordered = sorted(int(b) for b in buckets)
    return min(ordered, key=lambda b: abs(math.log(count) - math.log(b)))


def select(pred: pd.DataFrame) -> pd.DataFrame:
    return pred[pred["task"] == TASK]


def with_buckets(pred: pd.DataFrame, buckets: Sequence[int] | None) -> pd.DataFrame:
    """`bucket` column (from the measured answer_train_count) on every row; -1 when no buckets are
    configured. The report reads it for the task == 'rare' rows."""
    pred = pred.copy()
    if buckets:
        pred["bucket"] = [assign_bucket(int(c), buckets) for c in pred["answer_train_count"]]
    else:
        pred["bucket"] = -1
    pred["bucket"] = pred["bucket"].astype("int64")
    return pred


def score(pred: pd.DataFrame, buckets: Sequence[int]) -> pd.DataFrame:
    """Rows: variant, seed, bucket, n, correct, accuracy, count_min, count_max (measured counts in the
    bucket, so a reader sees how well the generator hit its targets). Buckets are always recomputed
    from answer_train_count, never trusted from an intended class."""
    df = with_buckets(select(pred), buckets)
    table = accuracy_table(df, ["bucket"])
    if df.empty:
        return table.assign(count_min=[], count_max=[])
    spread = (df.groupby(["variant", "seed", "bucket"])["answer_train_count"]
                .agg(count_min="min", count_max="max").reset_index())
    return table.merge(spread, on=["variant", "seed", "bucket"], how="left")


def predict(model: Any, cfg: Any, *, variant: str, seed: int, train_counts: Any, device: str = "cpu",
            loader: Any = None) -> pd.DataFrame:
    return predict_splits(model, cfg.paths.data_dir, splits(cfg), task=TASK, variant=variant, seed=seed,
                          batch_size=cfg.eval.batch_size, max_docs=cfg.eval.max_docs_per_split,
                          train_counts=train_counts, device=device, loader=loader)
