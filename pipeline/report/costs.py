"""What the study cost: model sizes and training tokens per variant, and the wall time of every stage."""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import pandas as pd

from pipeline.paths import experiments_dir, run_dir, run_name
from pipeline.report.common import variant_order
from pipeline.report.load import read_json


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
    stress = [("stress-data", "data", experiments_dir(cfg) / "stress-data" / "stage.json")]
    stress += [("stress", v, experiments_dir(cfg) / "stress" / v / "stage.json") for v in variants]
    for stage, name, f in stress:
        if f.is_file():
            d = read_json(f)
            rows.append({"stage": stage, "run": name, "runs": int(d.get("runs", 1)), "wall_s": _wall(d), "source": str(f)})
    return rows


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


def _wall(d: dict | None) -> float | None:
    if not d:
        return None
    for k in ("wall_s", "wall_time_s", "elapsed_s", "wall_seconds"):
        if isinstance(d.get(k), (int, float)):
            return float(d[k])
    return None
