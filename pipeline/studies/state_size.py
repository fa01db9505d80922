"""`make state-size`: memories whose state size is a weight shape (`rmt`'s memory tokens, `armt`'s and `gdn`'s key
widths), trained at other sizes and read on the largest load split like the study's runs.

    python -m pipeline.studies.state_size gdn:d_key:16 gdn:d_key:64 [--seed 0] [--jobs 2] [--out results/state_size]

The stress stage resizes a state at evaluation only where no weight depends on its size (stress.state_sizes:
`cmr`'s bank slots, `memorizing`'s store, `xl`'s cache); a size that is a weight shape needs a training per size.
Each run is the study's own commands on the committed params.yaml with one key changed, in its own folder:
`cmr-repro train --variant V --seeds S paths.experiments_dir=experiments/state_size/V-key-value models.V.key=value`
then `cmr-repro stress` on that folder (data_stress/ from `dvc repro stress-data`). Output, committed like
results/hf_cmr/: `trained.csv` (one row per run: its state, far recall at the largest load, its validation far
recall and steps), `predictions.parquet` (those queries, for the report's CIs) and `params.yaml` (the config the
runs started from); the report adds them to the recall-against-state table and figure when that config's data,
backbone, train and stress sections are the study's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.errors import ConfigError, PipelineError

RUNS_DIR = Path("experiments/state_size")
OUT_DIR = Path("results/state_size")


@dataclass(frozen=True)
class Size:
    """One training: `variant` with `key` = `value`."""

    variant: str
    key: str
    value: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.key}-{self.value}"

    @property
    def setting(self) -> str:
        return f"{self.key}={self.value}"


def parse_size(spec: str) -> Size:
    """'gdn:d_key:32' -> Size; a ConfigError naming the spec otherwise."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        raise ConfigError(f"state size {spec!r}: expected VARIANT:KEY:VALUE with a positive integer value, "
                          "e.g. gdn:d_key:32")
    return Size(parts[0], parts[1], int(parts[2]))


def check_sizes(sizes: Sequence[Size], params: Path) -> None:
    """Every size is a setting of its memory that the memory accepts, before anything trains."""
    import dataclasses

    from pipeline.config import load_params
    from pipeline.models.registry import backbone_config, check_model, memory_config

    cfg = load_params(params)
    backbone = backbone_config(cfg.backbone)
    for s in sizes:
        if s.variant not in cfg.models:
            raise ConfigError(f"state size {s.variant}:{s.key}:{s.value}: no models.{s.variant} in {params}")
        mem = memory_config(cfg.models[s.variant])
        if s.key not in {f.name for f in dataclasses.fields(mem)}:
            raise ConfigError(f"state size {s.variant}:{s.key}:{s.value}: `{s.key}` is not a setting of "
                              f"models.{s.variant}")
        check_model(backbone, dataclasses.replace(mem, **{s.key: s.value}))


def run_one(size: Size, seed: int, params: Path, runs_dir: Path) -> Path:
    """Train and stress-evaluate one size (the study's commands, logs in the run's folder); returns its folder."""
    folder = runs_dir / size.name
    folder.mkdir(parents=True, exist_ok=True)
    common = ["--variant", size.variant, "--params", str(params), "--seeds", str(seed),
              f"paths.experiments_dir={folder}", f"models.{size.variant}.{size.key}={size.value}"]
    for stage, extra in (("train", ["--jobs", "1"]), ("stress", ["study.jobs=1"])):
        with open(folder / f"{stage}.log", "w") as log:
            rc = subprocess.call([sys.executable, "-m", "pipeline.cli", stage, *common, *extra],
                                 stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            raise PipelineError(f"{stage} of {size.name} failed (exit {rc}); see {folder / (stage + '.log')}")
    return folder


def collect(sizes: Sequence[Size], seed: int, runs_dir: Path, params: Path, out: Path) -> "pd.DataFrame":
    """trained.csv, predictions.parquet and params.yaml in `out` (written atomically) from the runs' folders."""
    import pandas as pd

    from pipeline.io import atomic_dir

    rows, frames = [], []
    for s in sizes:
        folder = runs_dir / s.name
        pred = pd.read_parquet(folder / "stress" / s.variant / f"s{seed}" / "predictions.parquet")
        load = pred[pred["task"] == "load"]
        top = int(load["length"].max())
        far = load[(load["length"] == top) & (load["query_type"] == "far")].assign(setting=s.setting)
        frames.append(far)
        met = json.loads((folder / "train" / s.variant / f"s{seed}" / "metrics.json").read_text())
        rows.append({"variant": s.variant, "setting": s.setting, "seed": seed,
                     "state_floats": int(far["state_floats"].iloc[0]), "F": top,
                     "far_recall": float(far["correct"].mean()), "val_recall_far": met.get("val_recall_far"),
                     "val_long_recall_far": met.get("val_long_recall_far"), "steps": met.get("steps"),
                     "wall_s": met.get("wall_s")})
    table = pd.DataFrame(rows)
    with atomic_dir(out) as tmp:
        table.to_csv(tmp / "trained.csv", index=False)
        pd.concat(frames, ignore_index=True).to_parquet(tmp / "predictions.parquet", index=False)
        shutil.copyfile(params, tmp / "params.yaml")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.studies.state_size", description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="+", help="VARIANT:KEY:VALUE, e.g. gdn:d_key:32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2: one per core)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs-dir", default=str(RUNS_DIR))
    ap.add_argument("--out", default=str(OUT_DIR))
    args = ap.parse_args(argv)
    try:
        sizes = [parse_size(s) for s in args.sizes]
        params, runs_dir = Path(args.params), Path(args.runs_dir)
        check_sizes(sizes, params)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each run is two subprocesses: threads only wait
            list(pool.map(lambda s: run_one(s, args.seed, params, runs_dir), sizes))
        table = collect(sizes, args.seed, runs_dir, params, Path(args.out))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.to_string(index=False))
    print(f"written to {args.out}/ (trained.csv, predictions.parquet, params.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
