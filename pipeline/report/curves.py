"""Learning curves per seed: far and local recall on the short and the long validation split, and the
validation loss, against the optimizer step, for every variant and seed (from each training run's
metrics.json `val_curve`), plus steps-to-90% per seed. A seed that learns late or not at all shows here,
not only as a low mean."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping

import pandas as pd

from pipeline.io import atomic_write_bytes, atomic_write_text
from pipeline.report.common import COLORS, variant_order

# (column in the curves table, metric in the training runs' val_curve)
CURVE_METRICS = (("val_recall_far", "val/recall_far"), ("val_long_recall_far", "val_long/recall_far"),
                 ("val_recall_local", "val/recall_local"), ("val_recall_numeric", "val/recall_numeric"),
                 ("val_loss", "val/loss"), ("val_long_loss", "val_long/loss"))
PANELS = (("val_recall_far", "far recall, val (training-like)"),
          ("val_long_recall_far", "far recall, val_long (evaluation-like)"),
          ("val_recall_local", "local recall, val"), ("val_recall_numeric", "sum accuracy, val"),
          ("val_loss", "answer loss, val"), ("val_long_loss", "answer loss, val_long"))


def curves_table(train: Mapping[str, dict]) -> pd.DataFrame:
    """One row per (run, validation step): variant, seed, step and every CURVE_METRICS column (NaN where
    a run did not log it, e.g. data without val_long)."""
    rows = []
    for name, m in train.items():
        variant, _, seed = name.rpartition("-s")
        for e in (m or {}).get("val_curve") or []:
            row = {"variant": variant, "seed": int(seed), "step": int(e["step"])}
            row.update({col: e.get(key, math.nan) for col, key in CURVE_METRICS})
            rows.append(row)
    cols = ["variant", "seed", "step", *(c for c, _ in CURVE_METRICS)]
    df = pd.DataFrame(rows, columns=cols)
    order = {v: i for i, v in enumerate(variant_order(df["variant"]))}
    return df.sort_values(["variant", "seed", "step"], key=lambda c: c.map(order) if c.name == "variant" else c,
                          kind="stable").reset_index(drop=True)


def steps_to(curves: pd.DataFrame, train: Mapping[str, dict], target: float) -> pd.DataFrame:
    """Per run: the first validation step at which far recall reached `target` on val and on val_long
    (None: never), the checkpoint's monitor, its step and value, and the final far recall."""
    rows = []
    for (variant, seed), g in curves.groupby(["variant", "seed"], sort=False):
        m = train.get(f"{variant}-s{seed}") or {}
        row = {"variant": variant, "seed": int(seed)}
        for col in ("val_recall_far", "val_long_recall_far"):
            hit = g[g[col] >= target]
            row[f"steps_to_{int(target * 100)}_{col[:-11] or 'val'}"] = int(hit["step"].iloc[0]) if len(hit) else None
        last = g.iloc[-1]
        row.update({"monitor": m.get("monitor"), "best_step": m.get("best_step"),
                    "best_value": m.get("val_best_monitor"), "last_val_recall_far": last["val_recall_far"],
                    "last_val_long_recall_far": last["val_long_recall_far"], "steps": int(last["step"])})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_curves(curves: pd.DataFrame, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if curves[p[0]].notna().any()]
    ncol = 2
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(11, 3.2 * nrow), squeeze=False)
    for ax, (col, title) in zip(axes.flat, panels):
        for (variant, seed), g in curves.groupby(["variant", "seed"], sort=False):
            ax.plot(g["step"], g[col], color=COLORS.get(variant), lw=1.2, alpha=0.85,
                    ls=("-", "--", ":", "-.")[int(seed) % 4], label=f"{variant} s{seed}")
        if "recall" in col:
            ax.axhline(target, color="k", lw=0.6, ls=":")
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle("Learning curves per variant and seed (line style = seed)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_curves(train: Mapping[str, dict], tables_dir: Path, plots_dir: Path, target: float,
                 write_table) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """tables/learning_curves.png, tables/steps_to_target.{csv,md,tex}, plots/learning_curves.csv
    (the DVC plot); None when no run recorded a curve."""
    curves = curves_table(train)
    if curves.empty:
        return None
    atomic_write_text(plots_dir / "learning_curves.csv", curves.to_csv(index=False))
    plot_curves(curves, tables_dir / "learning_curves.png", target)
    steps = steps_to(curves, train, target)
    write_table(steps, tables_dir / "steps_to_target",
                f"Steps to {int(target * 100)}% far recall per run, on val (training-like documents) and val_long "
                "(evaluation-like long documents); None = never reached. monitor/best_step/best_value: the "
                "checkpoint the evaluation uses.")
    return curves, steps

