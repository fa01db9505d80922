"""Report stage: aggregate every evaluation run into tables, plots, verdicts, summary.json and REPORT.md.

`python -m pipeline.report [--params params.yaml] [--all]` reads the composed config, finds the
study's runs at experiments/eval/<variant>/s<seed>/ (pipeline/paths.py; `--all`: every
experiments/eval/*/s*/), and writes results/. Only pandas / scipy / matplotlib are imported
(no torch), so the stage starts in about a second.

The paper's "baseline model" is our `window` variant; the paper's numbers (pipeline/report/paper_numbers.yaml)
stand beside ours in every table. Accuracy cells: mean over seeds of the per-seed accuracy (each seed's
accuracy = mean over documents of the per-document accuracy), a bootstrap CI over documents (each
document's accuracy averaged over seeds), and n (queries, documents, seeds). cmr-vs-window and
cmr-vs-xl cells get an exact McNemar test on the per-query outcomes paired by (seed, split, document,
query) and pooled over seeds, Holm-corrected over every such cell of the paper's tables II, IV, V, VI
together (the distance table, a re-slicing of table II's queries, is its own family).

Inputs beside the evaluation runs: results/datasets/datasets.csv (Table I, written by
`python -m pipeline.datasets_table`, shown in REPORT.md if present); the training runs'
metrics.json; and the attention stage's experiments/attention/<variant>/s<seed>/attention.parquet.
Attention outputs are required exactly when experiments/attention/ exists (the DVC report stage
depends on it, so in the pipeline it always does): then a missing file is a DataError naming it.
Without the folder (unit tests, or a study run before that stage existed) claim (6) is "not tested".

Each paper claim gets a verdict (supported / not supported / mixed / not tested) computed by the
rules in `CLAIMS` and `*_verdict` below, which REPORT.md states beside the verdicts.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.io import atomic_write_bytes, atomic_write_json, atomic_write_text, staged_outputs
from pipeline.paths import experiments_dir, run_dir, run_name
from pipeline.report_config import ReportConfig, report_config
from pipeline.report import checks
from pipeline.report.curves import write_curves
from pipeline.report.memory import write_memory
from pipeline.report.common import (FAILED, MIXED, NOT_RUN, NOT_SUPPORTED, NOT_TESTABLE, NOT_TESTED, PASSED,
                                    SUPPORTED, VARIANT_ORDER, distance_bin, segment_distance)
from pipeline.report.common import doc_mean_over_seeds as _doc_mean_over_seeds
from pipeline.stats import (align_pairs, bootstrap_ci, bootstrap_diff_ci, bootstrap_ratio_ci, holm,
                            mcnemar_from_outcomes)

PAPER_NUMBERS_PATH = Path(__file__).with_name("paper_numbers.yaml")
REQUIRED_COLUMNS = ("variant", "seed", "split", "task", "length", "doc_id", "query_idx", "query_type",
                    "answer", "pred", "correct")
BASELINE_CAPTION = "Paper baseline = the paper's baseline model, which is our `window` variant."
# What the report stage writes under results/ (its DVC outs), swapped in together when it succeeds;
# results/plots/ is shared with the datasets stage, so there the report replaces only its own files.
REPORT_OUTPUTS = ["tables", "REPORT.md", "summary.json", "stage_times.csv"]
REPORT_SHARED = ("plots",)
ATTENTION_FILE = "attention.parquet"
ATTENTION_METRICS = ("entropy", "mass_fact", "mass_memory", "mass_fact_slots")


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
    family: str = "paper"  # Holm family: the paper's tables are corrected together


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
                 "[0,1), [1,2), [2,4), ...); distances beyond the longest training document are extrapolation",
                 family="distance"),
)
COMPARISONS = (("cmr", "window"), ("cmr", "xl"))
FAMILY_TEXT = {
    "paper": "Holm-corrected over all cmr-vs-window and cmr-vs-xl cells of tables II, IV, V and VI together",
    "distance": "Holm-corrected over this table's cmr-vs-window and cmr-vs-xl cells (its own family: "
                "the same queries as table II, sliced by distance)",
}


# ---------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict:
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
    overhead = _read_json(run_dir_ / "overhead.json") if (run_dir_ / "overhead.json").is_file() else None
    metrics = _read_json(run_dir_ / "metrics.json") if (run_dir_ / "metrics.json").is_file() else None
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


# ------------------------------------------------------------------------------- training length (extrapolation)
@dataclass(frozen=True)
class TrainLength:
    """How long the training documents were: beyond it `full` sees positions it never trained on."""

    tokens: int | None  # data.train_max_segments * backbone.window (or the manifest's longest train doc)
    segments: int | None  # the same in segments of W tokens
    source: str


def train_length(cfg: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> TrainLength:
    window = int((cfg.get("backbone") or {}).get("window") or 0)
    segs = (cfg.get("data") or {}).get("train_max_segments")
    if segs and window:
        return TrainLength(int(segs) * window, int(segs), "data.train_max_segments x backbone.window")
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


# ------------------------------------------------------------------------------------------ computation
def cell_stats(sub: pd.DataFrame, rc: ReportConfig) -> dict:
    """Mean over seeds, bootstrap CI over documents (each document averaged over seeds), n."""
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


def doc_gaps(pairs: pd.DataFrame) -> np.ndarray:
    """Per-document accuracy gap (a - b) from paired outcomes, each document averaged over seeds."""
    d = pairs.assign(_d=pairs["correct_a"].astype(float) - pairs["correct_b"].astype(float))
    return d.groupby(["seed", "split", "doc_id"])["_d"].mean().groupby(level=["split", "doc_id"]).mean().to_numpy()


@dataclass
class AccuracyResult:
    """One accuracy table: rows variant x key, its paired tests, and the per-document gaps behind them."""

    spec: AccuracySpec
    table: pd.DataFrame
    tests: pd.DataFrame
    gaps: dict = field(default_factory=dict)  # (comparison, key) -> per-document gaps (np.ndarray)


def accuracy_table(preds: pd.DataFrame, spec: AccuracySpec, paper: PaperTable | None, rc: ReportConfig,
                   doc_tokens: Mapping[str, float] | None = None, train_tokens: int | None = None) -> AccuracyResult:
    """Table rows variant x key and the McNemar tests (raw p; `apply_holm` adds the corrected ones)."""
    sub = preds[preds["task"] == spec.task].copy()
    if sub.empty:
        return AccuracyResult(spec, pd.DataFrame(), pd.DataFrame())
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
            if doc_tokens is not None and train_tokens:
                longest = max((doc_tokens.get(s, math.nan) for s in cell["split"].unique()), default=math.nan)
                row["extrapolation"] = bool(v == "full" and longest > train_tokens)
            rows.append(row)
    table = pd.DataFrame(rows)

    tests, gaps = [], {}
    for a, b in COMPARISONS:
        if a not in variants or b not in variants:
            continue
        for k in keys:
            pa = sub[(sub["variant"] == a) & (sub["_key"] == k)]
            pb_ = sub[(sub["variant"] == b) & (sub["_key"] == k)]
            if pa.empty or pb_.empty:
                continue
            comp = f"{a}_vs_{b}"
            pairs = align_pairs(pa, pb_)
            if pairs.empty:
                tests.append({"comparison": comp, spec.key: k, "b": 0, "c": 0, "n_pairs": 0,
                              "p_value": math.nan, "note": "no paired queries"})
                continue
            m = mcnemar_from_outcomes(pairs["correct_a"], pairs["correct_b"])
            g = doc_gaps(pairs)
            gaps[(comp, k)] = g
            ci = bootstrap_ci(g, level=rc.ci_level, n_resamples=rc.n_resamples, method=rc.ci_method, seed=rc.seed)
            per_seed = [(s, mcnemar_from_outcomes(q["correct_a"], q["correct_b"]).p_value,
                         q["correct_a"].mean() > q["correct_b"].mean()) for s, q in pairs.groupby("seed")]
            tests.append({"comparison": comp, spec.key: k, "b": m.b, "c": m.c, "n_pairs": m.n_pairs,
                          "gap": ci.mean, "gap_ci_low": ci.low, "gap_ci_high": ci.high, "n_docs": ci.n,
                          "p_value": m.p_value, "n_seeds": len(per_seed),
                          "seeds_cmr_better": int(sum(w for _, _, w in per_seed)),
                          "p_per_seed": "; ".join(f"s{s}: {p:.2g}" for s, p, _ in per_seed),
                          "note": "" if len(pairs) == min(len(pa), len(pb_)) else
                          f"{max(len(pa), len(pb_)) - len(pairs)} unpaired queries dropped"})
    return AccuracyResult(spec, table, pd.DataFrame(tests), gaps)


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
    """Table III: ms/token by N per variant (mean over seeds), ratios to window (+ CI over timing repeats),
    params, memory, train speed."""
    rc = rc or ReportConfig()
    recs, static, reps = [], [], {}
    for r in runs:
        oh = r["overhead"]
        if oh is None:
            continue
        for n, ms in (oh.get("ms_per_token") or {}).items():
            recs.append({"variant": r["variant"], "seed": r["seed"], "N": _norm_key(n), "ms_per_token": float(ms)})
        for n, xs in (oh.get("ms_per_token_repeats") or {}).items():
            reps.setdefault((r["variant"], _norm_key(n)), []).extend(float(x) for x in xs)
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
    win = t[t["variant"] == "window"].set_index("N")["ms_per_token"]
    t["ratio_vs_window"] = t["ms_per_token"] / t["N"].map(win) if len(win) else math.nan
    lo, hi = [], []
    for v, n in zip(t["variant"], t["N"]):
        a, b = reps.get((v, n)), reps.get(("window", n))
        ci = (bootstrap_ratio_ci(a, b, level=rc.ci_level, n_resamples=rc.n_resamples, seed=rc.seed)
              if a and b and v != "window" else None)
        lo.append(ci.low if ci else math.nan)
        hi.append(ci.high if ci else math.nan)
    t["ratio_ci_low"], t["ratio_ci_high"] = lo, hi
    wtps = sv["train_tokens_per_s"].get("window", math.nan) if "window" in sv.index else math.nan
    t["train_ratio_vs_window"] = t["train_tokens_per_s"] / wtps
    pb = [paper.lookup(n) if paper else (math.nan, math.nan) for n in t["N"]]
    t["paper_baseline"] = [p[0] for p in pb]
    t["paper_cmr"] = [p[1] for p in pb]
    t["paper_ratio"] = t["paper_cmr"] / t["paper_baseline"]
    order = {v: i for i, v in enumerate(_variant_order(t["variant"].unique()))}
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


# -------------------------------------------------------------------------------------------- attention
def _attention_module():
    """The attention stage's module (pipeline/evaluate/attention.py), imported only when its outputs exist."""
    try:
        return importlib.import_module("pipeline.evaluate.attention")
    except ImportError as e:
        raise DataError(f"attention outputs exist but pipeline.evaluate.attention cannot be imported: {e}") from e


