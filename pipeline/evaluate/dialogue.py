"""Table V proxy: the paper's "response coherence (score / 10)" was judged on free text; here the
consistency score is 10 x the accuracy of facts stated in early turns and asked back in the last
turn, by number of turns. It is a consistency proxy, not human-judged coherence."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.evaluate.predict import accuracy_table, predict_splits

TASK = "dialogue"
SCALE = 10.0


def splits(cfg: Any) -> list[tuple[str, int]]:
    return [(f"dialogue_{int(t)}", int(t)) for t in cfg.data.dialogue_turns]


def select(pred: pd.DataFrame) -> pd.DataFrame:
    return pred[pred["task"] == TASK]


def score(pred: pd.DataFrame) -> pd.DataFrame:
    """Rows: variant, seed, turns, n, correct, accuracy, score (= 10 x accuracy)."""
    table = accuracy_table(select(pred), ["length"]).rename(columns={"length": "turns"})
    table["score"] = SCALE * table["accuracy"]
    return table


def predict(model: Any, cfg: Any, *, variant: str, seed: int, train_counts: Any, device: str = "cpu",
            loader: Any = None) -> pd.DataFrame:
    # length = number of turns (from the split name), not tokens.
    return predict_splits(model, cfg.paths.data_dir, splits(cfg), task=TASK, variant=variant, seed=seed,
                          batch_size=cfg.eval.batch_size, max_docs=cfg.eval.max_docs_per_split,
                          train_counts=train_counts, device=device, loader=loader)
