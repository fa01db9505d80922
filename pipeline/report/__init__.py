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
rules in `verdicts.CLAIMS` and `verdicts.*_verdict`, which REPORT.md states beside the verdicts. Modules:
load (runs), paper (the paper's numbers), tables (cells, tests), checks (validity), verdicts, render (tables
and plots on disk, shared with datasets_table and ablations), markdown (REPORT.md), curves and memory
(diagnostics), attention_results (claim 6); this module builds the report and is the stage.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.config import as_plain, load_params
from pipeline.errors import DataError, PipelineError
from pipeline.io import atomic_write_json, atomic_write_text, staged_outputs
from pipeline.paths import experiments_dir, run_dir, run_name
from pipeline.report import checks
from pipeline.report.attention_results import attention_paths, build_attention
from pipeline.report.common import FAILED, distance_bin, segment_distance, variant_order
from pipeline.report.curves import write_curves
from pipeline.report.load import (TrainLength, doc_tokens_by_split, load_eval_run, parse_run_dir, plain_config,
                                  read_json, train_length)
from pipeline.report.markdown import render_markdown
from pipeline.report.memory import write_memory
from pipeline.report.paper import load_paper_numbers
from pipeline.report.render import plot_accuracy, plot_overhead, write_table
from pipeline.report.tables import (ACCURACY_TABLES, AccuracyResult, BASELINE_CAPTION, FAMILY_TEXT,
                                    accuracy_table, apply_holm, cell_stats, distance_vs_training,
                                    overhead_table, per_seed_recall, xl_reach_segments)
from pipeline.report.verdicts import verdicts
from pipeline.report_config import ReportConfig, report_config

