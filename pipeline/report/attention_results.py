"""The attention stage's outputs, read into the report's attention table (claim 6)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from pipeline.errors import DataError
from pipeline.io import atomic_write_text
from pipeline.paths import experiments_dir, run_dir
from pipeline.report.render import write_table
from pipeline.config.schema import ReportConfig


ATTENTION_FILE = "attention.parquet"
ATTENTION_METRICS = ("entropy", "mass_fact", "mass_memory", "mass_fact_slots")


# -------------------------------------------------------------------------------------------- attention
def _attention_module():
    """The attention stage's module (pipeline/evaluate/attention.py), imported only when its outputs exist."""
    try:
        return importlib.import_module("pipeline.evaluate.attention")
    except ImportError as e:
        raise DataError(f"attention outputs exist but pipeline.evaluate.attention cannot be imported: {e}") from e


def attention_paths(cfg: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[Path] | None:
    """The runs' attention files, or None when experiments/attention/ does not exist (not tested).

    When the folder exists every run's file must too: a missing one raises DataError naming it.
    """
    root = experiments_dir(cfg) / "attention"
    if not root.is_dir():
        return None
    paths = [run_dir(cfg, "attention", r["variant"], r["seed"]) / ATTENTION_FILE for r in runs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError("attention outputs missing: " + ", ".join(missing)
                        + " (run the attention stage, `dvc repro attention`, for these runs)")
    return paths


def build_attention(paths: Sequence[Path], rc: ReportConfig, tables_dir: Path,
                    plots_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results/tables/attention.{csv,md,tex,png} and results/plots/attention.csv from the attention files;
    returns (the table, the raw per-query rows)."""
    mod = _attention_module()
    raw = mod.load_attention(list(paths))
    table = mod.attention_table(raw, ci_level=rc.ci_level, n_resamples=rc.n_resamples, seed=rc.seed)
    if table is None or len(table) == 0:
        raise DataError("attention_table returned no rows from " + ", ".join(map(str, paths)))
    write_table(table, tables_dir / "attention",
                "Attention at query positions, per variant and layer: entropy (nats) and attention mass on the "
                "fact's position, on memory, and on memory slots holding the fact; means with "
                f"{int(rc.ci_level * 100)}% bootstrap CIs, n")
    mod.plot_attention(raw, tables_dir / "attention.png")
    plot = table.rename(columns={f"{m}_mean": m for m in ATTENTION_METRICS})
    cols = [c for c in ("variant", "layer", *ATTENTION_METRICS) if c in plot.columns]
    atomic_write_text(plots_dir / "attention.csv", plot[cols].to_csv(index=False))
    return table, raw
