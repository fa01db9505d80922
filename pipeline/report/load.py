"""Loading the study: evaluation runs' predictions and metrics, the training length of each split."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from pipeline.config.data import as_data_config
from pipeline.errors import DataError
from pipeline.paths import run_name


REQUIRED_COLUMNS = ("variant", "seed", "split", "task", "length", "doc_id", "query_idx", "query_type",
                    "answer", "pred", "correct")


def plain_config(cfg: Any) -> dict:
    """Accept an OmegaConf DictConfig or a plain mapping; return plain dicts."""
    if cfg is None:
        return {}
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return dict(cfg)


# ---------------------------------------------------------------------------------------------- loading
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt JSON file {path}: {e}") from e


def parse_run_dir(path: str | Path) -> tuple[str, int]:
    """(variant, seed) of a run folder experiments/<kind>/<variant>/s<seed>."""
    path = Path(path)
    m = re.fullmatch(r"s(\d+)", path.name)
    if not m or not path.parent.name:
        raise DataError(f"{path} is not a run folder <kind>/<variant>/s<seed> (see pipeline/paths.py)")
    return path.parent.name, int(m.group(1))


def load_eval_run(run_dir_: str | Path) -> tuple[pd.DataFrame, dict | None, dict | None]:
    """(predictions, overhead or None, metrics or None) of one experiments/eval/<variant>/s<seed>/ dir."""
    run_dir_ = Path(run_dir_)
    if not run_dir_.is_dir():
        raise DataError(f"evaluation output missing: {run_dir_} (run `python -m pipeline.evaluate` for it)")
    pq = run_dir_ / "predictions.parquet"
    if not pq.is_file():
        raise DataError(f"evaluation output missing: {pq}")
    try:
        df = pd.read_parquet(pq)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"corrupt predictions file {pq}: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{pq} lacks columns {missing}")
    if df["correct"].isna().any():
        raise DataError(f"{pq}: column `correct` has missing values")
    if (df["task"] == "rare").any() and "bucket" not in df.columns:
        raise DataError(f"{pq}: rare-task rows need a `bucket` column")
    df = df.copy()
    df["correct"] = df["correct"].astype(bool)
    df["variant"] = df["variant"].astype(str)
    df["seed"] = df["seed"].astype(int)
    runs = set(zip(df["variant"], df["seed"]))
    expected = parse_run_dir(run_dir_)
    if runs != {expected}:
        raise DataError(f"{pq} holds runs {sorted(runs)} but its folder says {expected}")
    df["run"] = run_name(*expected)
    overhead = read_json(run_dir_ / "overhead.json") if (run_dir_ / "overhead.json").is_file() else None
    metrics = read_json(run_dir_ / "metrics.json") if (run_dir_ / "metrics.json").is_file() else None
    return df, overhead, metrics


def sort_key_values(values: Iterable[Any]) -> list[Any]:
    vals = list(dict.fromkeys(values))
    try:
        return sorted(vals, key=lambda v: float(v))
    except (TypeError, ValueError):
        return sorted(vals, key=str)


def norm_key(v: Any) -> Any:
    """Keys as ints where they are integral (N, turns, counts), else as given."""
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return v


# ------------------------------------------------------------------------------- training length (extrapolation)
@dataclass(frozen=True)
class TrainLength:
    """How long the training documents were: beyond it `full` sees positions it never trained on."""

    tokens: int | None  # longest training document's segments * backbone.window (or the manifest's longest train doc)
    segments: int | None  # the same in segments of W tokens
    source: str


def train_length(cfg: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> TrainLength:
    window = int((cfg.get("backbone") or {}).get("window") or 0)
    data = cfg.get("data") or {}
    segs = as_data_config(data).longest_train_segments if data.get("train_max_segments") else None
    if segs and window:
        return TrainLength(int(segs) * window, int(segs),
                           "the longest training document (data.train_max_segments, or data.train_long_segments "
                           "with a long pool) x backbone.window")
    tr = ((manifest or {}).get("splits") or {}).get("train") or {}
    if tr.get("max_tokens") and window:
        return TrainLength(int(tr["max_tokens"]), math.ceil(int(tr["max_tokens"]) / window),
                           "data/manifest.json: longest train document")
    return TrainLength(None, None, "unknown (no data.train_max_segments/backbone.window in the config)")


def doc_tokens_by_split(preds: pd.DataFrame, manifest: Mapping[str, Any] | None,
                        cfg: Mapping[str, Any]) -> dict[str, float]:
    """Longest document (tokens) of each evaluated split: the manifest's, else from the predictions' length."""
    splits = (manifest or {}).get("splits") or {}
    turn_len = (cfg.get("data") or {}).get("dialogue_turn_len")
    out: dict[str, float] = {}
    for (split, task), g in preds.groupby(["split", "task"]):
        sp = splits.get(split) or {}
        if sp.get("max_tokens") is not None:
            out[split] = float(sp["max_tokens"])
        elif task == "dialogue":
            out[split] = float(g["length"].max() * turn_len) if turn_len else math.nan
        else:
            out[split] = float(g["length"].max())
    return out
