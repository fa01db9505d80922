"""Report stage: aggregate every evaluation run into tables, plots, summary.json and REPORT.md.

`python -m pipeline.report [--params params.yaml]` reads the composed config, finds
experiments/eval/<variant>-s<seed>/ for the study's variants and seeds, and writes results/.
Only pandas / scipy / matplotlib are imported (no torch), so the stage starts in about a second.

The paper's "baseline model" is our `window` variant; the paper's numbers (pipeline/paper_numbers.yaml)
stand beside ours in every table. Accuracy cells: mean over seeds of the per-seed accuracy (each seed's
accuracy = mean over documents of the per-document accuracy), a bootstrap CI over documents (each
document's accuracy averaged over seeds), and n. cmr-vs-window and cmr-vs-xl cells get an exact
McNemar test on the paired per-query outcomes, Holm-corrected over the tests of one table.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.stats import align_pairs, bootstrap_ci, holm, mcnemar_from_outcomes

PAPER_NUMBERS_PATH = Path(__file__).with_name("paper_numbers.yaml")
VARIANT_ORDER = ("window", "xl", "full", "cmr")
REQUIRED_COLUMNS = ("variant", "seed", "split", "task", "length", "doc_id", "query_idx", "query_type",
                    "answer", "pred", "correct")
PASSED, FAILED, NOT_RUN = "PASSED", "FAILED", "NOT RUN"
BASELINE_CAPTION = "Paper baseline = the paper's baseline model, which is our `window` variant."


from pipeline.report_config import ReportConfig, report_config  # noqa: E402  (light: no pandas)


def _plain(cfg: Any) -> dict:
    """Accept an OmegaConf DictConfig or a plain mapping; return plain dicts."""
    if cfg is None:
        return {}
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


# ---------------------------------------------------------------------------------------- paper numbers
@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: `baseline` and `cmr` values per row, in the paper's unit."""

    table: str
    eval: str
    what: str
    key: str
    unit: str
    rows: tuple
    baseline: tuple
    cmr: tuple

    def lookup(self, row: Any) -> tuple[float, float]:
        """(baseline, cmr) for a row key (int-like match), NaN where the paper has no such row."""
        try:
            r = int(float(row))
        except (TypeError, ValueError):
            return math.nan, math.nan
        if r in self.rows:
            i = self.rows.index(r)
            return float(self.baseline[i]), float(self.cmr[i])
        return math.nan, math.nan

    @property
    def to_fraction(self) -> float:
        """Factor that turns the paper's unit into ours (accuracy fraction; ms stays ms)."""
        return {"percent": 0.01, "score_out_of_10": 0.1}.get(self.unit, 1.0)


def load_paper_numbers(path: str | Path = PAPER_NUMBERS_PATH) -> dict[str, Any]:
    """{'source': str, 'tables': {eval_id: PaperTable}}; raises DataError if the file is malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"paper numbers file missing: {path}")
    raw = yaml.safe_load(path.read_text())
    try:
        tables = {}
        for name, t in raw["tables"].items():
            rows, base, cmr = tuple(t["rows"]), tuple(t["baseline"]), tuple(t["cmr"])
            if not len(rows) == len(base) == len(cmr):
                raise DataError(f"{path}: table {name} has rows/baseline/cmr of different lengths")
            tables[t["eval"]] = PaperTable(str(name), t["eval"], t["what"], t["key"], t["unit"], rows, base, cmr)
        return {"source": raw["source"], "baseline_note": raw.get("baseline_note", ""), "tables": tables}
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: malformed paper numbers ({e!r})") from e


# ------------------------------------------------------------------------------------------ table specs
@dataclass(frozen=True)
class AccuracySpec:
    name: str  # eval id, file stem
    task: str  # predictions' task value
    key: str  # column name in our table
    source: str  # predictions column giving the key
    title: str


ACCURACY_TABLES = (
    AccuracySpec("recall", "recall", "N", "length", "Table II: token recall accuracy by document length N (tokens)"),
    AccuracySpec("rare", "rare", "bucket", "bucket",
                 "Table IV: recall of rare tokens by the answer's measured count in the training split"),
    AccuracySpec("numeric", "numeric", "N", "length", "Table VI: numerical reasoning (sum) accuracy by length N"),
    AccuracySpec("dialogue", "dialogue", "turns", "length",
                 "Table V: dialogue consistency (accuracy of facts asked back; paper: coherence score / 10) "
                 "by number of turns"),
    AccuracySpec("recall_by_distance", "recall", "distance_segments", "distance_segments",
                 "Recall accuracy by fact-to-query distance in segments of W tokens (bins by lower edge: "
                 "[0,1), [1,2), [2,4), ...); distances beyond the longest training document are extrapolation"),
)


# ---------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt JSON file {path}: {e}") from e


def load_eval_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict | None, dict | None]:
    """(predictions, overhead or None, metrics or None) of one experiments/eval/<variant>-s<seed>/ dir."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"evaluation output missing: {run_dir} (run `python -m pipeline.evaluate` for it)")
    pq = run_dir / "predictions.parquet"
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
    df["run"] = run_dir.name
    overhead = _read_json(run_dir / "overhead.json") if (run_dir / "overhead.json").is_file() else None
    metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else None
    return df, overhead, metrics


