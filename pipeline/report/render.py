"""Shared renderers: tables as CSV / Markdown / LaTeX, plots as PNG (used by datasets_table and ablations)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io import atomic_write_bytes, atomic_write_text
from pipeline.report.common import COLORS, variant_order
from pipeline.report.load import sort_key_values
from pipeline.report.paper import PaperTable
from pipeline.report.tables import AccuracySpec


# -------------------------------------------------------------------------------------------- rendering
def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "--"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if float(x).is_integer() and abs(x) < 1e12:
            return str(int(x))
        return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"
    return str(x)


def to_markdown(df: pd.DataFrame, caption: str) -> str:
    return f"Table: {caption}\n\n" + df.to_markdown(index=False, floatfmt=".4g", missingval="--") + "\n"


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    sty = df.style.hide(axis="index").format(precision=3, na_rep="--", escape="latex")
    pcols = [c for c in df.columns if c.startswith("p_") and pd.api.types.is_numeric_dtype(df[c])]
    if pcols:  # p-values span many orders of magnitude: 0.000 would hide them
        sty = sty.format("{:.2g}", subset=pcols, na_rep="--")
    sty = sty.format_index(escape="latex", axis=1)
    return sty.to_latex(caption=caption.replace("_", r"\_").replace("`", ""), label=label, hrules=True,
                        position="htbp") + "\n"


def write_table(df: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """<stem>.csv, .md (with the caption) and .tex (booktabs table with caption and label tab:<name>)."""
    atomic_write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    atomic_write_text(stem.with_suffix(".md"), to_markdown(df, caption))
    atomic_write_text(stem.with_suffix(".tex"), to_latex(df, caption, f"tab:{stem.name}"))
    return [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]


def pyplot():
    """matplotlib.pyplot on the Agg backend with one house style (imported lazily: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for s in ("seaborn-v0_8-whitegrid", "seaborn-whitegrid", "ggplot"):
        if s in plt.style.available:
            plt.style.use(s)
            break
    return plt


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(table: pd.DataFrame, spec: AccuracySpec, paper: PaperTable | None, path: Path,
                  mark: tuple[float, str] | None = None) -> None:
    """Accuracy with CIs per variant by key, the paper's curves dashed; `mark` = (x, label) draws a vertical line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {}
    numeric_x = pd.api.types.is_numeric_dtype(table[spec.key])
    xs_all = sort_key_values(table[spec.key])
    pos = (lambda v: v) if numeric_x else (lambda v: xs_all.index(v))
    for v in variant_order(table["variant"].unique()):
        t = table[table["variant"] == v].sort_values(spec.key)
        x = [pos(k) for k in t[spec.key]]
        y = t["accuracy"].to_numpy()
        err = np.vstack([y - t["ci_low"].to_numpy(), t["ci_high"].to_numpy() - y])
        line = ax.errorbar(x, y, yerr=np.nan_to_num(np.clip(err, 0, None)), marker="o", ms=4, capsize=3, label=v,
                           color=COLORS.get(v), lw=1.8 if v == "cmr" else 1.2)
        colors[v] = line.lines[0].get_color()
        if "extrapolation" in t and t["extrapolation"].fillna(False).astype(bool).any():
            ex = t["extrapolation"].fillna(False).astype(bool).to_numpy()
            ax.scatter(np.asarray(x)[ex], y[ex], marker="x", s=60, color=colors[v], zorder=3,
                       label=f"{v}: beyond its training length")
    if paper is not None and numeric_x:
        f = paper.to_fraction
        ax.plot(paper.rows, [b * f for b in paper.baseline], "--", color="black",
                label=f"paper baseline (= window), table {paper.table}")
        ax.plot(paper.rows, [c * f for c in paper.cmr], "--", color=COLORS.get("cmr", "black"), alpha=0.5,
                label=f"paper CMR, table {paper.table}")
    if mark is not None:
        ax.axvline(mark[0], color="gray", linestyle=":", linewidth=1.5, label=mark[1])
    if not numeric_x:
        ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
    elif spec.name == "rare":
        ax.set_xscale("log")
    elif spec.name == "recall_by_distance":
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.3, max(float(table[spec.key].max()), 1.0) * 1.5)
    elif spec.key == "gap_segments":
        ax.set_xscale("log", base=2)
    ax.set_xlabel({"N": "document length N (tokens)", "bucket": "answer's count in training split",
                   "turns": "dialogue turns",
                   "distance_segments": "segments from the fact's to the query's (bin lower edge)",
                   "gap_segments": "segments between the two statements (log)",
                   }.get(spec.key, spec.key))
    ax.set_ylabel("accuracy (95% CI over seeds and documents)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(spec.plot_title or spec.title.split(":")[0])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, never over, the lines
    save_png(fig, path)
    plt.close(fig)


def plot_overhead(t: pd.DataFrame, paper: PaperTable | None, path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for v in variant_order(t["variant"].unique()):
        d = t[t["variant"] == v].sort_values("N")
        (line,) = a1.plot(d["N"], d["ms_per_token"], marker="o", label=v, color=COLORS.get(v))
        if v != "window" and d["ratio_vs_window"].notna().any():
            a2.plot(d["N"], d["ratio_vs_window"], marker="o", color=line.get_color(), label=f"{v} / window (ours)")
            if d["ratio_ci_low"].notna().any():
                a2.fill_between(d["N"], d["ratio_ci_low"], d["ratio_ci_high"], color=line.get_color(), alpha=0.2)
    if paper is not None:
        a2.plot(paper.rows, [c / b for b, c in zip(paper.baseline, paper.cmr)], "--", color="black",
                label=f"paper CMR / baseline, table {paper.table}")
    a1.set_yscale("log")
    a1.set_xlabel("document length N (tokens)")
    a1.set_ylabel("inference ms/token (ours)")
    a1.set_title("Inference cost by document length (Table III)")
    a2.set_xlabel("document length N (tokens)")
    a2.set_ylabel("ms/token ratio")
    a2.set_title("Cost relative to window (the paper's baseline)")
    a1.legend(fontsize=7, ncol=2)
    a2.legend(fontsize=7, ncol=2)
    save_png(fig, path)
    plt.close(fig)
