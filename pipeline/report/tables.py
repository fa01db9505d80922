"""The report's tables: accuracy cells with CIs and paired tests (Holm-corrected), Table III's overhead."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.paths import run_name
from pipeline.report.common import COMPARISONS, variant_order
from pipeline.report.common import doc_mean_over_seeds as _doc_mean_over_seeds
from pipeline.report.load import norm_key, sort_key_values
from pipeline.report.paper import PaperTable
from pipeline.config.schema import ReportConfig
from pipeline.stats import (align_pairs, bootstrap_ratio_ci, crossed_bootstrap_ci, holm, mcnemar_from_outcomes)


BASELINE_CAPTION = "Paper baseline = the paper's baseline model, which is our `window` variant."


# ------------------------------------------------------------------------------------------ table specs
@dataclass(frozen=True)
class AccuracySpec:
    name: str  # eval id, file stem
    task: str  # predictions' task value
    key: str  # column name in our table
    source: str  # predictions column giving the key
    title: str
    family: str = "paper"  # Holm family: the paper's tables are corrected together
    plot_title: str = ""  # what its figure shows, in a few words


ACCURACY_TABLES = (
    AccuracySpec("recall", "recall", "N", "length", "Table II: token recall accuracy by document length N (tokens)",
                 plot_title="Recall by document length (Table II)"),
    AccuracySpec("rare", "rare", "bucket", "bucket",
                 "Table IV: recall of rare tokens by the answer's measured count in the training split",
                 plot_title="Rare-token recall by training count (Table IV)"),
    AccuracySpec("numeric", "numeric", "N", "length", "Table VI: numerical reasoning (sum) accuracy by length N",
                 plot_title="Sum accuracy by document length (Table VI)"),
    AccuracySpec("dialogue", "dialogue", "turns", "length",
                 "Table V: dialogue consistency (accuracy of facts asked back; paper: coherence score / 10) "
                 "by number of turns", plot_title="Dialogue consistency by turns (Table V)"),
    AccuracySpec("recall_by_distance", "recall", "distance_segments", "distance_segments",
                 "Recall accuracy by fact-to-query distance in segments of W tokens (bins by lower edge: "
                 "[0,1), [1,2), [2,4), ...); distances beyond the longest training document are extrapolation",
                 family="distance", plot_title="Recall by fact-to-query distance"),
)




FAMILY_TEXT = {
    "paper": "Holm-corrected over all cmr-vs-<memory> cells (every variant but the `full` ceiling) "
             "of tables II, IV, V and VI together",
    "distance": "Holm-corrected over this table's cmr-vs-<memory> cells (its own family: "
                "the same queries as table II, sliced by distance)",
    "ambiguous": "Holm-corrected over this table's cmr-vs-<memory> cells (its own family: claim 7, read on the "
                 "stress stage's update documents)",
    "qualifier": "Holm-corrected over this table's cmr-vs-<memory> cells (its own family: claim 8, read on the "
                 "stress stage's qualifier documents)",
}


# ------------------------------------------------------------------------------------------ computation
def seed_doc_matrix(values: pd.Series) -> pd.DataFrame:
    """A (seed, split, doc_id)-indexed series as a seeds x documents matrix (NaN where a seed lacks a document)."""
    return values.unstack(["split", "doc_id"]).sort_index()


def cell_stats(sub: pd.DataFrame, rc: ReportConfig) -> dict:
    """Mean over seeds, a bootstrap CI resampling seeds and documents (crossed_bootstrap_ci), n."""
    doc_acc = sub.groupby(["seed", "split", "doc_id"], sort=True)["correct"].mean()  # per (seed, doc)
    seed_means = doc_acc.groupby(level="seed").mean()
    doc_units = doc_acc.groupby(level=["split", "doc_id"]).mean()  # per doc, averaged over seeds
    ci = crossed_bootstrap_ci(seed_doc_matrix(doc_acc).to_numpy(), level=rc.ci_level, n_resamples=rc.n_resamples,
                              seed=rc.seed)
    return {
        "accuracy": float(seed_means.mean()),
        "ci_low": ci.low,
        "ci_high": ci.high,
        "ci_degenerate": ci.degenerate,
        "ci_note": ci.note,
        "sd_seeds": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else math.nan,
        "n_seeds": int(len(seed_means)),
        "n_docs": int(len(doc_units)),
        "n_queries": int(len(sub)),
    }


def doc_gaps(pairs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy gap (a - b) per seed and document from paired outcomes: a seeds x documents matrix."""
    d = pairs.assign(_d=pairs["correct_a"].astype(float) - pairs["correct_b"].astype(float))
    return seed_doc_matrix(d.groupby(["seed", "split", "doc_id"])["_d"].mean())


