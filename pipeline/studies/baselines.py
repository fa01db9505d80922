"""The memory baselines beside the study: `cmr-repro baselines [--params params.yaml] [--out results/baselines]`.

rmt, armt and memorizing (conf/experiment/baselines.yaml) add ~40 minutes of training on 2 cores, more than the
default study's time budget allows, so they run beside `dvc repro`: on its data, with its recipe (the study's
params.yaml with only study.variants, paths.experiments_dir and the wandb group changed by the experiment file).
This command runs the study's own stages for them into multirun/baselines/ (train, evaluate), times them in one
process together with the study's trained `window` (Table III's ratios are to a window timed in the same run),
then copies what the report reads (predictions, metrics, attention at the queries, timings: ~1 MB) to
results/baselines/.
The report stage depends on that folder and shows the baselines' rows when their recipe is the study's
(`recipe_matches`); `dvc repro report` after this command brings them in.

`--stages` runs a part (e.g. `--stages overhead collect` on a quiet machine after training elsewhere).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, as_plain, load_params, to_params_yaml, validate
from pipeline.errors import DataError, PipelineError

EXPERIMENT = CONF_DIR / "experiment" / "baselines.yaml"
STAGES = ("train", "evaluate", "attention", "overhead", "collect")
# the small outputs the report reads, per run folder kind
COPY = {"eval": ("predictions.parquet", "metrics.json"), "train": ("metrics.json",), "attention": ("attention.parquet",),
        "overhead": ("overhead.json",)}
RUN_RECORD = "run.json"


def baselines_config(params: str | Path = "params.yaml", experiment: str | Path = EXPERIMENT) -> Any:
    """The study's composed config with the experiment file's keys merged in (validated like a stage's)."""
    study = load_params(params)
    exp = OmegaConf.load(experiment)
    return validate(OmegaConf.merge(as_plain(study), exp))


def _run_stage(module: str, argv: list[str]) -> None:
    import importlib

    rc = importlib.import_module(module).main(argv)
    if rc:
        raise PipelineError(f"`python -m {module} {' '.join(argv)}` exited with status {rc}")


def run(params: str | Path, out: str | Path, stages: Sequence[str] = STAGES) -> Path:
    """Train, evaluate and time the baselines, then copy their report inputs to `out`."""
    from pipeline import paths
    from pipeline.io import atomic_dir, atomic_write_json, atomic_write_text
    from pipeline.studies.sweep import ensure_data

    cfg = baselines_config(params)
    root = paths.experiments_dir(cfg)
    cfg_file = root / "params.yaml"
    atomic_write_text(cfg_file, to_params_yaml(cfg))
    if {"train", "evaluate"} & set(stages):
        ensure_data(cfg)  # the study's data, as `dvc repro prepare` made it (refused if prepared otherwise)
    variants, seeds = list(cfg.study.variants), [int(s) for s in cfg.study.seeds]
    for v in variants:
        if "train" in stages:
            _run_stage("pipeline.train", ["--variant", v, "--params", str(cfg_file)])
        if "evaluate" in stages:
            _run_stage("pipeline.evaluate.__main__", ["--variant", v, "--params", str(cfg_file)])
        if "attention" in stages:
            _run_stage("pipeline.evaluate.attention", ["--variant", v, "--params", str(cfg_file)])
    if "overhead" in stages:
        time_with_window(cfg, params)
    if "collect" not in stages:
        return root
    with atomic_dir(out) as tmp:
        for kind, names in COPY.items():
            for v in variants + (["window"] if kind == "overhead" else []):
                for s in seeds:
                    for name in names:
                        src = paths.run_dir(cfg, kind, v, s) / name
                        if not src.is_file():
                            raise DataError(f"{src} missing: run `cmr-repro baselines --stages {kind}` first")
                        (tmp / kind / v / f"s{s}").mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, tmp / kind / v / f"s{s}" / name)
        shutil.copy2(cfg_file, tmp / "params.yaml")
        atomic_write_json(tmp / RUN_RECORD, {"variants": variants, "seeds": seeds, "stage_wall_s": stage_walls(cfg)})
    return Path(out)


def stage_walls(cfg: Any) -> dict[str, float | None]:
    """Wall time of each part of the run, from the stage.json files the stages wrote."""
    import json

    from pipeline import paths

    files = {f"{kind}/{v}": paths.variant_dir(cfg, kind, v) / "stage.json"
             for v in cfg.study.variants for kind in ("train", "eval")}
    files["overhead"] = paths.experiments_dir(cfg) / "overhead" / "stage.json"
    return {k: (json.loads(f.read_text()).get("wall_s") if f.is_file() else None) for k, f in files.items()}


def time_with_window(cfg: Any, params: str | Path) -> None:
    """The overhead stage over [window] + the baselines, window's checkpoints read from the study's experiments."""
    from pipeline import paths
    from pipeline.evaluate.overhead import run_stage

    study = load_params(params)
    for s in cfg.study.seeds:
        src, dst = paths.run_dir(study, "train", "window", s), paths.run_dir(cfg, "train", "window", s)
        if not (src / "checkpoints").is_dir():
            raise DataError(f"{src}/checkpoints missing: the study's window must be trained (`dvc repro train@window`)")
        if dst.is_symlink() or dst.exists():
            shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src.resolve(), target_is_directory=True)
    oh = OmegaConf.merge(cfg, {"study": {"variants": ["window", *cfg.study.variants]}})
    run_stage(oh)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import stage_cli

    ap = stage_cli.parser("baselines", __doc__.split("\n\n")[0], overrides=False)
    ap.add_argument("--out", default=None, help="where the report's inputs go (default: <results_dir>/baselines)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="which parts to run (default: all)")
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        out = args.out or Path(str(stage_cli.load_config(args).paths.results_dir)) / "baselines"
        print(f"baselines: {', '.join(args.stages)} done ({run(args.params, out, args.stages)})")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
