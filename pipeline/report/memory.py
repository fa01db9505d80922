"""CMR's misses taken apart: for each far recall query (from the attention stage's rows of cmr's
reweave layers), was the fact ever captured into a bank, still retained when the query read the
bank, did the read find it (the query's highest-attention slot holds one of the fact's tokens), and
was it answered. Each far query is charged to the first stage it failed:

    scorer   - no token of the fact was ever captured (the salience scorer passed it over)
    eviction - captured, but evicted before the query's segment read the bank
    read     - retained, but the query's top slot is another one
    binding  - the top slot holds the fact, yet the answer is wrong
    correct  - answered

by document length N and by fact-to-query distance, so a loss points at one part of the mechanism."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import atomic_write_bytes, atomic_write_text
from pipeline.report.common import distance_bin

STAGES = ("scorer", "eviction", "read", "binding", "correct")
RATES = ("captured_value", "captured_any", "value_in_memory", "fact_in_memory", "top_slot_on_fact", "correct")


def far_queries(attention: pd.DataFrame) -> pd.DataFrame:
    """One row per cmr far query (seed, length, doc, query): flags pooled over the reweave layers (the
    layers that read a bank: retained/read anywhere counts), and the stage it was lost at."""
    a = attention[(attention["variant"] == "cmr") & (attention["query_type"] == "far")]
    if a.empty:
        return pd.DataFrame(columns=["seed", "length", "doc_id", "query_idx", "distance_segments", *RATES, "lost_at"])
    reweave = a.groupby("layer")["n_slots"].max()
    a = a[a["layer"].isin(reweave[reweave > 0].index)]
    key = ["seed", "length", "doc_id", "query_idx"]
    q = a.groupby(key, sort=True).agg(
        distance=("distance", "first"), distance_segments=("distance_segments", "first"),
        mass_fact_slots=("mass_fact_slots", "max"), **{f: (f, "max") for f in RATES}).reset_index()
    q["distance_segments"] = distance_bin(q["distance_segments"])  # the attention stage counts segments
    q["lost_at"] = np.select(
        [~q["captured_any"], ~q["fact_in_memory"], ~q["top_slot_on_fact"], ~q["correct"]],
        list(STAGES[:4]), default="correct")
    return q


def funnel(q: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per value of `by`: n far queries, the share passing each stage, where the rest were lost, the
    read's accuracy given retention and the answer's given a found slot, and the mean slot mass on the fact."""
    rows = []
    for k, g in q.groupby(by, sort=True):
        row = {by: int(k), "n": int(len(g)), "seeds": int(g["seed"].nunique())}
        row.update({f: float(g[f].mean()) for f in RATES})
        row.update({f"lost_{s}" if s != "correct" else "answered": float((g["lost_at"] == s).mean()) for s in STAGES})
        kept = g[g["fact_in_memory"]]
        found = g[g["top_slot_on_fact"]]
        row["read_given_retained"] = float(kept["top_slot_on_fact"].mean()) if len(kept) else float("nan")
        row["correct_given_found"] = float(found["correct"].mean()) if len(found) else float("nan")
        row["mass_fact_slots"] = float(g["mass_fact_slots"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def plot_funnel(tables: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"scorer": "tab:purple", "eviction": "tab:orange", "read": "tab:blue", "binding": "tab:olive",
              "correct": "tab:green"}
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 3.8), squeeze=False)
    for ax, (by, t) in zip(axes[0], tables.items()):
        x = np.arange(len(t))
        bottom = np.zeros(len(t))
        for s in STAGES:
            col = "answered" if s == "correct" else f"lost_{s}"
            ax.bar(x, t[col], bottom=bottom, color=colors[s], label=s if s == "correct" else f"lost: {s}")
            bottom += t[col].to_numpy()
        ax.set_xticks(x, [str(v) for v in t[by]])
        ax.set_xlabel({"length": "document length N (tokens)", "distance_segments":
                       "fact-to-query distance (segments, lower edge of a power-of-two bin)"}.get(by, by), fontsize=8)
        ax.set_ylabel("share of far queries")
        ax.set_ylim(0, 1)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("cmr: where each far query is lost (scorer -> eviction -> read -> binding)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_memory(attention: pd.DataFrame, tables_dir: Path, plots_dir: Path, write_table):
    """tables/memory_by_length.*, tables/memory_by_distance.*, tables/memory.png, plots/memory.csv;
    None when the attention stage has no cmr far queries."""
    q = far_queries(attention)
    if q.empty:
        return None
    tables = {"length": funnel(q, "length"), "distance_segments": funnel(q, "distance_segments")}
    cap = ("cmr's far recall queries (attention stage documents) charged to the first stage they fail: scorer (never "
           "captured), eviction (captured, not retained), read (retained, top slot elsewhere), binding (top slot on "
           "the fact, wrong answer); plus the share passing each stage and two conditional rates")
    write_table(tables["length"], tables_dir / "memory_by_length", cap + ", by document length N")
    write_table(tables["distance_segments"], tables_dir / "memory_by_distance", cap + ", by distance (segments)")
    atomic_write_text(plots_dir / "memory.csv", tables["length"].to_csv(index=False))
    plot_funnel(tables, tables_dir / "memory.png")
    return tables