@dataclass
class AccuracyResult:
    """One accuracy table: rows variant x key, its paired tests, and the per-document gaps behind them."""

    spec: AccuracySpec
    table: pd.DataFrame
    tests: pd.DataFrame
    gaps: dict = field(default_factory=dict)  # (comparison, key) -> gaps per seed and document (doc_gaps)


def accuracy_table(preds: pd.DataFrame, spec: AccuracySpec, paper: PaperTable | None, rc: ReportConfig,
                   doc_tokens: Mapping[str, float] | None = None, train_tokens: int | None = None) -> AccuracyResult:
    """Table rows variant x key and the McNemar tests (raw p; `apply_holm` adds the corrected ones)."""
    sub = preds[preds["task"] == spec.task].copy()
    if sub.empty:
        return AccuracyResult(spec, pd.DataFrame(), pd.DataFrame())
    sub["_key"] = sub[spec.source].map(norm_key)
    qtypes = sorted(sub["query_type"].astype(str).unique())
    variants = variant_order(sub["variant"].unique())
    keys = sort_key_values(sub["_key"].unique())
    factor = paper.to_fraction if paper else 1.0
    rows = []
    for v in variants:
        for k in keys:
            cell = sub[(sub["variant"] == v) & (sub["_key"] == k)]
            if cell.empty:
                continue
            row = {"variant": v, spec.key: k, **cell_stats(cell, rc)}
            if len(qtypes) > 1:
                for qt in qtypes:
                    q = cell[cell["query_type"].astype(str) == qt]
                    row[f"accuracy_{qt}"] = _doc_mean_over_seeds(q)
                    row[f"n_queries_{qt}"] = int(len(q))
            pb, pc = paper.lookup(k) if paper else (math.nan, math.nan)
            row["paper_baseline"] = round(pb * factor, 6)
            row["paper_cmr"] = round(pc * factor, 6)
            if doc_tokens is not None and train_tokens:
                longest = max((doc_tokens.get(s, math.nan) for s in cell["split"].unique()), default=math.nan)
                row["extrapolation"] = bool(v == "full" and longest > train_tokens)
            rows.append(row)
    tests, gaps = [], {}
    for a, b in COMPARISONS:
        if a not in variants or b not in variants:
            continue
        for k in keys:
            pa = sub[(sub["variant"] == a) & (sub["_key"] == k)]
            pb_ = sub[(sub["variant"] == b) & (sub["_key"] == k)]
            if not (pa.empty or pb_.empty):
                tests.append(_paired_test(pa, pb_, f"{a}_vs_{b}", spec.key, k, rc, gaps))
    return AccuracyResult(spec, pd.DataFrame(rows), pd.DataFrame(tests), gaps)


