"""Table II: exact-match recall of the planted value token at each query, by document length N.

Also split by query_type: "far" queries (fact in an earlier segment) are what memory is for;
"local" ones (fact in the same segment) any model can answer, so the far rows show whether a
variant really carries information across segments (window should sit at chance there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.evaluate.predict import accuracy_table, predict_splits

TASK = "recall"


def splits(cfg: Any) -> list[tuple[str, int]]:
    return [(f"recall_{int(n)}", int(n)) for n in cfg.data.eval_lengths]


def select(pred: pd.DataFrame) -> pd.DataFrame:
    """This table's rows (task column = evaluation id; the rare split's recall documents are task 'rare')."""
    return pred[pred["task"] == TASK]


def score(pred: pd.DataFrame) -> pd.DataFrame:
    """Rows: variant, seed, length, n, correct, accuracy."""
    return accuracy_table(select(pred), ["length"])


def score_by_type(pred: pd.DataFrame) -> pd.DataFrame:
    """Rows: variant, seed, length, query_type (far/local), n, correct, accuracy."""
    return accuracy_table(select(pred), ["length", "query_type"])


def predict(model: Any, cfg: Any, *, variant: str, seed: int, train_counts: Any, device: str = "cpu",
            loader: Any = None) -> pd.DataFrame:
    return predict_splits(model, cfg.paths.data_dir, splits(cfg), task=TASK, variant=variant, seed=seed,
                          batch_size=cfg.eval.batch_size, max_docs=cfg.eval.max_docs_per_split,
                          train_counts=train_counts, device=device, loader=loader)


# Keys under which a manifest may record how many distinct values a recall query can have.
# The data stage's manifest has vocab.common_values: the values recall_<N> documents draw from.
_VALUE_COUNT_KEYS = ("num_values", "n_values", "common_values", "value_vocab_size")


def _find_key(node: Any, keys: tuple[str, ...]) -> int | None:
    if isinstance(node, dict):
        for k in keys:
            if isinstance(node.get(k), int) and node[k] > 0:
                return node[k]
        for v in node.values():
            found = _find_key(v, keys)
            if found is not None:
                return found
    return None


def chance_level(data_dir: str | Path) -> float | None:
    """1 / (number of possible answer values) from data/manifest.json (vocab.common_values: recall
    documents draw their values from that set), or None if the manifest does not say (then the
    report states chance itself). A model that only learned "answer some value seen in this
    document" does better than this (about 1 / facts per document); the far-vs-local split shows it."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    n = _find_key(manifest, _VALUE_COUNT_KEYS)
    return 1.0 / n if n else None
