"""Hydra entry point for sweeps: `python -m pipeline.sweep -m sweep.variant=window,cmr models.cmr.k=4,8`.

Each job composes conf/ (Hydra), validates it like a DVC stage does, then runs the same functions
the DVC stages run: `pipeline.train.train` and `pipeline.evaluate.evaluate`, writing into the
Hydra job's own output folder. Data come from `paths.data_dir` (prepare them once with
`dvc repro prepare`); a sweep over data settings should run the DVC pipeline instead.
Each job is one wandb run per stage, grouped by sweep, finished before the next job starts.
Returns the job's mean recall over N, so optimizing sweepers can use it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline.config import CONF_DIR, validate
from pipeline.errors import DataError, PipelineError


def run_job(cfg: DictConfig, job_dir: Path, group: str) -> float:
    """Train and evaluate `sweep.variant` with `sweep.seed` into job_dir; return mean recall over N."""
    import json

    from pipeline.evaluate import evaluate
    from pipeline.train import train

    cfg = validate(cfg)
    if not (Path(cfg.paths.data_dir) / "manifest.json").is_file():
        raise DataError(f"{cfg.paths.data_dir}: no prepared data; run `dvc repro prepare` "
                        f"(or python -m pipeline.data.prepare) before sweeping")
    cfg.paths.experiments_dir = str(job_dir)
    if cfg.logger.wandb.group is None:
        cfg.logger.wandb.group = group
    variant, seed = cfg.sweep.variant, int(cfg.sweep.seed)
    train(cfg, variant, seed)
    out = evaluate(cfg, variant, seed)
    recall = json.loads((out / "metrics.json").read_text()).get("recall") or {}
    return sum(recall.values()) / len(recall) if recall else float("nan")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    group = f"sweep-{Path(hc.sweep.dir).name}" if hc.mode.name == "MULTIRUN" else "single-run"
    try:
        return run_job(cfg, Path(hc.runtime.output_dir), group)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