def _paired_test(pa: pd.DataFrame, pb: pd.DataFrame, comp: str, key: str, k: Any, rc: ReportConfig,
                 gaps: dict) -> dict:
    """McNemar over the queries both variants answered, the gap with its CI over seeds and documents (the seeds x
    documents matrix kept in `gaps` for the trend tests) and the per-seed tests, for one cell of one comparison."""
    pairs = align_pairs(pa, pb)
    if pairs.empty:
        return {"comparison": comp, key: k, "b": 0, "c": 0, "n_pairs": 0, "p_value": math.nan,
                "note": "no paired queries"}
    m = mcnemar_from_outcomes(pairs["correct_a"], pairs["correct_b"])
    g = gaps[(comp, k)] = doc_gaps(pairs)
    ci = crossed_bootstrap_ci(g.to_numpy(), level=rc.ci_level, n_resamples=rc.n_resamples, seed=rc.seed)
    per_seed = [(s, mcnemar_from_outcomes(q["correct_a"], q["correct_b"]).p_value,
                 q["correct_a"].mean() > q["correct_b"].mean()) for s, q in pairs.groupby("seed")]
    return {"comparison": comp, key: k, "b": m.b, "c": m.c, "n_pairs": m.n_pairs,
            "gap": ci.mean, "gap_ci_low": ci.low, "gap_ci_high": ci.high, "n_docs": ci.n,
            "p_value": m.p_value, "n_seeds": len(per_seed),
            "seeds_cmr_better": int(sum(w for _, _, w in per_seed)),
            "p_per_seed": "; ".join(f"s{s}: {p:.2g}" for s, p, _ in per_seed),
            "note": "" if len(pairs) == min(len(pa), len(pb)) else
            f"{max(len(pa), len(pb)) - len(pairs)} unpaired queries dropped"}


def apply_holm(results: Mapping[str, AccuracyResult], alpha: float) -> dict[str, int]:
    """Holm over each family's tests together; writes p_holm/significant/direction into tests and tables.

    Returns the number of tests in each family (stated in captions and REPORT.md).
    """
    sizes: dict[str, int] = {}
    for family in dict.fromkeys(r.spec.family for r in results.values()):
        members = [r for r in results.values() if r.spec.family == family and not r.tests.empty]
        if not members:
            continue
        p_all = np.concatenate([r.tests["p_value"].to_numpy(dtype=float) for r in members])
        adj = holm(p_all)
        sizes[family] = int(np.isfinite(p_all).sum())
        i = 0
        for r in members:
            t, key = r.tests, r.spec.key
            t["p_holm"] = adj[i:i + len(t)]
            i += len(t)
            t["significant"] = t["p_holm"] < alpha
            t["direction"] = np.where(t["b"] > t["c"], "cmr better", np.where(t["b"] < t["c"], "cmr worse", "tie"))
            for comp, g in t.groupby("comparison", sort=False):
                other = comp.split("_vs_")[1]
                is_a = r.table["variant"] == comp.split("_vs_")[0]
                g = g.set_index(key)
                r.table.loc[is_a, f"p_vs_{other}"] = r.table.loc[is_a, key].map(g["p_value"])
                r.table.loc[is_a, f"p_vs_{other}_holm"] = r.table.loc[is_a, key].map(g["p_holm"])
    return sizes


