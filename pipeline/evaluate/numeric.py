"""Table VI: exact-match accuracy of the sum token for "<VAR1> plus <VAR2> equals" queries, by N.
The model must recall two planted values and combine them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.evaluate.predict import accuracy_table, predict_splits

TASK = "numeric"


def splits(cfg: Any) -> list[tuple[str, int]]:
    return [(f"numeric_{int(n)}", int(n)) for n in cfg.data.eval_lengths]


def select(pred: pd.DataFrame) -> pd.DataFrame:
    return pred[pred["task"] == TASK]


def score(pred: pd.DataFrame) -> pd.DataFrame:
    """Rows: variant, seed, length, n, correct, accuracy."""
    return accuracy_table(select(pred), ["length"])


def score_by_type(pred: pd.DataFrame) -> pd.DataFrame:
    """Rows: variant, seed, length, query_type, n, correct, accuracy."""
    return accuracy_table(select(pred), ["length", "query_type"])


def predict(model: Any, cfg: Any, *, variant: str, seed: int, train_counts: Any, device: str = "cpu",
            loader: Any = None) -> pd.DataFrame:
    return predict_splits(model, cfg.paths.data_dir, splits(cfg), task=TASK, variant=variant, seed=seed,
                          batch_size=cfg.eval.batch_size, max_docs=cfg.eval.max_docs_per_split,
                          train_counts=train_counts, device=device, loader=loader)