REPORT_OUTPUTS = ["tables", "REPORT.md", "summary.json", "stage_times.csv"]
REPORT_SHARED = ("plots",)


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
                rows.append({"stage": stage, "run": v, "runs": len(seeds), "wall_s": _wall(read_json(stage_file)),
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
        rows.append({"stage": "overhead", "run": "all", "runs": len(runs), "wall_s": _wall(read_json(oh_file)),
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
    for v in variant_order({r["variant"] for r in runs}):
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


def load_runs(cfg: dict, eval_dirs: Sequence[str | Path], notes: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    """Every evaluation run's predictions (one frame, with `distance_segments` bins where the window is known)
    and a record per run (its overhead timing from the overhead stage, and its metrics)."""
    if not eval_dirs:
        raise DataError("no evaluation runs to report (experiments/eval/<variant>/s<seed>/ missing)")
    frames, runs = [], []
    for d in eval_dirs:
        df, oh, met = load_eval_run(d)
        if df.empty:
            raise DataError(f"{Path(d) / 'predictions.parquet'} has no rows")
        v, s = df["variant"].iloc[0], int(df["seed"].iloc[0])
        oh_file = run_dir(cfg, "overhead", v, s) / "overhead.json"  # the overhead stage (timed in turns)
        source = "study"
        beside = Path(d).parents[2] / "overhead" / v / f"s{s}" / "overhead.json"  # a run beside the study's
        if not oh_file.is_file() and beside.is_file():
            oh_file, source = beside, str(Path(d).parents[2])
        if oh_file.is_file():
            oh = read_json(oh_file)
        if oh is None:
            notes.append(f"{oh_file} (or {Path(d) / 'overhead.json'}) missing: {run_name(v, s)} left out of Table III")
        frames.append(df)
        runs.append({"dir": str(d), "variant": v, "seed": s, "overhead": oh, "metrics": met, "source": source})
    preds = pd.concat(frames, ignore_index=True)
    window = int((cfg.get("backbone") or {}).get("window") or 0)
    if window > 0:
        preds["distance_segments"] = distance_bin(segment_distance(preds, window))
    return preds, runs


def timing_references(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The `window` timed in the same process as runs from beside the study (their Table III ratios are to it):
    <source>/overhead/window/s<seed>/overhead.json, as run records for overhead_table only."""
    refs = []
    for source in dict.fromkeys(r["source"] for r in runs if r.get("source", "study") != "study"):
        for f in sorted((Path(source) / "overhead" / "window").glob("s*/overhead.json")):
            refs.append({"dir": str(f.parent), "variant": "window", "seed": int(f.parent.name[1:]),
                         "overhead": read_json(f), "metrics": None, "source": source, "reference": True})
    return refs


def baseline_dirs(cfg: Mapping[str, Any], results_dir: Path, notes: list[str]) -> tuple[list[Path], list[Path]]:
    """(eval run dirs, train run dirs) of the memory baselines run beside the study (`cmr-repro baselines`,
    copied to <results_dir>/baselines/), for the variants the study does not train itself; none when the
    folder is absent or its recipe differs from the study's (then a note says which part differs)."""
    import yaml

    from pipeline.baselines import recipe_matches

    root = results_dir / "baselines"
    if not (root / "params.yaml").is_file():
        return [], []
    bcfg = yaml.safe_load((root / "params.yaml").read_text()) or {}
    differ = recipe_matches(cfg, bcfg)
    if differ:
        notes.append(f"{root} holds baselines trained with another recipe ({', '.join(differ)} differ from this "
                     f"study's): not shown (rerun `cmr-repro baselines`)")
        return [], []
    study = set((cfg.get("study") or {}).get("variants") or [])
    pairs = [(v, int(s)) for v in bcfg["study"]["variants"] if v not in study for s in bcfg["study"]["seeds"]]
    evals = [root / "eval" / v / f"s{s}" for v, s in pairs]
    missing = [str(d / "predictions.parquet") for d in evals if not (d / "predictions.parquet").is_file()]
    if missing:
        raise DataError("baseline outputs missing: " + ", ".join(missing) + " (rerun `cmr-repro baselines`)")
    return evals, [root / "train" / v / f"s{s}" for v, s in pairs]


def cost_benchmarks(root: Path) -> dict | None:
    """The committed benchmarks of where inference cost goes (`make bench`: benchmarks/profile_overhead.py and
    benchmarks/speed.py, outside the pipeline's stages): cmr's time by part against window at one thread, and the
    speed sweep's targets. None when neither file is in `root`."""
    profile_csv, targets_md = root / "overhead_profile.csv", root / "speed_benchmark.md"
    if not (profile_csv.is_file() or targets_md.is_file()):
        return None
    parts = None
    if profile_csv.is_file():
        prof = pd.read_csv(profile_csv)
        prof = prof[(prof["threads"] == 1) & ~prof["part"].str.startswith("op ")]
        parts = prof.pivot_table(index="part", columns="profile", values="share_of_cmr", sort=False).reset_index()
        head = prof.drop_duplicates("profile").set_index("profile")
        parts.columns.name = None
        parts = parts.rename(columns={p: f"{p} (d={head.loc[p, 'd_model']}, {head.loc[p, 'n_layers']} layers, "
                                         f"cmr/window {head.loc[p, 'cmr_over_window']:.2f}x)" for p in head.index})
    targets = targets_md.read_text().strip().splitlines() if targets_md.is_file() else []
    return {"parts": parts, "targets": [t.removeprefix("- ") for t in targets]}


def hf_experiment(cfg: Mapping[str, Any], root: Path, notes: list[str]) -> dict | None:
    """The committed run of conf/experiment/hf_cmr.yaml (`make hf-cmr`, its own report and params.yaml in `root`):
    recall by N of the frozen pretrained LM reading window by window and with CMR, for the study's report; None
    if absent, or (with a note) if it trained on other data or with another training recipe than this study."""
    import yaml

    from pipeline.baselines import recipe_matches

    csv = root / "tables" / "recall.csv"
    if not csv.is_file():
        return None
    hcfg = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").is_file() else {}
    differ = recipe_matches(cfg, hcfg, ("data", "train"))
    if differ:
        notes.append(f"{root} holds a Hugging Face run with another recipe ({', '.join(differ)} differ from this "
                     "study's, or no params.yaml): not shown (rerun `make hf-cmr`)")
        return None
    t = pd.read_csv(csv)
    table = t.pivot(index="variant", columns="N", values="accuracy").reindex(variant_order(t["variant"].unique()))
    seeds = (read_json(root / "summary.json").get("setup") or {}).get("seeds") if (root / "summary.json").is_file() else None
    return {"dir": str(root), "seeds": seeds, "table": table.reset_index(),
            "accuracy": {v: {str(n): float(x) for n, x in row.items()} for v, row in table.iterrows()}}


def load_train_runs(train_dirs: Sequence[str | Path], notes: list[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """{run name: training metrics.json} and {run name: its folder}."""
    train: dict[str, dict] = {}
    train_src: dict[str, str] = {}
    for d in train_dirs:
        p = Path(d) / "metrics.json"
        if p.is_file():
            name = run_name(*parse_run_dir(d))
            train[name] = read_json(p)
            train_src[name] = str(d)
        else:
            notes.append(f"training metrics missing: {p}")
    return train, train_src


def accuracy_results(preds: pd.DataFrame, paper: dict, rc: ReportConfig, tl: TrainLength, doc_tokens: Any,
                     notes: list[str]) -> tuple[dict[str, AccuracyResult], dict[str, int]]:
    """Every accuracy table of ACCURACY_TABLES the predictions allow, Holm-corrected per family."""
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
    return results, apply_holm(results, rc.alpha)


def write_accuracy(res: AccuracyResult, paper: dict, rc: ReportConfig, tl: TrainLength, family_sizes: dict[str, int],
                   tables_dir: Path, plots_dir: Path) -> dict:
    """One accuracy table on disk (table, tests, plot data, PNG); returns its summary.json entries."""
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
    out = {"table": {v: {str(k): a for k, a in zip(g[spec.key], g["accuracy"])}
                     for v, g in table.groupby("variant", sort=False)}}
    if not tests.empty:
        out["tests"] = {
            c: {str(k): {"b": b, "c": cc, "p": p, "p_holm": ph, "gap": gp}
                for k, b, cc, p, ph, gp in zip(g[spec.key], g["b"], g["c"], g["p_value"], g["p_holm"],
                                               g.get("gap", pd.Series(np.nan, index=g.index)))}
            for c, g in tests.groupby("comparison", sort=False)}
    return out


def write_overhead(oh: pd.DataFrame, oh_paper: Any, rc: ReportConfig, tables_dir: Path, plots_dir: Path) -> dict:
    """Table III on disk; returns its summary.json entry."""
    write_table(oh, tables_dir / "overhead",
                "Table III: inference ms/token by N (batch 1, mean over seeds), ratio to window with a "
                f"{int(rc.ci_level * 100)}% bootstrap CI (ratio of medians over timing repeats pooled over seeds), "
                "parameters, peak memory, training tokens/s and its ratio to window; paper values in ms/token. "
                f"{BASELINE_CAPTION}")
    atomic_write_text(plots_dir / "overhead.csv",
                      oh[["variant", "N", "ms_per_token", "ratio_vs_window"]].to_csv(index=False))
    plot_overhead(oh, oh_paper, tables_dir / "overhead.png")
    return {
        v: {"ms_per_token": {str(n): x for n, x in zip(g["N"], g["ms_per_token"])},
            "ratio_vs_window": {str(n): x for n, x in zip(g["N"], g["ratio_vs_window"])},
            "params": g["params"].iloc[0], "peak_memory_mb": g["peak_memory_mb"].iloc[0],
            "train_tokens_per_s": g["train_tokens_per_s"].iloc[0],
            "train_ratio_vs_window": g["train_ratio_vs_window"].iloc[0]}
        for v, g in oh.groupby("variant", sort=False)}


def stage_times(cfg: dict, runs: list[dict], train: dict[str, dict], train_src: dict[str, str], t0: float,
                notes: list[str]) -> pd.DataFrame:
    """Wall time of every stage and run (the report's own up to now)."""
    prep = experiments_dir(cfg) / "prepare" / "stage.json"
    times = [{"stage": "prepare", "run": "data", "runs": 1, "wall_s": _wall(read_json(prep) if prep.is_file() else None),
              "source": str(prep)}]
    times += stage_time_rows(cfg, runs, train, train_src)
    times.append({"stage": "report", "run": "report", "runs": 1, "wall_s": time.perf_counter() - t0,
                  "source": "measured by report"})
    times_df = pd.DataFrame(times)
    if times_df["wall_s"].isna().any():
        missing = times_df[times_df["wall_s"].isna()]
        notes.append("wall time unknown for: " + ", ".join(f"{a}/{b}" for a, b in zip(missing["stage"], missing["run"])))
    return times_df


def build_report(cfg: Any, eval_dirs: Sequence[str | Path], train_dirs: Sequence[str | Path],
                 results_dir: str | Path, datasets_csv: str | Path | None = None,
                 notes: list[str] | None = None) -> dict:
    """Aggregate the given evaluation (and training) runs into results_dir; return summary.json's content.

    Table I comes from `datasets_csv` (default: results_dir/datasets/datasets.csv, the datasets stage's out)."""
    t0 = time.perf_counter()
    cfg, notes = plain_config(cfg), list(notes or [])
    rc, paper, results_dir = report_config(cfg), load_paper_numbers(), Path(results_dir)
    preds, runs = load_runs(cfg, eval_dirs, notes)
    train, train_src = load_train_runs(train_dirs, notes)
    manifest_path = Path((cfg.get("paths") or {}).get("data_dir", "data")) / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else None
    tl = train_length(cfg, manifest)
    # layout: results/tables/<table>.{csv,md,tex,png}, results/tables/<table>_tests.*, results/plots/<table>.csv
    tables_dir, plots_dir = results_dir / "tables", results_dir / "plots"
    results, family_sizes = accuracy_results(preds, paper, rc, tl, doc_tokens_by_split(preds, manifest, cfg), notes)
    summary: dict[str, Any] = {}
    for name, res in results.items():
        out = write_accuracy(res, paper, rc, tl, family_sizes, tables_dir, plots_dir)
        summary[name] = out["table"]
        if "tests" in out:
            summary.setdefault("tests", {})[name] = out["tests"]
    summary["holm"] = {f: {"tests": n, "what": FAMILY_TEXT[f]} for f, n in family_sizes.items()}
    oh = overhead_table(runs + timing_references(runs), train, paper["tables"].get("overhead"), rc)
    if oh.empty:
        notes.append("no overhead.json in any run: Table III not reproduced")
    else:
        summary["overhead"] = write_overhead(oh, paper["tables"].get("overhead"), rc, tables_dir, plots_dir)
    attention, att_why, diagnostics = write_diagnostics(cfg, runs, train, preds, rc, tables_dir, plots_dir,
                                                        summary, notes)
    validity, verdict_list = summary["validity"], verdicts(results, oh, attention, rc, att_why, summary["validity"])
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
    times_df = stage_times(cfg, [r for r in runs if r["source"] == "study"], train, train_src, t0, notes)
    atomic_write_text(results_dir / "stage_times.csv", times_df.to_csv(index=False))
    summary["stage_times_s"] = {f"{a}/{b}": w for a, b, w in zip(times_df["stage"], times_df["run"], times_df["wall_s"])}
    setup = setup_table(cfg, runs, train)
    summary["setup"] = {"seeds": sorted({r["seed"] for r in runs}), "train_length_tokens": tl.tokens,
                        "variants": setup.set_index("variant").to_dict("index")}
    committed = Path((cfg.get("paths") or {}).get("results_dir", "results"))  # results_dir is the staging folder
    hf = hf_experiment(cfg, committed / "hf_cmr", notes)
    cost = cost_benchmarks(committed)
    if hf is not None:
        summary["hf_cmr"] = {"seeds": hf["seeds"], "recall": hf["accuracy"]}
    summary["notes"] = notes
    summary = _jsonable(summary)
    atomic_write_json(results_dir / "summary.json", summary)
    atomic_write_text(results_dir / "REPORT.md",
                      render_markdown(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes,
                                      datasets=datasets, setup=setup, verdict_list=verdict_list,
                                      attention=attention, family_sizes=family_sizes, train_len=tl,
                                      diagnostics=diagnostics, hf=hf, cost=cost))
    for n in notes:
        print(f"note: {n}")
    return summary


def write_diagnostics(cfg: dict, runs: list[dict], train: dict[str, dict], preds: pd.DataFrame, rc: ReportConfig,
                      tables_dir: Path, plots_dir: Path, summary: dict, notes: list[str]) -> tuple[Any, str, dict]:
    """Attention (claim 6), the memory funnel, learning curves, binding and the validity checks: tables on disk
    and their summary.json entries (into `summary`). Returns (attention table, why it is missing, diagnostics)."""
    window = int((cfg.get("backbone") or {}).get("window") or 0)
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
    return attention, att_why, {"learning": learning, "per_seed": per_seed, "binding": binding,
                                "memory": memory_tables}


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
        cfg = as_plain(load_params(args.params))  # validated like every stage's config
        evals, trains = _study_dirs(cfg, args.all_runs)
        results = Path((cfg.get("paths") or {}).get("results_dir", "results"))
        notes: list[str] = []
        b_evals, b_trains = baseline_dirs(cfg, results, notes)
        with staged_outputs(results, REPORT_OUTPUTS, REPORT_SHARED) as tmp:  # a failed report leaves the old one whole
            summary = build_report(cfg, evals + b_evals, trains + b_trains, tmp,
                                   datasets_csv=results / "datasets" / "datasets.csv", notes=notes)
    except (PipelineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report written to {results}/ (REPORT.md, summary.json, tables/<table>.csv/.md/.tex/.png, plots/, "
          f"stage_times.csv)")
    failed = [k for k, v in summary["validity"].items() if v["status"] == FAILED]
    return 1 if (args.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
