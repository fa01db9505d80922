"""Where a study's runs would have stopped under another early-stopping setting, from their logged validations.

    python -m pipeline.studies.replay_stopping train.stop_patience=1 [models.rmt.recipe.stop_patience=1 ...]

On one machine a run is deterministic, so the same run with a shorter patience (or a lower target) is the run cut
short: its stopping step and the checkpoint it keeps can be read off the validations it logged, without training.
Each run's monitor is the one it recorded (metrics.json); its stopping rule is the study's (params.yaml: `train`,
with these overrides, then the memory's own recipe), applied by the training's own callback
(pipeline/train.py `early_stopping`). A longer patience cannot be replayed past the step a run stopped at.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Sequence

import torch

from pipeline.config.load import load_params, recipe_train
from pipeline.models.registry import typed_models


def replay(validations: list[tuple[int, float]], train_cfg) -> tuple[int, int, float]:
    """validations: (global step, monitored value) in order -> (step it stops at, step of the best checkpoint kept,
    its value). The best is the first maximum up to the stop, as ModelCheckpoint keeps it."""
    from pipeline.train import early_stopping

    callbacks = early_stopping(train_cfg, "monitor")
    stop = validations[-1][0]
    for step, value in validations:
        if callbacks and step >= callbacks[0].start:
            should_stop, _ = callbacks[0]._evaluate_stopping_criteria(torch.tensor(value))
            if should_stop:
                stop = step
                break
    best_step, best = max((v for v in validations if v[0] <= stop), key=lambda v: (v[1], -v[0]))
    return stop, best_step, best


def logged_validations(run_dir: Path, monitor: str) -> list[tuple[int, float]]:
    """(global step, value) of every validation in a run's Lightning CSV log (its rows carry step = global step - 1)."""
    with open(run_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [(int(float(r["step"])) + 1, float(r[monitor])) for r in csv.DictReader(f) if r.get(monitor)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.studies.replay_stopping", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="config overrides, as for a study: train.stop_patience=1, "
                    "models.rmt.recipe.stop_patience=1, ...")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="experiments/train", help="the study's training runs: <variant>/s<seed>/")
    args = ap.parse_args(argv)
    cfg = load_params(args.params, args.overrides)  # the study's config with the overrides, checked as every stage's
    total = {"steps": 0, "replayed": 0}
    for variant in cfg.study.variants:
        memory = typed_models(cfg, [variant]).models[variant]  # the memory's own recipe, as pipeline/train.py applies it
        train_cfg = recipe_train(cfg.train, memory.recipe, f"models.{variant}.recipe") if memory.recipe else cfg.train
        for seed in cfg.study.seeds:
            run = Path(args.runs) / variant / f"s{seed}"
            logged = json.loads((run / "metrics.json").read_text())
            stop, best_step, best = replay(logged_validations(run, logged["monitor"]), train_cfg)
            total["steps"] += logged["steps"]
            total["replayed"] += stop
            print(f"{variant:10s} s{seed}  steps {logged['steps']} -> {stop}  best {logged['best_step']} "
                  f"({logged['val_best_monitor']:.3f}) -> {best_step} ({best:.3f})  [{logged['monitor']}]")
    print(f"training steps {total['steps']} -> {total['replayed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