def attention_paths(cfg: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[Path] | None:
    """The study runs' attention files, or None when experiments/attention/ does not exist (not tested).

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


# --------------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Claim:
    """One claim of the paper and where our evidence for it comes from."""

    id: int
    name: str  # accuracy table name, "overhead" or "attention"
    source: str  # where the paper says it
    text: str
    trend: int = 0  # +1: the gap should grow with the key; -1: it should be largest at the smallest key


CLAIMS = (
    Claim(1, "recall", "Table II", "CMR recalls better than the baseline at every N, and the gap grows with N", +1),
    Claim(2, "overhead", "Table III", "CMR's inference overhead is small (+5-11% ms/token over the baseline)"),
    Claim(3, "rare", "Table IV", "CMR recalls rare tokens better, most at the lowest training counts", -1),
    Claim(4, "dialogue", "Table V", "CMR's dialogue consistency is higher and degrades less with turns", +1),
    Claim(5, "numeric", "Table VI", "CMR's numeric accuracy is higher and the gap grows with N", +1),
    Claim(6, "attention", "abstract", "CMR's attention is more structured (lower entropy, more mass on the fact "
                                      "or the memory holding it)"),
)
VERDICT_RULES = {
    "accuracy": ("cmr vs window (the paper's baseline), per cell: gap = cmr - window accuracy with a "
                 "{ci}% bootstrap CI over documents; a win or loss needs Holm p < {alpha}. Trend: gap at the last "
                 "key minus gap at the first (first minus last where the claim says 'most at low counts'), "
                 "{ci}% bootstrap CI, the two cells' documents resampled independently. supported = a significant "
                 "win in every cell and a trend CI above 0; not supported = no significant win; mixed = otherwise."),
    "overhead": ("cmr/window ms/token per N (mean over seeds; CI: bootstrap of the ratio of medians over the timing "
                 "repeats pooled over seeds). supported = ratio <= {ratio} at every N; not supported = ratio > "
                 "{ratio} at every N; mixed = otherwise."),
    "attention": ("cmr vs window per layer, from the attention table's CIs: entropy lower (cmr's CI entirely below "
                  "window's) or mass on the fact higher (cmr: mass on slots holding the fact where measured, else on "
                  "the fact's position; window: on the fact's position; CIs disjoint) counts as more structured, the "
                  "reverse as less. supported = at least one 'more' and no 'less'; not supported = no 'more'; "
                  "mixed = both."),
}


def _rule(kind: str, rc: ReportConfig) -> str:
    return VERDICT_RULES[kind].format(ci=int(rc.ci_level * 100), alpha=rc.alpha, ratio=rc.overhead_small_ratio)


def _not_tested(claim: Claim, why: str, rc: ReportConfig, kind: str) -> dict:
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text,
            "verdict": NOT_TESTED, "evidence": why, "cmr_loses": "", "rule": _rule(kind, rc)}


def _ci_text(x: float, lo: float, hi: float, signed: bool = True) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{x:{f}} [{lo:{f}}, {hi:{f}}]" if all(map(math.isfinite, (x, lo, hi))) else f"{x:{f}}"


def accuracy_verdict(claim: Claim, res: AccuracyResult | None, rc: ReportConfig) -> dict:
    """Verdict on an accuracy claim from cmr-vs-window cells: every cell a significant win, and the trend."""
    if res is None or res.tests.empty or "p_holm" not in res.tests:
        return _not_tested(claim, f"no cmr-vs-window comparison for `{claim.name}` (cmr and window not both "
                                  f"evaluated on it)", rc, "accuracy")
    key = res.spec.key
    t = res.tests[res.tests["comparison"] == "cmr_vs_window"]
    if t.empty:
        return _not_tested(claim, "cmr and window not both evaluated", rc, "accuracy")
    t = t.set_index(key).loc[_sort_key_values(t[key])]
    sig = t["p_holm"] < rc.alpha
    wins = t.index[sig & (t["gap"] > 0)].tolist()
    losses = t.index[sig & (t["gap"] < 0)].tolist()
    ties = [k for k in t.index if k not in wins and k not in losses]
    cells = "; ".join(f"{key}={k}: {_ci_text(r['gap'], r['gap_ci_low'], r['gap_ci_high'])}, "
                      f"p_holm={_fmt(r['p_holm'])}, seeds cmr better {r['seeds_cmr_better']}/{r['n_seeds']}"
                      for k, r in t.iterrows())
    keys = list(t.index)
    trend_ok = trend_bad = False
    trend_txt = "trend: one cell only"
    if len(keys) >= 2 and claim.trend:
        first, last = keys[0], keys[-1]
        hi_k, lo_k = (last, first) if claim.trend > 0 else (first, last)
        g_hi, g_lo = res.gaps.get(("cmr_vs_window", hi_k)), res.gaps.get(("cmr_vs_window", lo_k))
        if g_hi is not None and g_lo is not None:
            ci = bootstrap_diff_ci(g_hi, g_lo, level=rc.ci_level, n_resamples=rc.n_resamples, method=rc.ci_method,
                                   seed=rc.seed)
            trend_ok, trend_bad = ci.low > 0, ci.high < 0
            if claim.trend > 0:
                shape = "grows with" if trend_ok else "shrinks with" if trend_bad else "no clear trend with"
            else:
                shape = ("largest at the lowest" if trend_ok else "larger at the highest" if trend_bad
                         else "no clear difference between lowest and highest")
            trend_txt = (f"gap at {key}={hi_k} minus gap at {key}={lo_k}: {_ci_text(ci.mean, ci.low, ci.high)} "
                         f"({shape} {key})")
    if not wins:
        verdict = NOT_SUPPORTED
    elif len(wins) == len(t) and trend_ok:
        verdict = SUPPORTED
    else:
        verdict = MIXED
    evidence = (f"significant wins {len(wins)}/{len(t)} cells (Holm, alpha={rc.alpha}); {trend_txt}. "
                f"Per cell gap cmr - window [CI]: {cells}")
    lose = []
    if losses:
        lose.append(f"CMR is significantly worse than window at {key}=" + ", ".join(map(str, losses)) + ".")
    if ties:
        lose.append(f"CMR does not beat window significantly at {key}=" + ", ".join(map(str, ties)) + ".")
    if claim.trend and len(keys) >= 2 and not trend_ok:
        if claim.trend > 0:
            lose.append(f"The gap shrinks with {key}." if trend_bad else f"The gap does not grow with {key} beyond noise.")
        else:
            lose.append(f"The gap is larger at the highest {key} than at the lowest." if trend_bad else
                        f"The gap is not measurably larger at the lowest {key}.")
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text, "verdict": verdict,
            "evidence": evidence, "cmr_loses": " ".join(lose), "rule": _rule("accuracy", rc)}


def overhead_verdict(claim: Claim, oh: pd.DataFrame, rc: ReportConfig) -> dict:
    if oh.empty or "cmr" not in set(oh["variant"]) or "window" not in set(oh["variant"]):
        return _not_tested(claim, "no overhead.json for both cmr and window", rc, "overhead")
    c = oh[oh["variant"] == "cmr"].dropna(subset=["ratio_vs_window"])
    if c.empty:
        return _not_tested(claim, "no N timed for both cmr and window", rc, "overhead")
    small = c["ratio_vs_window"] <= rc.overhead_small_ratio
    verdict = SUPPORTED if small.all() else NOT_SUPPORTED if not small.any() else MIXED
    cells = "; ".join(f"N={n}: {_ci_text(r, lo, hi, signed=False)}x"
                      for n, r, lo, hi in zip(c["N"], c["ratio_vs_window"], c["ratio_ci_low"], c["ratio_ci_high"]))
    paper = c["paper_ratio"].dropna()
    ptxt = f"paper {paper.min():.2f}-{paper.max():.2f}x" if len(paper) else "paper ratios n/a"
    evidence = (f"cmr/window ms/token {c['ratio_vs_window'].min():.2f}-{c['ratio_vs_window'].max():.2f}x "
                f"({ptxt}; small = <= {rc.overhead_small_ratio}x). Per N [CI]: {cells}")
    big = c.loc[~small, "N"].tolist()
    lose = (f"CMR costs more than {rc.overhead_small_ratio}x window's ms/token at N=" + ", ".join(map(str, big))
            + f" (up to {c['ratio_vs_window'].max():.2f}x).") if big else ""
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text, "verdict": verdict,
            "evidence": evidence, "cmr_loses": lose, "rule": _rule("overhead", rc)}


def _metric_ci(row: pd.Series, m: str) -> tuple[float, float, float]:
    """(mean, low, high) of metric m in an attention-table row; NaNs where absent."""
    get = lambda c: float(row[c]) if c in row.index and pd.notna(row[c]) else math.nan  # noqa: E731
    mean = get(m) if math.isfinite(get(m)) else get(f"{m}_mean")
    low = get(f"{m}_ci_low") if f"{m}_ci_low" in row.index else get(f"{m}_low")
    high = get(f"{m}_ci_high") if f"{m}_ci_high" in row.index else get(f"{m}_high")
    return mean, low, high


def attention_verdict(claim: Claim, table: pd.DataFrame | None, rc: ReportConfig, why: str = "") -> dict:
    if table is None or table.empty:
        return _not_tested(claim, why or "no attention table", rc, "attention")
    if not {"variant", "layer"} <= set(table.columns) or not {"cmr", "window"} <= set(table["variant"]):
        return _not_tested(claim, "attention table lacks cmr and window rows per layer", rc, "attention")
    more, less, cells = [], [], []
    for layer in _sort_key_values(table["layer"]):
        c = table[(table["variant"] == "cmr") & (table["layer"] == layer)]
        w = table[(table["variant"] == "window") & (table["layer"] == layer)]
        if c.empty or w.empty:
            continue
        c, w = c.iloc[0], w.iloc[0]
        ce, we = _metric_ci(c, "entropy"), _metric_ci(w, "entropy")
        cf = _metric_ci(c, "mass_fact_slots")
        if not math.isfinite(cf[0]):
            cf = _metric_ci(c, "mass_fact")
        wf = _metric_ci(w, "mass_fact")
        if ce[2] < we[1]:
            more.append(f"layer {layer}: entropy lower")
        elif ce[1] > we[2]:
            less.append(f"layer {layer}: entropy higher")
        if cf[1] > wf[2]:
            more.append(f"layer {layer}: more mass on the fact")
        elif cf[2] < wf[1]:
            less.append(f"layer {layer}: less mass on the fact")
        cells.append(f"layer {layer}: entropy cmr {_ci_text(*ce, signed=False)} vs window {_ci_text(*we, signed=False)}"
                     f", mass on fact cmr {_ci_text(*cf, signed=False)} vs window {_ci_text(*wf, signed=False)}")
    if not cells:
        return _not_tested(claim, "no layer with both cmr and window rows", rc, "attention")
    verdict = NOT_SUPPORTED if not more else MIXED if less else SUPPORTED
    evidence = (f"more structured: {', '.join(more) or 'none'}; less: {', '.join(less) or 'none'}. "
                + "; ".join(cells))
    lose = ("CMR's attention is less structured than window's: " + ", ".join(less) + ".") if less else (
        "" if more else "CMR's attention is not measurably more structured than window's (CIs overlap).")
    return {"claim": claim.id, "name": claim.name, "source": claim.source, "text": claim.text, "verdict": verdict,
            "evidence": evidence, "cmr_loses": lose, "rule": _rule("attention", rc)}


def verdicts(results: Mapping[str, AccuracyResult], oh: pd.DataFrame, attention: pd.DataFrame | None,
             rc: ReportConfig, attention_why: str = "", validity: Mapping[str, dict] | None = None) -> list[dict]:
    """One verdict per claim in CLAIMS, in order. A claim whose validity checks (checks.CLAIM_CHECKS)
    did not all pass is "not testable": its evidence is still computed and shown, but no verdict is drawn."""
    out = []
    for claim in CLAIMS:
        if claim.name == "overhead":
            v = overhead_verdict(claim, oh, rc)
        elif claim.name == "attention":
            v = attention_verdict(claim, attention, rc, attention_why)
        else:
            v = accuracy_verdict(claim, results.get(claim.name), rc)
        blocked = checks.blocking(claim.name, validity or {})
        if blocked and v["verdict"] != NOT_TESTED:
            v = {**v, "verdict": NOT_TESTABLE, "would_be": v["verdict"], "blocked_by": blocked,
                 "cmr_loses": f"validity checks not passed: {'; '.join(blocked)}",
                 "evidence": f"not testable (validity checks not passed: {'; '.join(blocked)}); the evidence "
                             f"as measured: {v['evidence']}"}
        out.append(v)
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
    pcols = [c for c in df.columns if c.startswith("p_") and pd.api.types.is_numeric_dtype(df[c])]
    if pcols:  # p-values span many orders of magnitude: 0.000 would hide them
        sty = sty.format("{:.2g}", subset=pcols, na_rep="--")
    sty = sty.format_index(escape="latex", axis=1)
    return sty.to_latex(caption=caption.replace("_", r"\_").replace("`", ""), label=label, hrules=True,
                        position="htbp") + "\n"


def write_table(df: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """<stem>.csv, .md (with the caption) and .tex (booktabs table with caption and label tab:<name>)."""
    atomic_write_text(stem.with_suffix(".csv"), df.to_csv(index=False))
    atomic_write_text(stem.with_suffix(".md"), _to_markdown(df, caption))
    atomic_write_text(stem.with_suffix(".tex"), _to_latex(df, caption, f"tab:{stem.name}"))
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
    xs_all = _sort_key_values(table[spec.key])
    pos = (lambda v: v) if numeric_x else (lambda v: xs_all.index(v))
    for v in _variant_order(table["variant"].unique()):
        t = table[table["variant"] == v].sort_values(spec.key)
        x = [pos(k) for k in t[spec.key]]
        y = t["accuracy"].to_numpy()
        err = np.vstack([y - t["ci_low"].to_numpy(), t["ci_high"].to_numpy() - y])
        line = ax.errorbar(x, y, yerr=np.nan_to_num(np.clip(err, 0, None)), marker="o", capsize=3, label=v)
        colors[v] = line.lines[0].get_color()
        if "extrapolation" in t and t["extrapolation"].fillna(False).astype(bool).any():
            ex = t["extrapolation"].fillna(False).astype(bool).to_numpy()
            ax.scatter(np.asarray(x)[ex], y[ex], marker="x", s=60, color=colors[v], zorder=3,
                       label=f"{v}: beyond its training length")
    if paper is not None and numeric_x:
        f = paper.to_fraction
        ax.plot(paper.rows, [b * f for b in paper.baseline], "--", color=colors.get("window", "gray"),
                label=f"paper baseline (= window), table {paper.table}")
        ax.plot(paper.rows, [c * f for c in paper.cmr], "--", color=colors.get("cmr", "black"),
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
    ax.set_xlabel({"N": "document length N (tokens)", "bucket": "answer's count in training split",
                   "turns": "dialogue turns",
                   "distance_segments": "segments from the fact's to the query's (bin lower edge)"
                   }.get(spec.key, spec.key))
    ax.set_ylabel("accuracy (95% CI over documents)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(spec.title.split(":")[0] + f": {spec.name}" if spec.family == "paper" else
                 "Recall by fact-to-query distance")
    ax.legend(fontsize=8)
    save_png(fig, path)
    plt.close(fig)


def plot_overhead(t: pd.DataFrame, paper: PaperTable | None, path: Path) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for v in _variant_order(t["variant"].unique()):
        d = t[t["variant"] == v].sort_values("N")
        (line,) = a1.plot(d["N"], d["ms_per_token"], marker="o", label=v)
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
    a1.set_title("Table III: inference cost")
    a2.set_xlabel("document length N (tokens)")
    a2.set_ylabel("ms/token ratio")
    a2.set_title("cost relative to window / paper baseline")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    save_png(fig, path)
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


def stage_time_rows(cfg: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], train: Mapping[str, dict],
                    train_src: Mapping[str, str]) -> list[dict]:
    """One row per DVC stage run: its stage.json (the stage's own wall clock: seeds run side by side)
    where the stage wrote one, else one row per run from the run's own wall time."""
    rows: list[dict] = []
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    for kind, stage in (("train", "train"), ("eval", "evaluate"), ("attention", "attention")):
        for v in variants:
            seeds = [r["seed"] for r in runs if r["variant"] == v]
            stage_file = run_dir(cfg, kind, v, 0).parent / "stage.json"
            if stage_file.is_file():
                rows.append({"stage": stage, "run": v, "runs": len(seeds), "wall_s": _wall(_read_json(stage_file)),
                             "source": str(stage_file)})
            elif kind == "train":
                rows += [{"stage": "train", "run": run_name(v, s), "runs": 1,
                          "wall_s": _wall(train[run_name(v, s)]), "source": train_src.get(run_name(v, s), "")}
                         for s in seeds if run_name(v, s) in train]
            elif kind == "eval":
                rows += [{"stage": "evaluate", "run": run_name(r["variant"], r["seed"]), "runs": 1,
                          "wall_s": _wall(r["metrics"]), "source": r["dir"]} for r in runs if r["variant"] == v]
    oh_file = experiments_dir(cfg) / "overhead" / "stage.json"
    if oh_file.is_file():
        rows.append({"stage": "overhead", "run": "all", "runs": len(runs), "wall_s": _wall(_read_json(oh_file)),
                     "source": str(oh_file)})
    return rows


def _wall(d: dict | None) -> float | None:
    if not d:
        return None
    for k in ("wall_s", "wall_time_s", "elapsed_s", "wall_seconds"):
        if isinstance(d.get(k), (int, float)):
            return float(d[k])
    return None


def setup_table(cfg: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], train: Mapping[str, dict]) -> pd.DataFrame:
    """Per variant: model size and what training cost (mean over its seeds); "n/a" where not recorded."""
    bb = cfg.get("backbone") or {}
    rows = []
    for v in _variant_order({r["variant"] for r in runs}):
        seeds = sorted(r["seed"] for r in runs if r["variant"] == v)
        tms = [train[run_name(v, s)] for s in seeds if run_name(v, s) in train]
        ohs = [r["overhead"] for r in runs if r["variant"] == v and r["overhead"]]

        def first(k):
            for d in (*tms, *ohs):
                if d.get(k) is not None:
                    return d[k]
            return "n/a"

        def mean(k):
            xs = [float(d[k]) for d in tms if isinstance(d.get(k), (int, float))]
            return sum(xs) / len(xs) if xs and len(xs) == len(tms) else "n/a"

        rows.append({"variant": v, "params": first("params"), "d_model": bb.get("d_model", "n/a"),
                     "layers": bb.get("n_layers", "n/a"), "window": bb.get("window", "n/a"),
                     "memory_floats": first("memory_floats"), "tokens_trained_per_seed": mean("tokens_trained"),
                     "train_wall_s_per_seed": mean("wall_s"), "steps": first("steps"),
                     "seeds": ", ".join(map(str, seeds))})
    return pd.DataFrame(rows)


def hardware_lines(runs: Sequence[Mapping[str, Any]], train: Mapping[str, dict]) -> list[str]:
    """Where training and timing ran, from the runs' own records ("n/a" where they do not say)."""
    seen: dict[str, list[str]] = {}
    for name, m in sorted(train.items()):
        hw = m.get("hardware")
        text = ", ".join(f"{k}={hw.get(k, 'n/a')}" for k in ("device", "cpu", "torch", "threads")) \
            if isinstance(hw, dict) else "n/a"
        seen.setdefault(text, []).append(name)
    out = [f"training hardware: {hw} ({', '.join(names)})" for hw, names in seen.items()] or ["training hardware: n/a"]
    ev: dict[str, list[str]] = {}
    for r in runs:
        oh = r["overhead"] or {}
        text = f"device={oh.get('device', 'n/a')}, threads={oh.get('threads', 'n/a')}, batch={oh.get('batch_size', 'n/a')}"
        ev.setdefault(text, []).append(run_name(r["variant"], r["seed"]))
    out += [f"inference timing (Table III): {t} ({', '.join(n)})" for t, n in ev.items()]
    return out


def build_report(cfg: Any, eval_dirs: Sequence[str | Path], train_dirs: Sequence[str | Path],
                 results_dir: str | Path, datasets_csv: str | Path | None = None) -> dict:
    """Aggregate the given evaluation (and training) runs into results_dir; return summary.json's content.

    Table I comes from `datasets_csv` (default: results_dir/datasets/datasets.csv, the datasets stage's out)."""
    t0 = time.perf_counter()
    cfg = _plain(cfg)
    rc = report_config(cfg)
    results_dir = Path(results_dir)
    if not eval_dirs:
        raise DataError("no evaluation runs to report (experiments/eval/<variant>/s<seed>/ missing)")
    paper = load_paper_numbers()
    notes: list[str] = []

    frames, runs = [], []
    for d in eval_dirs:
        df, oh, met = load_eval_run(d)
        if df.empty:
            raise DataError(f"{Path(d) / 'predictions.parquet'} has no rows")
        v, s = df["variant"].iloc[0], int(df["seed"].iloc[0])
        oh_file = run_dir(cfg, "overhead", v, s) / "overhead.json"  # the overhead stage (timed in turns)
        if oh_file.is_file():
            oh = _read_json(oh_file)
        if oh is None:
            notes.append(f"{oh_file} (or {Path(d) / 'overhead.json'}) missing: {run_name(v, s)} left out of Table III")
        frames.append(df)
        runs.append({"dir": str(d), "variant": v, "seed": s, "overhead": oh, "metrics": met})
    preds = pd.concat(frames, ignore_index=True)
    window = int((cfg.get("backbone") or {}).get("window") or 0)
    if window > 0:
        preds["distance_segments"] = distance_bin(segment_distance(preds, window))

    train: dict[str, dict] = {}
    train_src: dict[str, str] = {}
    for d in train_dirs:
        p = Path(d) / "metrics.json"
        if p.is_file():
            name = run_name(*parse_run_dir(d))
            train[name] = _read_json(p)
            train_src[name] = str(d)
        else:
            notes.append(f"training metrics missing: {p}")

    manifest_path = Path((cfg.get("paths") or {}).get("data_dir", "data")) / "manifest.json"
    manifest = _read_json(manifest_path) if manifest_path.is_file() else None
    tl = train_length(cfg, manifest)
    doc_tokens = doc_tokens_by_split(preds, manifest, cfg)

    # layout: results/tables/<table>.{csv,md,tex,png}, results/tables/<table>_tests.*, results/plots/<table>.csv
    tables_dir, plots_dir = results_dir / "tables", results_dir / "plots"
    summary: dict[str, Any] = {}
    results: dict[str, AccuracyResult] = {}
    for spec in ACCURACY_TABLES:
        if spec.source not in preds:
            notes.append(f"{spec.title.split(':')[0]}: predictions have no `{spec.source}` (backbone.window unset)")
            continue
        res = accuracy_table(preds, spec, paper["tables"].get(spec.name), rc, doc_tokens, tl.tokens)
        if res.table.empty:
            notes.append(f"no `{spec.task}` predictions: {spec.title.split(':')[0]} not reproduced")
            continue
        if spec.name == "recall_by_distance":
            res.table["distance_vs_training"] = [distance_vs_training(int(k), tl.segments)
                                                 for k in res.table[spec.key]]
        results[spec.name] = res
    family_sizes = apply_holm(results, rc.alpha)

    for name, res in results.items():
        spec, table, tests = res.spec, res.table, res.tests
        pt = paper["tables"].get(spec.name)
        fam = f"{FAMILY_TEXT[spec.family]} ({family_sizes.get(spec.family, 0)} tests)"
        extra = (f" extrapolation = `full` evaluated on documents longer than its training length "
                 f"({tl.tokens} tokens, {tl.source})." if "extrapolation" in table else "")
        if spec.family == "distance":
            extra += (f" distance_vs_training: the bin against the longest training document "
                      f"({tl.segments} segments).")
        caption = (f"{spec.title}. Ours: mean over seeds, {int(rc.ci_level * 100)}% bootstrap CI over documents "
                   f"(each document's accuracy averaged over seeds), n = queries, documents, seeds; paper values as "
                   f"fractions. {BASELINE_CAPTION} p: exact McNemar on queries paired by (seed, split, document, "
                   f"query), pooled over seeds; {fam}.{extra}")
        write_table(table, tables_dir / spec.name, caption)
        if not tests.empty:
            write_table(tests, tables_dir / f"{spec.name}_tests",
                        f"{spec.title.split(':')[0]}: exact McNemar tests on paired queries pooled over seeds "
                        f"(b = cmr right, other wrong; c = the reverse), {fam}; gap = cmr - other accuracy with a "
                        f"{int(rc.ci_level * 100)}% bootstrap CI over documents; per-seed p uncorrected")
        plot_df = table[["variant", spec.key, "accuracy", "ci_low", "ci_high"]].copy()
        if pt is not None:
            for who, vals in (("paper_baseline", pt.baseline), ("paper_cmr", pt.cmr)):
                plot_df = pd.concat([plot_df, pd.DataFrame({"variant": who, spec.key: list(pt.rows),
                                                            "accuracy": [round(x * pt.to_fraction, 6)
                                                                         for x in vals]})],
                                    ignore_index=True)
        atomic_write_text(plots_dir / f"{spec.name}.csv", plot_df.to_csv(index=False))
        mark = ((tl.segments, f"longest training document ({tl.segments} segments)")
                if spec.name == "recall_by_distance" and tl.segments else None)
        plot_accuracy(table, spec, pt, tables_dir / f"{spec.name}.png", mark=mark)
        summary[spec.name] = {v: {str(k): a for k, a in zip(g[spec.key], g["accuracy"])}
                              for v, g in table.groupby("variant", sort=False)}
        if not tests.empty:
            summary.setdefault("tests", {})[spec.name] = {
                c: {str(k): {"b": b, "c": cc, "p": p, "p_holm": ph, "gap": gp}
                    for k, b, cc, p, ph, gp in zip(g[spec.key], g["b"], g["c"], g["p_value"], g["p_holm"],
                                                   g.get("gap", pd.Series(np.nan, index=g.index)))}
                for c, g in tests.groupby("comparison", sort=False)}
    summary["holm"] = {f: {"tests": n, "what": FAMILY_TEXT[f]} for f, n in family_sizes.items()}

    oh_paper = paper["tables"].get("overhead")
    oh = overhead_table(runs, train, oh_paper, rc)
    if oh.empty:
        notes.append("no overhead.json in any run: Table III not reproduced")
    else:
        write_table(oh, tables_dir / "overhead",
                    "Table III: inference ms/token by N (batch 1, mean over seeds), ratio to window with a "
                    f"{int(rc.ci_level * 100)}% bootstrap CI (ratio of medians over timing repeats pooled over seeds), "
                    "parameters, peak memory, training tokens/s and its ratio to window; paper values in ms/token. "
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

    att_paths = attention_paths(cfg, runs)
    attention, att_why, memory_tables = None, "", None
    if att_paths is None:
        att_why = f"{experiments_dir(cfg) / 'attention'}/ does not exist (attention stage not run)"
        notes.append(f"attention not reported: {att_why}")
    else:
        attention, att_raw = build_attention(att_paths, rc, tables_dir, plots_dir)
        summary["attention"] = _jsonable(attention.to_dict("records"))
        if window > 0:
            memory_tables = write_memory(att_raw, tables_dir, plots_dir, write_table)
            if memory_tables is not None:
                summary["memory"] = {k: _jsonable(t.to_dict("records")) for k, t in memory_tables.items()}

    target = float((cfg.get("train") or {}).get("target_recall") or 0.9)
    learning = write_curves(train, tables_dir, plots_dir, target, write_table)
    if learning is None:
        notes.append("no training run recorded a validation curve: learning curves not shown")
    else:
        summary["steps_to_target"] = _jsonable(learning[1].to_dict("records"))

    chances = {float(r["metrics"]["chance_recall"]) for r in runs
               if r["metrics"] and isinstance(r["metrics"].get("chance_recall"), (int, float))}
    if len(chances) > 1:
        notes.append(f"runs disagree on chance_recall {sorted(chances)}; using the largest")
    rec = preds[preds["task"] == "recall"]
    binding = checks.binding_table(rec)
    if not binding.empty:
        write_table(binding, tables_dir / "binding",
                    "Binding: far recall queries per variant and seed; in_doc_values = share of answers that are one "
                    "of the document's fact values; acc_when_in_values = accuracy among those; uniform_pick = what a "
                    "uniform pick among the document's values would score; copies_earlier_answer = share of answers "
                    "repeating an earlier query's answer (always wrong)")
        summary["binding"] = _jsonable(binding.to_dict("records"))
    validity = checks.validity_checks(preds, rc, max(chances) if chances else None, train,
                                      xl_reach_segments(cfg), binding)
    summary["validity"] = validity
    for name, chk in validity.items():
        print(f"validity check {name}: {chk['status']} - {chk['detail']}")

    per_seed = per_seed_recall(rec)
    if not per_seed.empty:
        write_table(per_seed, tables_dir / "recall_per_seed",
                    "Far-query recall per variant and seed at each document length N (columns), the mean over the "
                    "seed's documents; the tables above pool seeds")
    verdict_list = verdicts(results, oh, attention, rc, att_why, validity)
    summary["verdicts"] = verdict_list
    for v in verdict_list:
        print(f"claim {v['claim']} ({v['source']}): {v['verdict']}")

    ds_csv = Path(datasets_csv) if datasets_csv is not None else results_dir / "datasets" / "datasets.csv"
    datasets = pd.read_csv(ds_csv) if ds_csv.is_file() else None
    if datasets is None:
        notes.append(f"{ds_csv} missing: Table I not shown (run `python -m pipeline.datasets_table`)")
    else:
        summary["datasets"] = {str(r["split"]): {"documents": r.get("documents"), "mean_tokens": r.get("mean_tokens")}
                               for r in datasets.to_dict("records")}

    prep = experiments_dir(cfg) / "prepare" / "stage.json"
    times = [{"stage": "prepare", "run": "data", "runs": 1, "wall_s": _wall(_read_json(prep) if prep.is_file() else None),
              "source": str(prep)}]
    times += stage_time_rows(cfg, runs, train, train_src)
    times.append({"stage": "report", "run": "report", "runs": 1, "wall_s": time.perf_counter() - t0,
                  "source": "measured by report"})
    times_df = pd.DataFrame(times)
    if times_df["wall_s"].isna().any():
        missing = times_df[times_df["wall_s"].isna()]
        notes.append("wall time unknown for: " + ", ".join(f"{a}/{b}" for a, b in zip(missing["stage"], missing["run"])))
    atomic_write_text(results_dir / "stage_times.csv", times_df.to_csv(index=False))
    summary["stage_times_s"] = {f"{a}/{b}": w for a, b, w in zip(times_df["stage"], times_df["run"], times_df["wall_s"])}
    setup = setup_table(cfg, runs, train)
    summary["setup"] = {"seeds": sorted({r["seed"] for r in runs}), "train_length_tokens": tl.tokens,
                        "variants": setup.set_index("variant").to_dict("index")}
    summary["notes"] = notes
    summary = _jsonable(summary)
    atomic_write_json(results_dir / "summary.json", summary)
    atomic_write_text(results_dir / "REPORT.md",
                      render_markdown(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes,
                                      datasets=datasets, setup=setup, verdict_list=verdict_list,
                                      attention=attention, family_sizes=family_sizes, train_len=tl,
                                      diagnostics={"learning": learning, "per_seed": per_seed, "binding": binding,
                                                   "memory": memory_tables}))
    for n in notes:
        print(f"note: {n}")
    return summary


def per_seed_recall(rec: pd.DataFrame) -> pd.DataFrame:
    """Far recall per (variant, seed) and N: one column per N."""
    far = rec[rec["query_type"] == "far"]
    if far.empty:
        return pd.DataFrame()
    doc = far.groupby(["variant", "seed", "length", "split", "doc_id"])["correct"].mean()
    t = doc.groupby(level=["variant", "seed", "length"]).mean().unstack("length")
    t.columns = [f"N={int(c)}" for c in t.columns]
    t = t.reset_index()
    order = {v: i for i, v in enumerate(_variant_order(t["variant"]))}
    return t.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c,
                         kind="stable").reset_index(drop=True)


def xl_reach_segments(cfg: Mapping[str, Any]) -> int | None:
    """Segments back `xl` can see: n_layers x mem_len tokens (each layer's cache reaches one cache further)."""
    b, xl = cfg.get("backbone") or {}, ((cfg.get("models") or {}).get("xl") or {})
    if not (b.get("window") and b.get("n_layers") and xl.get("mem_len")):
        return None
    return int(b["n_layers"]) * int(xl["mem_len"]) // int(b["window"])


# ------------------------------------------------------------------------------------------- REPORT.md
def _compact(table: pd.DataFrame, tests: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per key: paper baseline | each variant 'acc [lo, hi]' | paper CMR | cmr-vs-x b/c, p_holm."""
    rows = []
    for k in _sort_key_values(table[key]):
        t = table[table[key] == k]
        r: dict[str, Any] = {key: k}
        if "distance_vs_training" in t:
            r["vs training docs"] = t["distance_vs_training"].iloc[0]
        r["paper baseline"] = _fmt(t["paper_baseline"].iloc[0])
        for _, x in t.iterrows():
            flag = ("*" if x["ci_degenerate"] else "") + ("†" if bool(x.get("extrapolation", False)) else "")
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


def _md_cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes, *,
                    datasets: pd.DataFrame | None = None, setup: pd.DataFrame | None = None,
                    verdict_list: Sequence[dict] = (), attention: pd.DataFrame | None = None,
                    family_sizes: Mapping[str, int] | None = None, train_len: TrainLength | None = None,
                    diagnostics: Mapping[str, Any] | None = None) -> str:
    out = io.StringIO()
    w = lambda s="": out.write(s + "\n")  # noqa: E731
    variants = _variant_order({r["variant"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    family_sizes = family_sizes or {}
    w("# cmr-repro: results")
    w()
    w(f"Reproduction of the paper's tables II-VI ({paper['source']}). Every number below is computed from "
      f"`experiments/eval/<variant>/s<seed>/predictions.parquet` (and the training and attention runs) by "
      f"`python -m pipeline.report`; nothing is typed in by hand.")
    w(f"The paper's baseline model corresponds to our `window` variant. Paper values are shown as fractions "
      f"(percent / 100; table V's coherence score / 10) beside ours.")
    w()
    w("## Verdicts on the paper's claims")
    w()
    if verdict_list:
        w(pd.DataFrame([{"#": v["claim"], "claim": v["text"], "paper": v["source"], "verdict": f"**{v['verdict']}**",
                         "where CMR loses": _md_cell(v["cmr_loses"] or "--")} for v in verdict_list])
          .to_markdown(index=False))
        w()
        w("Evidence (effect sizes with CIs, Holm-corrected p-values):")
        w()
        for v in verdict_list:
            w(f"{v['claim']}. **{v['verdict']}** - {_md_cell(v['evidence'])}")
        w()
        w("Rules (applied in code, `pipeline/report/`; a claim is **not testable** when a validity check it "
          "depends on did not pass, see below):")
        w()
        for kind in dict.fromkeys(VERDICT_RULES):
            w(f"- {kind}: {_rule(kind, rc)}")
        w()
    w("## Setup")
    w()
    w(f"- profile: `{cfg.get('profile_name', 'n/a')}`; variants: {', '.join(variants)}; seeds: {seeds} "
      f"({len(seeds)} per variant)")
    if cfg.get("backbone"):
        w("- backbone: " + ", ".join(f"{k}={v}" for k, v in cfg["backbone"].items()))
    for v in variants:
        m = (cfg.get("models") or {}).get(v)
        if m:
            w(f"- `{v}`: " + ", ".join(f"{k}={val}" for k, val in m.items()))
    if cfg.get("train"):
        tc = cfg["train"]
        w("- train: " + ", ".join(f"{k}={tc[k]}" for k in list(tc)[:12]))
    if train_len is not None:
        w(f"- training length: {train_len.tokens if train_len.tokens else 'n/a'} tokens "
          f"({train_len.segments if train_len.segments else 'n/a'} segments; {train_len.source}); "
          f"`full` beyond it is extrapolating (marked †)")
    for line in hardware_lines(runs, train):
        w(f"- {line}")
    if not times_df.empty:
        tot = times_df.groupby("stage", sort=False)["wall_s"].sum(min_count=1)
        w("- wall time: " + ", ".join(f"{s} {_fmt(x / 60 if pd.notna(x) else None, 2)} min" for s, x in tot.items())
          + f"; all stages {_fmt(times_df['wall_s'].sum() / 60, 2)} min (details below)")
    w()
    if setup is not None and not setup.empty:
        w("Model sizes and training cost per variant (mean over seeds; n/a where the run did not record it):")
        w()
        w(setup.map(_fmt).to_markdown(index=False))
        w()
    if train:
        tr = []
        for name, m in sorted(train.items()):
            hw = m.get("hardware") if isinstance(m.get("hardware"), dict) else {}
            tr.append({"run": name, "params": m.get("params"), "steps": m.get("steps"),
                       "tokens trained": m.get("tokens_trained", "n/a"), "wall_s": m.get("wall_s"),
                       "train tokens/s": m.get("train_tokens_per_s"), "val far": m.get("val_recall_far"),
                       "val_long far": m.get("val_long_recall_far"), "checkpoint": f"{m.get('monitor')} @ "
                       f"{m.get('best_step')}", "steps to 90%": m.get("steps_to_90"), "device": hw.get("device", "n/a")})
        w("Training runs:")
        w()
        w(pd.DataFrame(tr).map(_fmt).to_markdown(index=False))
        w()
    w("## Data (our Table I)")
    w()
    if datasets is not None:
        w(datasets.map(_fmt).to_markdown(index=False))
        w()
        w("Written by `python -m pipeline.datasets_table` from data/manifest.json: `datasets/datasets.csv` "
          "(.md, .tex); plot: `datasets/datasets.png`.")
        w()
        w("![datasets](datasets/datasets.png)")
    else:
        w("Not available: `datasets/datasets.csv` missing (run `python -m pipeline.datasets_table`).")
    w()
    w("## Validity checks")
    w()
    w("Whether the models learned the task where it is within their reach (`pipeline/report/checks.py`), each read "
      "on every seed. A claim is drawn only where the checks it depends on passed; otherwise it is **not "
      "testable**: " + "; ".join(f"{c}: {', '.join(d) or 'none'}" for c, d in checks.CLAIM_CHECKS.items()) + ".")
    w()
    for name, chk in validity.items():
        w(f"- **{name}: {chk['status']}** - {_md_cell(chk['detail'])}")
    w()
    render_diagnostics(w, diagnostics or {})
    w(f"Statistics: every accuracy cell is the mean over seeds of the per-seed accuracy, with a "
      f"{int(rc.ci_level * 100)}% {rc.ci_method} bootstrap CI (scipy.stats.bootstrap, {rc.n_resamples} resamples, "
      f"seed {rc.seed}) over documents, each document's accuracy averaged over seeds, and n (queries, documents, "
      f"seeds); `*` marks a degenerate interval (one document or identical values), `†` a cell where `full` runs "
      f"beyond its training length. Paired tests: exact McNemar (scipy.stats.binomtest on the discordant pairs "
      f"b, c) on the per-query outcomes paired by (seed, split, document, query) - both variants see the same "
      f"evaluation documents - pooled over seeds. Multiple comparisons: Holm over all cmr-vs-window and "
      f"cmr-vs-xl cells of tables II, IV, V and VI together ({family_sizes.get('paper', 0)} tests); the distance "
      f"table is its own Holm family ({family_sizes.get('distance', 0)} tests). alpha={rc.alpha}. Per-seed "
      f"p-values (uncorrected) and the number of seeds where cmr is ahead are in `tables/<table>_tests.csv`.")
    w()
    lose_lines = []
    for name, res in results.items():
        spec, table, tests = res.spec, res.table, res.tests
        w(f"## {spec.title}")
        w()
        w(_compact(table, tests, spec.key).to_markdown(index=False))
        w()
        w(f"Full table: `tables/{name}.csv` (.md, .tex); tests: `tables/{name}_tests.csv`; plot: `tables/{name}.png`.")
        w()
        w(f"![{name}](tables/{name}.png)")
        w()
        if tests.empty or "p_holm" not in tests:
            continue
        t = tests[tests["comparison"] == "cmr_vs_window"]
        for _, x in t.sort_values(spec.key, key=lambda c: c.map(lambda v: float(v))).iterrows():
            k = x[spec.key]
            c = table[(table["variant"] == "cmr") & (table[spec.key] == k)]["accuracy"]
            wd = table[(table["variant"] == "window") & (table[spec.key] == k)]["accuracy"]
            ca, wa = (c.iloc[0] if len(c) else math.nan), (wd.iloc[0] if len(wd) else math.nan)
            if x["gap"] <= 1e-9:  # equal up to float noise counts as "does not beat"
                lose_lines.append(f"{name}, {spec.key}={k}: CMR does not beat window ({ca:.3f} vs {wa:.3f}; gap "
                                  f"{_ci_text(x['gap'], x['gap_ci_low'], x['gap_ci_high'])}, Holm p={_fmt(x['p_holm'])}).")
            elif not (x["p_holm"] < rc.alpha):
                lose_lines.append(f"{name}, {spec.key}={k}: CMR is above window ({ca:.3f} vs {wa:.3f}) but not "
                                  f"significantly (Holm p={_fmt(x['p_holm'])}).")
    if not oh.empty:
        w("## Table III: inference cost")
        w()
        cols = ["variant", "N", "ms_per_token", "ratio_vs_window", "ratio_ci_low", "ratio_ci_high", "paper_baseline",
                "paper_cmr", "paper_ratio", "params", "peak_memory_mb", "train_tokens_per_s", "train_ratio_vs_window"]
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
    w("## Attention (abstract: 'more structured attention')")
    w()
    if attention is not None:
        w(attention.map(_fmt).to_markdown(index=False))
        w()
        w("Full table: `tables/attention.csv` (.md, .tex); plot: `tables/attention.png`.")
        w()
        w("![attention](tables/attention.png)")
    else:
        w(f"Not tested: {experiments_dir(cfg) / 'attention'}/ does not exist (the attention stage has not run).")
    w()
    w("## Where CMR does not beat window")
    w()
    if lose_lines:
        for v in lose_lines:
            w(f"- {v}")
    elif not any(not r.tests.empty and "cmr_vs_window" in set(r.tests["comparison"]) for r in results.values()):
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


def render_diagnostics(w, diag: Mapping[str, Any]) -> None:
    """REPORT.md sections that say why a check passes or fails: per-seed learning curves and recall,
    binding, and cmr's misses by stage."""
    learning = diag.get("learning")
    if learning is not None:
        w("## Learning curves (per seed)")
        w()
        w(learning[1].map(_fmt).to_markdown(index=False))
        w()
        w("Curves: `plots/learning_curves.csv` (DVC plot), `tables/learning_curves.png`; table: "
          "`tables/steps_to_target.csv`.")
        w()
        w("![learning curves](tables/learning_curves.png)")
        w()
    per_seed = diag.get("per_seed")
    if per_seed is not None and not per_seed.empty:
        w("## Far recall per seed")
        w()
        w(per_seed.map(_fmt).to_markdown(index=False))
        w()
    binding = diag.get("binding")
    if binding is not None and not binding.empty:
        w("## Binding: right value, or just a value of the document?")
        w()
        w(binding.map(_fmt).to_markdown(index=False))
        w()
        w("in_doc_values: share of far answers that are one of the document's fact values; acc_when_in_values: "
          "accuracy among those; uniform_pick: what a uniform pick among the document's values would score there; "
          "copies_earlier_answer: share repeating an earlier query's answer in the query block (always wrong).")
        w()
    memory = diag.get("memory")
    if memory is not None:
        w("## CMR's misses taken apart")
        w()
        w("Each far query of the attention stage's documents is charged to the first stage it failed: scorer (no "
          "token of the fact ever captured), eviction (captured, gone before the query), read (retained, but the "
          "query's highest-attention slot is another), binding (top slot on the fact, wrong answer).")
        w()
        for by, t in memory.items():
            w(t.map(_fmt).to_markdown(index=False))
            w()
        w("![memory](tables/memory.png)")
        w()


# ------------------------------------------------------------------------------------------ entry point
def _study_dirs(cfg: dict, all_runs: bool) -> tuple[list[Path], list[Path]]:
    """(eval run dirs, matching train run dirs): the study's variants x seeds, or with `all_runs` every
    experiments/eval/*/s*/ found."""
    if all_runs or not cfg.get("study"):
        root = experiments_dir(cfg) / "eval"
        evals = sorted(p for p in root.glob("*/s*") if p.is_dir() and re.fullmatch(r"s\d+", p.name))
        if not evals:
            raise DataError(f"no evaluation runs under {root}/<variant>/s<seed>/ (run the evaluate stage first)")
        pairs = [parse_run_dir(p) for p in evals]
    else:
        pairs = [(v, int(s)) for v in cfg["study"]["variants"] for s in cfg["study"]["seeds"]]
        evals = [run_dir(cfg, "eval", v, s) for v, s in pairs]
        missing = [str(d / "predictions.parquet") for d in evals if not (d / "predictions.parquet").is_file()]
        if missing:
            raise DataError("evaluation outputs missing: " + ", ".join(missing))
    return evals, [run_dir(cfg, "train", v, s) for v, s in pairs]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    ap.add_argument("--all", "--all-runs", dest="all_runs", action="store_true",
                    help="report every experiments/eval/*/s*/ run, not only study.variants x study.seeds")
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
        with staged_outputs(results, REPORT_OUTPUTS, REPORT_SHARED) as tmp:  # a failed report leaves the old one whole
            summary = build_report(cfg, evals, trains, tmp, datasets_csv=results / "datasets" / "datasets.csv")
    except (PipelineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {results}/ (REPORT.md, summary.json, tables/<table>.csv/.md/.tex/.png, plots/, "
          f"stage_times.csv)")
    failed = [k for k, v in summary["validity"].items() if v["status"] == FAILED]
    return 1 if (args.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