def _variant_order(variants: Iterable[str]) -> list[str]:
    vs = set(variants)
    return [v for v in VARIANT_ORDER if v in vs] + sorted(vs - set(VARIANT_ORDER))


def _sort_key_values(values: Iterable[Any]) -> list[Any]:
    vals = list(dict.fromkeys(values))
    try:
        return sorted(vals, key=lambda v: float(v))
    except (TypeError, ValueError):
        return sorted(vals, key=str)


def _norm_key(v: Any) -> Any:
    """Keys as ints where they are integral (N, turns, counts), else as given."""
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return v


# ------------------------------------------------------------------------------------------ computation
def cell_stats(sub: pd.DataFrame, rc: ReportConfig) -> dict:
    """Mean over seeds, bootstrap CI over documents (pooled over seeds), n."""
    doc_acc = sub.groupby(["seed", "split", "doc_id"], sort=True)["correct"].mean()  # per (seed, doc)
    seed_means = doc_acc.groupby(level="seed").mean()
    doc_units = doc_acc.groupby(level=["split", "doc_id"]).mean()  # per doc, averaged over seeds
    ci = bootstrap_ci(doc_units.to_numpy(), level=rc.ci_level, n_resamples=rc.n_resamples,
                      method=rc.ci_method, seed=rc.seed)
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


COMPARISONS = (("cmr", "window"), ("cmr", "xl"))