def overhead_table(runs: list[dict], train_metrics: Mapping[str, dict], paper: PaperTable | None,
                   rc: ReportConfig | None = None) -> pd.DataFrame:
    """Table III: ms/token by N per variant (mean over seeds), ratios to window (the ratio of medians of the timing
    repeats pooled over seeds, with its bootstrap CI; mean over seeds where no repeats were kept), params, memory,
    train speed.

    Ratios are to the `window` timed in the same process (the overhead stage times every run in turns)."""
    rc = rc or ReportConfig()
    recs, static, reps, refs = [], [], {}, {}
    for r in runs:
        oh = r["overhead"]
        if oh is None:
            continue
        for n, ms in (oh.get("ms_per_token") or {}).items():
            recs.append({"variant": r["variant"], "seed": r["seed"], "N": norm_key(n), "ms_per_token": float(ms)})
            if r["variant"] == "window":
                refs.setdefault(norm_key(n), []).append(float(ms))
        for n, xs in (oh.get("ms_per_token_repeats") or {}).items():
            reps.setdefault((r["variant"], norm_key(n)), []).extend(float(x) for x in xs)
        tm = train_metrics.get(run_name(r["variant"], r["seed"]), {})
        pick = lambda k: oh[k] if oh.get(k) is not None else tm.get(k)  # noqa: E731  overhead.json first
        static.append({"variant": r["variant"], "seed": r["seed"], "params": pick("params"),
                       "peak_memory_mb": oh.get("peak_memory_mb"), "train_tokens_per_s": pick("train_tokens_per_s")})
    if not recs:
        return pd.DataFrame()
    d = pd.DataFrame(recs)
    s = pd.DataFrame(static).astype({"params": float, "peak_memory_mb": float, "train_tokens_per_s": float})
    g = d.groupby(["variant", "N"])["ms_per_token"]
    t = pd.DataFrame({"ms_per_token": g.mean(), "sd_seeds": g.std(ddof=1), "n_seeds": g.size()}).reset_index()
    sv = s.groupby("variant")[["params", "peak_memory_mb", "train_tokens_per_s"]].mean()
    t = t.join(sv, on="variant")
    win = {key: sum(xs) / len(xs) for key, xs in refs.items()}
    t["ratio_vs_window"] = [ms / win[n] if n in win else math.nan for ms, n in zip(t["ms_per_token"], t["N"])]
    ratio, lo, hi = [], [], []
    for v, n, r in zip(t["variant"], t["N"], t["ratio_vs_window"]):
        a, b = reps.get((v, n)), reps.get(("window", n))
        ci = (bootstrap_ratio_ci(a, b, level=rc.ci_level, n_resamples=rc.n_resamples, method=rc.ci_method,
                                 seed=rc.seed) if a and b and v != "window" else None)
        ratio.append(ci.mean if ci else r)  # where repeats exist, the point estimate is the CI's own statistic
        lo.append(ci.low if ci else math.nan)
        hi.append(ci.high if ci else math.nan)
    t["ratio_vs_window"], t["ratio_ci_low"], t["ratio_ci_high"] = ratio, lo, hi
    wtps = sv["train_tokens_per_s"].get("window", math.nan) if "window" in sv.index else math.nan
    t["train_ratio_vs_window"] = t["train_tokens_per_s"] / wtps
    pb = [paper.lookup(n) if paper else (math.nan, math.nan) for n in t["N"]]
    t["paper_baseline"] = [p[0] for p in pb]
    t["paper_cmr"] = [p[1] for p in pb]
    t["paper_ratio"] = t["paper_cmr"] / t["paper_baseline"]
    order = {v: i for i, v in enumerate(variant_order(t["variant"].unique()))}
    t = t.sort_values(["variant", "N"], key=lambda c: c.map(order) if c.name == "variant" else c)
    return t.reset_index(drop=True)


def distance_vs_training(lower_edge: int, train_segments: int | None) -> str:
    """Whether a distance bin [lo, 2 lo) lies within the longest training document, straddles it, or is beyond."""
    if not train_segments:
        return "unknown"
    upper = 1 if lower_edge == 0 else 2 * lower_edge
    if lower_edge >= train_segments:
        return "beyond"
    return "straddles" if upper > train_segments else "within"


def per_seed_recall(rec: pd.DataFrame) -> pd.DataFrame:
    """Far recall per (variant, seed) and N: one column per N."""
    far = rec[rec["query_type"] == "far"]
    if far.empty:
        return pd.DataFrame()
    doc = far.groupby(["variant", "seed", "length", "split", "doc_id"])["correct"].mean()
    t = doc.groupby(level=["variant", "seed", "length"]).mean().unstack("length")
    t.columns = [f"N={int(c)}" for c in t.columns]
    t = t.reset_index()
    order = {v: i for i, v in enumerate(variant_order(t["variant"]))}
    return t.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c,
                         kind="stable").reset_index(drop=True)


def xl_reach_segments(cfg: Mapping[str, Any]) -> int | None:
    """Segments back `xl` can see: n_layers x mem_len tokens (each layer's cache reaches one cache further)."""
    b, xl = cfg.get("backbone") or {}, ((cfg.get("models") or {}).get("xl") or {})
    if not (b.get("window") and b.get("n_layers") and xl.get("mem_len")):
        return None
    return int(b["n_layers"]) * int(xl["mem_len"]) // int(b["window"])
