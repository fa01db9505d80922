"""Which runs the report covers (the study's variants x seeds and the Hugging Face run committed beside
it) and what each recorded: predictions, timings, training metrics, benchmarks."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipeline.errors import DataError
from pipeline.paths import experiments_dir, run_dir, run_name
from pipeline.report.common import distance_bin, segment_distance, variant_order
from pipeline.report.load import load_eval_run, parse_run_dir, read_json


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
        if oh_file.is_file():
            oh = read_json(oh_file)
        if oh is None:
            notes.append(f"{oh_file} (or {Path(d) / 'overhead.json'}) missing: {run_name(v, s)} left out of Table III")
        frames.append(df)
        runs.append({"dir": str(d), "variant": v, "seed": s, "overhead": oh, "metrics": met})
    preds = pd.concat(frames, ignore_index=True)
    window = int((cfg.get("backbone") or {}).get("window") or 0)
    if window > 0:
        preds["distance_segments"] = distance_bin(segment_distance(preds, window))
    return preds, runs


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


def hf_experiment(cfg: Mapping[str, Any], root: Path, notes: list[str]) -> dict | None:
    """The committed run of conf/experiment/hf_cmr.yaml (`make hf-cmr`, its own report and params.yaml in `root`):
    recall by N of the frozen pretrained LM reading window by window and with CMR, for the study's report; None
    if absent, or (with a note) if it trained on other data or with another training recipe than this study."""
    import yaml

    from pipeline.config.train import recipe_matches

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
    summary = read_json(root / "summary.json") if (root / "summary.json").is_file() else {}
    checks = [f"`{name}` {c.get('status', '?')}: {c.get('detail', '')}" for name, c in (summary.get("validity") or {}).items()]
    pretrain = read_json(root / "pretrain.json") if (root / "pretrain.json").is_file() else None
    perplexity = root / "tables" / "perplexity.csv"
    context = (pretrain or {}).get("context")  # the stand-in's window: documents no longer are read in one
    data = dict(cfg.get("data") or {})
    val_max = int(data.get("train_max_segments", 0)) * int(data.get("segment_len", 0))
    inside = None if not context else {"val": val_max <= context,
                                       "val_long": [n for n in data.get("val_long_lengths") or [] if n <= context]}
    return {"dir": str(root), "seeds": (summary.get("setup") or {}).get("seeds"), "table": table.reset_index(),
            "accuracy": {v: {str(n): float(x) for n, x in row.items()} for v, row in table.iterrows()},
            "checks": checks, "context": context, "inside": inside,
            "pretrain": None if pretrain is None else {k: pretrain.get(k) for k in ("steps", "answer_weight", "lora")},
            "perplexity": pd.read_csv(perplexity) if perplexity.is_file() else None}


def trained_state_sizes(cfg: Mapping[str, Any], root: Path, notes: list[str]) -> pd.DataFrame | None:
    """The committed runs of `make state-size` (pipeline/studies/state_size.py): far-recall predictions at the
    largest load of memories trained at other state sizes, one row per query with its `setting`; None if absent,
    or (with a note) if the runs started from other data, backbone, training, stress documents or memory configs
    than this study's."""
    import yaml

    from pipeline.config.train import recipe_matches

    preds = root / "predictions.parquet"
    if not preds.is_file():
        return None
    scfg = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").is_file() else {}
    p = pd.read_parquet(preds)
    stress = lambda c: {k: v for k, v in dict(c.get("stress") or {}).items() if k != "state_sizes"}  # noqa: E731
    differ = recipe_matches(cfg, scfg, ("data", "backbone", "train"))
    differ += ["stress"] if stress(cfg) != stress(scfg) else []
    differ += [f"models.{v}" for v in sorted(set(p["variant"]))
               if dict((cfg.get("models") or {}).get(v) or {}) != dict((scfg.get("models") or {}).get(v) or {})]
    if differ:
        notes.append(f"{root} holds state-size runs of another recipe ({', '.join(differ)} differ from this study's, "
                     "or no params.yaml): not shown (rerun `make state-size`)")
        return None
    return p


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


def study_dirs(cfg: dict, all_runs: bool) -> tuple[list[Path], list[Path]]:
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
