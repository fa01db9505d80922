"""Table II: exact-match recall of the planted value token at each query, by document length N.

Also split by query_type: "far" queries (fact in an earlier segment) are what memory is for;
"local" ones (fact in the same segment) any model can answer, so the far rows show whether a
variant really carries information across segments (window should sit at chance there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.evaluate.predict import ByLengthTask

TASK = "recall"
_TASK = ByLengthTask(TASK)
splits, select, score, score_by_type, predict = (
    _TASK.splits, _TASK.select, _TASK.score, _TASK.score_by_type, _TASK.predict)


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