def accuracy_table(preds: pd.DataFrame, spec: AccuracySpec, paper: PaperTable | None,
                   rc: ReportConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table rows variant x key, McNemar tests) for one task; empty frames if the task has no rows."""
    sub = preds[preds["task"] == spec.task].copy()
    if sub.empty:
        return pd.DataFrame(), pd.DataFrame()
    sub["_key"] = sub[spec.source].map(_norm_key)
    qtypes = sorted(sub["query_type"].astype(str).unique())
    variants = _variant_order(sub["variant"].unique())
    keys = _sort_key_values(sub["_key"].unique())
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
            rows.append(row)
    table = pd.DataFrame(rows)

    tests = []
    for a, b in COMPARISONS:
        if a not in variants or b not in variants:
            continue
        for k in keys:
            pa = sub[(sub["variant"] == a) & (sub["_key"] == k)]
            pb_ = sub[(sub["variant"] == b) & (sub["_key"] == k)]
            if pa.empty or pb_.empty:
                continue
            pairs = align_pairs(pa, pb_)
            if pairs.empty:
                tests.append({"comparison": f"{a}_vs_{b}", spec.key: k, "b": 0, "c": 0, "n_pairs": 0,
                              "p_value": math.nan, "note": "no paired queries"})
                continue
            m = mcnemar_from_outcomes(pairs["correct_a"], pairs["correct_b"])
            tests.append({"comparison": f"{a}_vs_{b}", spec.key: k, "b": m.b, "c": m.c, "n_pairs": m.n_pairs,
                          "p_value": m.p_value,
                          "note": "" if len(pairs) == min(len(pa), len(pb_)) else
                          f"{max(len(pa), len(pb_)) - len(pairs)} unpaired queries dropped"})
    tests_df = pd.DataFrame(tests)
    if not tests_df.empty:
        tests_df["p_holm"] = holm(tests_df["p_value"].to_numpy())
        tests_df["significant"] = tests_df["p_holm"] < rc.alpha
        tests_df["direction"] = np.where(tests_df["b"] > tests_df["c"], "cmr better",
                                         np.where(tests_df["b"] < tests_df["c"], "cmr worse", "tie"))
        for a, b in COMPARISONS:
            t = tests_df[tests_df["comparison"] == f"{a}_vs_{b}"].set_index(spec.key)
            if t.empty:
                continue
            is_a = table["variant"] == a
            table.loc[is_a, f"p_vs_{b}"] = table.loc[is_a, spec.key].map(t["p_value"])
            table.loc[is_a, f"p_vs_{b}_holm"] = table.loc[is_a, spec.key].map(t["p_holm"])
    return table, tests_df


def overhead_table(runs: list[dict], train_metrics: dict[str, dict], paper: PaperTable | None) -> pd.DataFrame:
    """Table III: ms/token by N per variant (mean over seeds), ratios to window, params, memory, train speed."""
    recs, static = [], []
    for r in runs:
        oh = r["overhead"]
        if oh is None:
            continue
        for n, ms in (oh.get("ms_per_token") or {}).items():
            recs.append({"variant": r["variant"], "seed": r["seed"], "N": _norm_key(n), "ms_per_token": float(ms)})
        tm = train_metrics.get(f"{r['variant']}-s{r['seed']}", {})
        pick = lambda k: oh[k] if oh.get(k) is not None else tm.get(k)  # noqa: E731  overhead.json first
        tps = pick("train_tokens_per_s")
        static.append({"variant": r["variant"], "seed": r["seed"],
                       "params": pick("params"),
                       "peak_memory_mb": oh.get("peak_memory_mb"),
                       "train_tokens_per_s": tps})
    if not recs:
        return pd.DataFrame()
    d = pd.DataFrame(recs)
    s = pd.DataFrame(static).astype({"params": float, "peak_memory_mb": float, "train_tokens_per_s": float})
    g = d.groupby(["variant", "N"])["ms_per_token"]
    t = pd.DataFrame({"ms_per_token": g.mean(), "sd_seeds": g.std(ddof=1), "n_seeds": g.size()}).reset_index()
    sv = s.groupby("variant")[["params", "peak_memory_mb", "train_tokens_per_s"]].mean()
    t = t.join(sv, on="variant")
    win = t[t["variant"] == "window"].set_index("N")["ms_per_token"]
    t["ratio_vs_window"] = t["ms_per_token"] / t["N"].map(win) if len(win) else math.nan
    wtps = sv["train_tokens_per_s"].get("window", math.nan) if "window" in sv.index else math.nan
    t["train_ratio_vs_window"] = t["train_tokens_per_s"] / wtps
    pb = [paper.lookup(n) if paper else (math.nan, math.nan) for n in t["N"]]
    t["paper_baseline"] = [p[0] for p in pb]
    t["paper_cmr"] = [p[1] for p in pb]
    t["paper_ratio"] = t["paper_cmr"] / t["paper_baseline"]
    order = {v: i for i, v in enumerate(_variant_order(t["variant"].unique()))}
    t = t.sort_values(["variant", "N"], key=lambda c: c.map(order) if c.name == "variant" else c)
    return t.reset_index(drop=True)


def _doc_mean_over_seeds(sub: pd.DataFrame) -> float:
    if sub.empty:
        return math.nan
    return float(sub.groupby(["seed", "split", "doc_id"])["correct"].mean().groupby(level="seed").mean().mean())


def datasets_table(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """Table I, ours: per split, documents, mean length in tokens and words, facts and queries per document."""
    rows = [{"split": name, "documents": sp.get("docs"), "mean_tokens": sp.get("mean_tokens"),
             "mean_words": sp.get("mean_words"), "facts_per_doc": sp.get("facts_per_doc"),
             "queries_per_doc": sp.get("queries_per_doc"), "mean_distance_tokens": sp.get("mean_distance"),
             "filler": manifest.get("filler_source")}
            for name, sp in (manifest.get("splits") or {}).items()]
    return pd.DataFrame(rows)


def distance_bin(segments: pd.Series) -> pd.Series:
    """Lower edge of the power-of-two bin of a distance in segments: 0, 1, 2, 4, 8, ..."""
    seg = segments.clip(lower=0).astype("int64")
    return seg.where(seg < 1, 2 ** np.floor(np.log2(seg.clip(lower=1))).astype("int64"))


def validity_checks(preds: pd.DataFrame, rc: ReportConfig, chance_from_data: float | None = None,
                    train_metrics: Mapping[str, dict] | None = None) -> dict:
    """(1) the task is learnable (full or cmr >= threshold within reach); (2) window ~chance beyond its window.

    "Within reach" for `full` means within its training length: its validation recall from the
    training stage (documents as long as the training ones). At the shortest evaluation N it is
    extrapolating past the positions it was trained on, so that number is shown but not its reach.

    Chance: report.chance if set, else the evaluation's `chance_recall` (1 / number of possible values,
    from data/manifest.json), else 1 / the number of distinct answers in the recall predictions.
    """
    rec = preds[preds["task"] == "recall"]
    out: dict[str, dict] = {}
    if rec.empty:
        out["learnable"] = {"status": NOT_RUN, "passed": None, "detail": "no recall predictions"}
        out["window_near_chance"] = {"status": NOT_RUN, "passed": None, "detail": "no recall predictions"}
        return out
    n_min = int(rec["length"].min())
    short = rec[rec["length"] == n_min]
    full = short[short["variant"] == "full"]
    cmr_far = short[(short["variant"] == "cmr") & (short["query_type"] == "far")]
    full_val = [float(m["val_recall"]) for name, m in (train_metrics or {}).items()
                if name.startswith("full-") and isinstance((m or {}).get("val_recall"), (int, float))]
    vals = {"full_val": sum(full_val) / len(full_val) if full_val else None,
            "full_all": _doc_mean_over_seeds(full) if not full.empty else None,
            "cmr_far": _doc_mean_over_seeds(cmr_far) if not cmr_far.empty else None}
    present = {k: v for k, v in vals.items() if v is not None}
    if not present:
        out["learnable"] = {"status": NOT_RUN, "passed": None, "N": n_min, "threshold": rc.learnable_threshold,
                            "detail": "neither `full` nor `cmr` (far queries) was evaluated on recall"}
    else:
        passed = any(v >= rc.learnable_threshold for v in present.values())
        out["learnable"] = {
            "status": PASSED if passed else FAILED, "passed": passed, "N": n_min,
            "threshold": rc.learnable_threshold, **{k: v for k, v in vals.items()},
            "detail": (", ".join(f"{k}={v:.3f}" for k, v in present.items())
                       + f" (full_val: full's validation recall within its training length; full_all, cmr_far:"
                       f" at N={n_min}, full extrapolating) (need >= {rc.learnable_threshold:.2f} for at least one)"),
        }
    n_answers = int(rec["answer"].nunique())
    if rc.chance is not None:
        chance, chance_src = rc.chance, "report.chance"
    elif chance_from_data:
        chance, chance_src = float(chance_from_data), "eval metrics chance_recall (1/possible values)"
    else:
        chance, chance_src = 1.0 / max(n_answers, 1), f"1/{n_answers} distinct recall answers"
    wfar = rec[(rec["variant"] == "window") & (rec["query_type"] == "far")]
    if wfar.empty:
        out["window_near_chance"] = {"status": NOT_RUN, "passed": None, "chance": chance,
                                     "detail": "`window` far-query recall was not evaluated"}
    else:
        acc = _doc_mean_over_seeds(wfar)
        limit = chance + rc.chance_margin
        passed = acc <= limit
        out["window_near_chance"] = {
            "status": PASSED if passed else FAILED, "passed": passed, "accuracy": acc, "chance": chance,
            "margin": rc.chance_margin, "limit": limit, "n_queries": int(len(wfar)),
            "detail": (f"window far-query accuracy {acc:.3f} vs chance {chance:.3f} ({chance_src}) "
                       f"+ margin {rc.chance_margin:.2f} = {limit:.3f}"),
        }
    return out


# -------------------------------------------------------------------------------------------- rendering
def _fmt(x: Any, digits: int = 3) -> str:
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


def _to_markdown(df: pd.DataFrame, caption: str) -> str:
    return f"Table: {caption}\n\n" + df.to_markdown(index=False, floatfmt=".4g", missingval="--") + "\n"


def _to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    sty = df.style.hide(axis="index").format(precision=3, na_rep="--", escape="latex")
    pcols = [c for c in df.columns if c.startswith("p_") or c == "p_value"]
    if pcols:  # p-values span many orders of magnitude: 0.000 would hide them
        sty = sty.format("{:.2g}", subset=pcols, na_rep="--")
    sty = sty.format_index(escape="latex", axis=1)
    return sty.to_latex(caption=caption.replace("_", r"\_").replace("`", ""), label=label, hrules=True,
                        position="htbp") + "\n"


def _write_table(df: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    atomic_write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    atomic_write_text(stem.with_suffix(".md"), _to_markdown(df, caption))
    atomic_write_text(stem.with_suffix(".tex"), _to_latex(df, caption, f"tab:{stem.name}"))
    return [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]


def _style(plt) -> str:
    for s in ("seaborn-v0_8-whitegrid", "seaborn-whitegrid", "ggplot"):
        if s in plt.style.available:
            plt.style.use(s)
            return s
    return "default"


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(table: pd.DataFrame, spec: AccuracySpec, paper: PaperTable | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _style(plt)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {}
    numeric_x = pd.api.types.is_numeric_dtype(table[spec.key])
    xs_all = _sort_key_values(table[spec.key])
    pos = (lambda v: v) if numeric_x else (lambda v: xs_all.index(v))
    for v in _variant_order(table["variant"].unique()):
        t = table[table["variant"] == v].sort_values(spec.key)
        x = [pos(k) for k in t[spec.key]]
        y = t["accuracy"].to_numpy()
        err = np.vstack([y - t["ci_low"].to_numpy(), t["ci_high"].to_numpy() - y])
        line = ax.errorbar(x, y, yerr=np.nan_to_num(np.clip(err, 0, None)), marker="o", capsize=3, label=v)
        colors[v] = line.lines[0].get_color()
    if paper is not None and numeric_x:
        f = paper.to_fraction
        ax.plot(paper.rows, [b * f for b in paper.baseline], "--", color=colors.get("window", "gray"),
                label=f"paper baseline (= window), table {paper.table}")
        ax.plot(paper.rows, [c * f for c in paper.cmr], "--", color=colors.get("cmr", "black"),
                label=f"paper CMR, table {paper.table}")
    if not numeric_x:
        ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
    elif spec.name == "rare":
        ax.set_xscale("log")
    ax.set_xlabel({"N": "document length N (tokens)", "bucket": "answer's count in training split",
                   "turns": "dialogue turns"}.get(spec.key, spec.key))
    ax.set_ylabel("accuracy (95% CI over documents)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(spec.title.split(":")[0] + f": {spec.name}")
    ax.legend(fontsize=8)
    _savefig(fig, path)
    plt.close(fig)


def plot_overhead(t: pd.DataFrame, paper: PaperTable | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _style(plt)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for v in _variant_order(t["variant"].unique()):
        d = t[t["variant"] == v].sort_values("N")
        (line,) = a1.plot(d["N"], d["ms_per_token"], marker="o", label=v)
        if v != "window" and d["ratio_vs_window"].notna().any():
            a2.plot(d["N"], d["ratio_vs_window"], marker="o", color=line.get_color(), label=f"{v} / window (ours)")
    if paper is not None:
        a2.plot(paper.rows, [c / b for b, c in zip(paper.baseline, paper.cmr)], "--", color="black",
                label=f"paper CMR / baseline, table {paper.table}")
    a1.set_yscale("log")
    a1.set_xlabel("document length N (tokens)")
    a1.set_ylabel("inference ms/token (ours)")
    a1.set_title("Table III: inference cost")
    a2.set_xlabel("document length N (tokens)")
    a2.set_ylabel("ms/token ratio")
    a2.set_title("cost relative to window / paper baseline")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    _savefig(fig, path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the stage
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _wall(d: dict | None) -> float | None:
    if not d:
        return None
    for k in ("wall_s", "wall_time_s", "elapsed_s", "wall_seconds"):
        if isinstance(d.get(k), (int, float)):
            return float(d[k])
    return None


def build_report(cfg: Any, eval_dirs: Sequence[str | Path], train_dirs: Sequence[str | Path],
                 results_dir: str | Path) -> dict:
    """Aggregate the given evaluation (and training) runs into results_dir; return summary.json's content."""
    t0 = time.perf_counter()
    cfg = _plain(cfg)
    rc = report_config(cfg)
    results_dir = Path(results_dir)
    if not eval_dirs:
        raise DataError("no evaluation runs to report (experiments/eval/<variant>-s<seed>/ missing)")
    paper = load_paper_numbers()
    notes: list[str] = []

    frames, runs = [], []
    for d in eval_dirs:
        df, oh, met = load_eval_run(d)
        if df.empty:
            raise DataError(f"{Path(d) / 'predictions.parquet'} has no rows")
        v, s = df["variant"].iloc[0], int(df["seed"].iloc[0])
        if oh is None:
            notes.append(f"{Path(d) / 'overhead.json'} missing: {v}-s{s} left out of Table III")
        frames.append(df)
        runs.append({"dir": str(d), "variant": v, "seed": s, "overhead": oh, "metrics": met})
    preds = pd.concat(frames, ignore_index=True)
    window = int((cfg.get("backbone") or {}).get("window") or 0)
    if window > 0:
        preds["distance_segments"] = distance_bin(preds["distance"] // window)

    train: dict[str, dict] = {}
    train_src: dict[str, str] = {}
    for d in train_dirs:
        p = Path(d) / "metrics.json"
        if p.is_file():
            train[Path(d).name] = _read_json(p)
            train_src[Path(d).name] = str(d)
        else:
            notes.append(f"training metrics missing: {p}")

    # layout: results/tables/<table>.{csv,md,tex,png}, results/tables/<table>_tests.*, results/plots/<table>.csv (DVC plots)
    tables_dir, plots_dir = results_dir / "tables", results_dir / "plots"
    summary: dict[str, Any] = {}
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for spec in ACCURACY_TABLES:
        pt = paper["tables"].get(spec.name)
        if spec.source not in preds:
            notes.append(f"{spec.title.split(':')[0]}: predictions have no `{spec.source}` (backbone.window unset)")
            continue
        table, tests = accuracy_table(preds, spec, pt, rc)
        if table.empty:
            notes.append(f"no `{spec.task}` predictions: {spec.title.split(':')[0]} not reproduced")
            continue
        tables[spec.name] = (table, tests)
        caption = (f"{spec.title}. Ours: mean over seeds, {int(rc.ci_level * 100)}% bootstrap CI over documents "
                   f"(pooled over seeds); paper values as fractions. {BASELINE_CAPTION} "
                   f"p: exact McNemar, Holm-corrected over this table's tests.")
        _write_table(table, tables_dir / spec.name, caption)
        if not tests.empty:
            _write_table(tests, tables_dir / f"{spec.name}_tests",
                         f"{spec.title.split(':')[0]}: exact McNemar tests on paired queries (b = cmr right, "
                         f"other wrong; c = the reverse), Holm-corrected across this table")
        plot_df = table[["variant", spec.key, "accuracy", "ci_low", "ci_high"]].copy()
        if pt is not None:
            for who, vals in (("paper_baseline", pt.baseline), ("paper_cmr", pt.cmr)):
                plot_df = pd.concat([plot_df, pd.DataFrame({"variant": who, spec.key: list(pt.rows),
                                                            "accuracy": [round(x * pt.to_fraction, 6)
                                                                         for x in vals]})],
                                    ignore_index=True)
        atomic_write_text(plots_dir / f"{spec.name}.csv", plot_df.to_csv(index=False))
        plot_accuracy(table, spec, pt, tables_dir / f"{spec.name}.png")
        summary[spec.name] = {v: {str(k): a for k, a in zip(g[spec.key], g["accuracy"])}
                              for v, g in table.groupby("variant", sort=False)}
        if not tests.empty:
            summary.setdefault("tests", {})[spec.name] = {
                c: {str(k): {"b": b, "c": cc, "p": p, "p_holm": ph}
                    for k, b, cc, p, ph in zip(g[spec.key], g["b"], g["c"], g["p_value"], g["p_holm"])}
                for c, g in tests.groupby("comparison", sort=False)}

    oh_paper = paper["tables"].get("overhead")
    oh = overhead_table(runs, train, oh_paper)
    if oh.empty:
        notes.append("no overhead.json in any run: Table III not reproduced")
    else:
        _write_table(oh, tables_dir / "overhead",
                     "Table III: inference ms/token by N (batch 1, mean over seeds), ratio to window, parameters, "
                     f"peak memory, training tokens/s and its ratio to window; paper values in ms/token. "
                     f"{BASELINE_CAPTION}")
        atomic_write_text(plots_dir / "overhead.csv",
                          oh[["variant", "N", "ms_per_token", "ratio_vs_window"]].to_csv(index=False))
        plot_overhead(oh, oh_paper, tables_dir / "overhead.png")
        summary["overhead"] = {
            v: {"ms_per_token": {str(n): x for n, x in zip(g["N"], g["ms_per_token"])},
                "ratio_vs_window": {str(n): x for n, x in zip(g["N"], g["ratio_vs_window"])},
                "params": g["params"].iloc[0], "peak_memory_mb": g["peak_memory_mb"].iloc[0],
                "train_tokens_per_s": g["train_tokens_per_s"].iloc[0],
                "train_ratio_vs_window": g["train_ratio_vs_window"].iloc[0]}
            for v, g in oh.groupby("variant", sort=False)}

    chances = {float(r["metrics"]["chance_recall"]) for r in runs
               if r["metrics"] and isinstance(r["metrics"].get("chance_recall"), (int, float))}
    if len(chances) > 1:
        notes.append(f"runs disagree on chance_recall {sorted(chances)}; using the largest")
    validity = validity_checks(preds, rc, max(chances) if chances else None, train)
    summary["validity"] = validity
    for name, chk in validity.items():
        print(f"validity check {name}: {chk['status']} - {chk['detail']}")

    # stage times
    times = []
    manifest = Path((cfg.get("paths") or {}).get("data_dir", "data")) / "manifest.json"
    manifest_data = _read_json(manifest) if manifest.is_file() else None
    ds_table = datasets_table(manifest_data) if manifest_data is not None else None
    if ds_table is not None:
        _write_table(ds_table, tables_dir / "datasets",
                     "Table I (ours): the generated splits, computed from data/manifest.json")
        summary["datasets"] = {r["split"]: {"documents": r["documents"], "mean_tokens": r["mean_tokens"]}
                               for r in ds_table.to_dict("records")}
    times.append({"stage": "prepare", "run": "data", "wall_s": _wall(manifest_data) if manifest_data else None,
                  "source": str(manifest)})
    for name, m in sorted(train.items()):
        times.append({"stage": "train", "run": name, "wall_s": _wall(m), "source": train_src[name]})
    for r in runs:
        times.append({"stage": "evaluate", "run": Path(r["dir"]).name, "wall_s": _wall(r["metrics"]),
                      "source": r["dir"]})
    report_s = time.perf_counter() - t0
    times.append({"stage": "report", "run": "report", "wall_s": report_s, "source": "measured by report"})
    times_df = pd.DataFrame(times)
    if times_df["wall_s"].isna().any():
        missing = times_df[times_df["wall_s"].isna()]
        notes.append("wall time unknown for: " + ", ".join(f"{a}/{b}" for a, b in zip(missing["stage"], missing["run"])))
    atomic_write_text(results_dir / "stage_times.csv", times_df.to_csv(index=False))
    summary["stage_times_s"] = {f"{a}/{b}": w for a, b, w in zip(times_df["stage"], times_df["run"], times_df["wall_s"])}
    summary["notes"] = notes
    summary = _jsonable(summary)
    atomic_write_json(results_dir / "summary.json", summary)
    atomic_write_text(results_dir / "REPORT.md",
                      render_markdown(cfg, rc, paper, runs, train, tables, oh, validity, times_df, notes,
                                      datasets=ds_table))
    for n in notes:
        print(f"note: {n}")
    return summary


# ------------------------------------------------------------------------------------------- REPORT.md
def _compact(table: pd.DataFrame, tests: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per key: paper baseline | each variant 'acc [lo, hi]' | paper CMR | cmr-window | McNemar p."""
    rows = []
    for k in _sort_key_values(table[key]):
        t = table[table[key] == k]
        r: dict[str, Any] = {key: k, "paper baseline": _fmt(t["paper_baseline"].iloc[0])}
        for _, x in t.iterrows():
            flag = "*" if x["ci_degenerate"] else ""
            r[x["variant"]] = f"{x['accuracy']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]{flag}"
        r["paper CMR"] = _fmt(t["paper_cmr"].iloc[0])
        if not tests.empty:
            for comp, g in tests.groupby("comparison", sort=False):
                h = g[g[key] == k]
                if len(h):
                    h = h.iloc[0]
                    r[f"{comp} b/c, p_holm"] = f"{h['b']}/{h['c']}, {_fmt(h['p_holm'])}"
        rows.append(r)
    return pd.DataFrame(rows).fillna("--")


def render_markdown(cfg, rc, paper, runs, train, tables, oh, validity, times_df, notes,
                    datasets: pd.DataFrame | None = None) -> str:
    out = io.StringIO()
    w = lambda s="": out.write(s + "\n")  # noqa: E731
    variants = _variant_order({r["variant"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    w("# cmr-repro: results")
    w()
    w(f"Reproduction of the paper's tables II-VI ({paper['source']}). Every number below is computed from "
      f"`experiments/eval/*/predictions.parquet` by `python -m pipeline.report`; nothing is typed in by hand.")
    w(f"The paper's baseline model corresponds to our `window` variant. Paper values are shown as fractions "
      f"(percent / 100; table V's coherence score / 10) beside ours.")
    w()
    w("## Setup")
    w()
    w(f"- profile: `{cfg.get('profile_name', 'n/a')}`; variants: {', '.join(variants)}; seeds: {seeds}")
    if cfg.get("backbone"):
        w("- backbone: " + ", ".join(f"{k}={v}" for k, v in cfg["backbone"].items()))
    for v in variants:
        m = (cfg.get("models") or {}).get(v)
        if m:
            w(f"- `{v}`: " + ", ".join(f"{k}={val}" for k, val in m.items()))
    if cfg.get("train"):
        tc = cfg["train"]
        keep = {k: tc[k] for k in list(tc)[:12]}
        w("- train: " + ", ".join(f"{k}={v}" for k, v in keep.items()))
    w()
    if train:
        tr = []
        for name, m in sorted(train.items()):
            tokens = m.get("train_tokens", m.get("tokens"))
            if tokens is None and m.get("train_tokens_per_s") and m.get("wall_s"):
                tokens = f"~{m['train_tokens_per_s'] * m['wall_s']:.3g} (tokens/s x wall)"
            tr.append({"run": name, "params": m.get("params"), "steps": m.get("steps"), "tokens trained": tokens,
                       "wall_s": m.get("wall_s"), "train tokens/s": m.get("train_tokens_per_s"),
                       "val recall": m.get("val_recall"), "steps to 90%": m.get("steps_to_90")})
        w("Training runs:")
        w()
        w(pd.DataFrame(tr).map(_fmt).to_markdown(index=False))
        w()
    if datasets is not None:
        w("## Data (our Table I)")
        w()
        w(datasets.to_markdown(index=False))
        w()
    w("## Validity checks")
    w()
    for name, chk in validity.items():
        w(f"- **{name}: {chk['status']}** - {chk['detail']}")
    w()
    w(f"Statistics: {int(rc.ci_level * 100)}% {rc.ci_method} bootstrap CI ({rc.n_resamples} resamples, seed {rc.seed}) "
      f"of the mean per-document accuracy, documents resampled, each document's accuracy averaged over seeds; "
      f"`*` marks a degenerate interval (one document or identical values). Paired tests: exact McNemar "
      f"(binomial on the discordant pairs b, c), Holm-corrected over each table's family of tests, alpha={rc.alpha}.")
    w()
    verdicts = []
    for name, (table, tests) in tables.items():
        spec = next(s for s in ACCURACY_TABLES if s.name == name)
        w(f"## {spec.title}")
        w()
        w(_compact(table, tests, spec.key).to_markdown(index=False))
        w()
        w(f"Full table: `tables/{name}.csv` (.md, .tex); tests: `tables/{name}_tests.csv`; plot: `tables/{name}.png`.")
        w()
        w(f"![{name}](tables/{name}.png)")
        w()
        if "cmr" in table["variant"].values and "window" in table["variant"].values:
            for k in _sort_key_values(table[spec.key]):
                c = table[(table["variant"] == "cmr") & (table[spec.key] == k)]
                wd = table[(table["variant"] == "window") & (table[spec.key] == k)]
                if c.empty or wd.empty:
                    continue
                ca, wa = c["accuracy"].iloc[0], wd["accuracy"].iloc[0]
                ph = c["p_vs_window_holm"].iloc[0] if "p_vs_window_holm" in c else math.nan
                if ca <= wa + 1e-9:  # equal up to float noise counts as "does not beat"
                    verdicts.append(f"{name}, {spec.key}={k}: CMR does not beat window ({ca:.3f} vs {wa:.3f}).")
                elif not (ph < rc.alpha):
                    verdicts.append(f"{name}, {spec.key}={k}: CMR is above window ({ca:.3f} vs {wa:.3f}) but not "
                                    f"significantly (Holm p={_fmt(ph)}).")
    if not oh.empty:
        w("## Table III: inference cost")
        w()
        cols = ["variant", "N", "ms_per_token", "ratio_vs_window", "paper_baseline", "paper_cmr", "paper_ratio",
                "params", "peak_memory_mb", "train_tokens_per_s", "train_ratio_vs_window"]
        w(oh[cols].map(_fmt).to_markdown(index=False))
        w()
        c = oh[oh["variant"] == "cmr"]
        if len(c) and c["ratio_vs_window"].notna().any():
            w(f"CMR costs {c['ratio_vs_window'].min():.2f}-{c['ratio_vs_window'].max():.2f}x window's ms/token "
              f"(paper: {c['paper_ratio'].min():.2f}-{c['paper_ratio'].max():.2f}x) and trains at "
              f"{_fmt(c['train_ratio_vs_window'].iloc[0])}x window's tokens/s.")
            w()
        w("Paper values are ms/token on the paper's (unstated) hardware; compare the ratios, not the absolute times.")
        w()
        w("![overhead](tables/overhead.png)")
        w()
    w("## Where CMR does not beat window")
    w()
    if verdicts:
        for v in verdicts:
            w(f"- {v}")
    elif not any("cmr" in t["variant"].values and "window" in t["variant"].values for t, _ in tables.values()):
        w("- Not assessed: `cmr` and `window` were not both evaluated.")
    else:
        w("- In every cell, CMR is above window and the difference is significant after Holm correction.")
    w()
    w("## Stage wall times")
    w()
    w(times_df.map(_fmt).to_markdown(index=False))
    w()
    if notes:
        w("## Notes")
        w()
        for n in notes:
            w(f"- {n}")
        w()
    return out.getvalue()


# ------------------------------------------------------------------------------------------ entry point
def _study_dirs(cfg: dict, all_runs: bool) -> tuple[list[Path], list[Path]]:
    exp = Path((cfg.get("paths") or {}).get("experiments_dir", "experiments"))
    if all_runs or not cfg.get("study"):
        evals = sorted(p for p in (exp / "eval").glob("*") if p.is_dir()) if (exp / "eval").is_dir() else []
        if not evals:
            raise DataError(f"no evaluation runs under {exp / 'eval'}/ (run the evaluate stage first)")
        return evals, [exp / "train" / p.name for p in evals]
    names = [f"{v}-s{s}" for v in cfg["study"]["variants"] for s in cfg["study"]["seeds"]]
    missing = [str(exp / "eval" / n / "predictions.parquet") for n in names
               if not (exp / "eval" / n / "predictions.parquet").is_file()]
    if missing:
        raise DataError("evaluation outputs missing: " + ", ".join(missing))
    return [exp / "eval" / n for n in names], [exp / "train" / n for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    ap.add_argument("--all-runs", action="store_true",
                    help="report every experiments/eval/*/ run, not only study.variants x study.seeds")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a validity check FAILED")
    args = ap.parse_args(argv)
    try:
        import yaml

        p = Path(args.params)
        if not p.is_file():
            raise ConfigError(f"params file not found: {p}")
        cfg = yaml.safe_load(p.read_text()) or {}
        evals, trains = _study_dirs(cfg, args.all_runs)
        results = Path((cfg.get("paths") or {}).get("results_dir", "results"))
        summary = build_report(cfg, evals, trains, results)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {results}/ (REPORT.md, summary.json, tables/<table>.csv/.md/.tex/.png, plots/, "
          f"stage_times.csv)")
    failed = [k for k, v in summary["validity"].items() if v["status"] == FAILED]
    return 1 if (args.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
