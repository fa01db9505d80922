"""Builds the report from loaded runs: every table and plot on disk, summary.json and REPORT.md."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.paths import experiments_dir
from pipeline.report import checks
from pipeline.report.attention_results import attention_paths, build_attention
from pipeline.report.costs import setup_table, stage_times
from pipeline.report.curves import write_curves
from pipeline.report.load import TrainLength, doc_tokens_by_split, plain_config, read_json, train_length
from pipeline.report.markdown import html_page, render_markdown
from pipeline.report.memory import write_memory
from pipeline.report.paper import load_paper_numbers
from pipeline.report.render import plot_accuracy, plot_overhead, write_table
from pipeline.report.stress import (AMBIGUOUS, QUALIFIER, ambiguous_result, headline as stress_headline, load_stress,
                                    qualifier_result, write_stress)
from pipeline.report.runs import cost_benchmarks, hf_experiment, load_runs, load_train_runs, trained_state_sizes
from pipeline.report.tables import (ACCURACY_TABLES, AccuracyResult, BASELINE_CAPTION, FAMILY_TEXT,
                                    accuracy_table, apply_holm, distance_vs_training, overhead_table,
                                    per_seed_recall, xl_reach_segments)
from pipeline.report.verdicts import verdicts
from pipeline.config.checks import report_config
from pipeline.config.schema import ReportConfig


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
    oh = overhead_table(runs, train, paper["tables"].get("overhead"), rc)
    if oh.empty:
        notes.append("no overhead.json in any run: Table III not reproduced")
    else:
        summary["overhead"] = write_overhead(oh, paper["tables"].get("overhead"), rc, tables_dir, plots_dir)
    attention, att_why, diagnostics = write_diagnostics(cfg, runs, train, preds, rc, tables_dir, plots_dir,
                                                        summary, notes)
    committed = Path((cfg.get("paths") or {}).get("results_dir", "results"))  # results_dir is the staging folder
    stress, skipped = load_stress(cfg, [(r["variant"], r["seed"]) for r in runs], notes)
    if stress is not None:
        summary["stress"] = write_stress(cfg, stress, skipped, preds, rc, tables_dir, plots_dir, write_table,
                                         trained_state_sizes(cfg, committed / "state_size", notes))
        for spec, res in ((AMBIGUOUS, ambiguous_result(stress, rc)), (QUALIFIER, qualifier_result(stress, rc))):
            if res is None:
                continue
            family_sizes.update(apply_holm({spec.name: res}, rc.alpha))  # claims 7 and 8: each its own Holm family
            results[spec.name] = res
            out = write_accuracy(res, paper, rc, tl, family_sizes, tables_dir, plots_dir)
            summary[spec.name] = out["table"]
            summary.setdefault("tests", {})[spec.name] = out["tests"]
    summary["holm"] = {f: {"tests": n, "what": FAMILY_TEXT[f]} for f, n in family_sizes.items()}
    validity, verdict_list = summary["validity"], verdicts(results, oh, attention, rc, att_why, summary["validity"],
                                                          summary.get("stress"))
    summary["verdicts"] = verdict_list
    for v in verdict_list:
        print(f"claim {v['claim']} ({v['source']}): {v['verdict']}")
    datasets = read_datasets(Path(datasets_csv) if datasets_csv is not None
                             else results_dir / "datasets" / "datasets.csv", summary, notes)
    times_df = stage_times(cfg, runs, train, train_src, t0, notes)
    atomic_write_text(results_dir / "stage_times.csv", times_df.to_csv(index=False))
    summary["stage_times_s"] = {f"{a}/{b}": w for a, b, w in zip(times_df["stage"], times_df["run"], times_df["wall_s"])}
    setup = setup_table(cfg, runs, train)
    summary["setup"] = {"seeds": sorted({r["seed"] for r in runs}), "train_length_tokens": tl.tokens,
                        "variants": setup.set_index("variant").to_dict("index")}
    stress_md = (stress_headline(summary["stress"], dict(zip(setup["variant"], setup["memory_floats"])))
                 if "stress" in summary else None)
    hf = hf_experiment(cfg, committed / "hf_cmr", notes)
    cost = cost_benchmarks(committed)
    if hf is not None:
        summary["hf_cmr"] = {"seeds": hf["seeds"], "recall": hf["accuracy"]}
    summary["notes"] = notes
    summary = _jsonable(summary)
    atomic_write_json(results_dir / "summary.json", summary)
    atomic_write_json(results_dir / "metrics.json", headline_metrics(summary))
    report_md = render_markdown(cfg, rc, paper, runs, train, results, oh, validity, times_df, notes,
                                      datasets=datasets, setup=setup, verdict_list=verdict_list,
                                      attention=attention, family_sizes=family_sizes, train_len=tl,
                                diagnostics=diagnostics, hf=hf, cost=cost, stress=stress_md,
                                stress_summary=summary.get("stress"))
    atomic_write_text(results_dir / "REPORT.md", report_md)
    atomic_write_text(results_dir / "index.html", html_page(report_md))
    for n in notes:
        print(f"note: {n}")
    return summary


def headline_metrics(summary: dict) -> dict:
    """results/metrics.json, what `dvc metrics show` / `diff` print: per variant its mean far recall over Table II's
    lengths, capacity and effective length; the validity checks passed; each claim's verdict (summary.json holds the
    rest)."""
    out: dict[str, Any] = {}
    recall = summary.get("recall") or {}
    out["far_recall_mean"] = {v: round(float(np.mean(list(c.values()))), 4) for v, c in recall.items()
                              if not v.startswith("paper") and c}
    stress = summary.get("stress") or {}
    for key in ("capacity", "effective_length"):
        if stress.get(key):
            out[key] = {v: d.get("mean") for v, d in stress[key].items()}
    validity = summary.get("validity") or {}
    out["checks_passed"] = f"{sum(c.get('status') == 'PASSED' for c in validity.values())}/{len(validity)}"
    out["verdicts"] = {f"claim{v['claim']}": v["verdict"] for v in summary.get("verdicts") or []}
    return _jsonable(out)


def read_datasets(ds_csv: Path, summary: dict, notes: list[str]) -> pd.DataFrame | None:
    """Table I (the datasets stage's CSV) and its summary.json entry; None, with a note, when absent."""
    if not ds_csv.is_file():
        notes.append(f"{ds_csv} missing: Table I not shown (run `python -m pipeline.datasets_table`)")
        return None
    datasets = pd.read_csv(ds_csv)
    summary["datasets"] = {str(r["split"]): {"documents": r.get("documents"), "mean_tokens": r.get("mean_tokens")}
                           for r in datasets.to_dict("records")}
    return datasets


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
    caption = (f"{spec.title}. Ours: mean over seeds, {int(rc.ci_level * 100)}% bootstrap CI resampling seeds and "
               f"documents, n = queries, documents, seeds; paper values as "
               f"fractions. {BASELINE_CAPTION} p: exact McNemar on queries paired by (seed, split, document, "
               f"query), pooled over seeds; {fam}.{extra}")
    write_table(table, tables_dir / spec.name, caption)
    if not tests.empty:
        write_table(tests, tables_dir / f"{spec.name}_tests",
                    f"{spec.title.split(':')[0]}: exact McNemar tests on paired queries pooled over seeds "
                    f"(b = cmr right, other wrong; c = the reverse), {fam}; gap = cmr - other accuracy with a "
                    f"{int(rc.ci_level * 100)}% bootstrap CI resampling seeds and documents; per-seed p uncorrected")
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
