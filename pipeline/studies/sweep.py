"""Hydra entry point for sweeps: `python -m pipeline.studies.sweep -m sweep.variant=window,cmr models.cmr.k=4,8`.

Each job composes conf/ (Hydra), validates it like a DVC stage does, then runs the same functions
the DVC stages run: `pipeline.train.train` and `pipeline.evaluate.evaluate`, writing into the
Hydra job's own output folder. Data come from `paths.data_dir`, which the first job prepares when it
is missing (`ensure_data`); a folder prepared with other data settings is refused, so a sweep over
data settings needs a `paths.data_dir` per setting (or the DVC pipeline).
Ready-made sweeps live in conf/experiment/ (`python -m pipeline.studies.sweep -m experiment=ablation_k`);
`python -m pipeline.studies.ablations <sweep dir>` aggregates them.

One sweep is one wandb group (`logger.wandb.group`, which the ablation configs set to their name;
else `sweep-<sweep folder>`); each job is one wandb run per stage, finished before the next job
starts. Each job folder records what it ran: Hydra's `.hydra/overrides.yaml` and `job.json`
(group, overrides, swept keys, where train/eval wrote, the headline numbers, wall time).
Returns the job's mean recall over N, so optimizing sweepers can use it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.config import CONF_DIR, typed
from pipeline.models.registry import typed_models
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.config.schema import RootConfig

JOB_RECORD = "job.json"


def run_job_metrics(cfg: DictConfig | RootConfig, job_dir: Path, group: str) -> dict[str, Any]:
    """Train and evaluate `sweep.variant` with `sweep.seed` into job_dir; return its headline numbers:
    recall by N and its mean (evaluation), val_recall (training's best validation), and the run folders."""
    import json

    from pipeline.paths import run_dir

    cfg = typed_models(typed(cfg), [cfg.sweep.variant])
    ensure_data(cfg)
    from pipeline.evaluate import evaluate  # torch and lightning: seconds to import, so after the checks
    from pipeline.train import train

    cfg.paths.experiments_dir = str(job_dir)
    if cfg.logger.wandb.group is None:
        cfg.logger.wandb.group = group
    variant, seed = cfg.sweep.variant, int(cfg.sweep.seed)
    train_metrics = train(cfg, variant, seed)
    out = Path(evaluate(cfg, variant, seed))
    recall = json.loads((out / "metrics.json").read_text()).get("recall") or {}
    return {
        "recall": recall,
        "recall_mean": sum(recall.values()) / len(recall) if recall else float("nan"),
        "val_recall": train_metrics.get("val_recall"),
        "train_dir": str(run_dir(cfg, "train", variant, seed)),
        "eval_dir": str(out),
    }


def ensure_data(cfg: RootConfig) -> None:
    """The job's data: prepared here when `paths.data_dir` has none (an experiment with its own data
    settings names its own folder, e.g. data/sanity_recall); refused when the folder was prepared
    with other data settings than the job's, which would silently train on the wrong documents."""
    from pipeline.data.prepare import prepare
    from pipeline.data.store import read_manifest
    from pipeline.config.schema import to_dict

    data_dir = Path(cfg.paths.data_dir)
    want = to_dict(cfg.data)
    if not (data_dir / "manifest.json").is_file():
        prepare(cfg, data_dir)
        return
    have = read_manifest(data_dir).get("generator") or {}
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        raise DataError(f"{data_dir} was prepared with other data settings than this job's (data.{diff[0]}: "
                        f"{have.get(diff[0])!r} there, {want.get(diff[0])!r} here); point paths.data_dir at "
                        "another folder or delete this one (the sweep prepares a missing folder itself)")


def write_job_record(job_dir: Path, *, group: str, variant: str, seed: int, overrides: Sequence[str],
                     swept: Sequence[str], metrics: dict[str, Any], wall_s: float) -> Path:
    """job.json: what this job ran and where its runs are (paths relative to the job folder)."""
    from pipeline.io import atomic_write_json

    def rel(p: str) -> str:
        try:
            return str(Path(p).resolve().relative_to(Path(job_dir).resolve()))
        except ValueError:
            return str(p)

    return atomic_write_json(Path(job_dir) / JOB_RECORD, {
        "group": group, "variant": variant, "seed": int(seed), "overrides": list(overrides),
        "swept": list(swept), "train_dir": rel(metrics["train_dir"]), "eval_dir": rel(metrics["eval_dir"]),
        "recall": metrics["recall"], "recall_mean": metrics["recall_mean"], "val_recall": metrics["val_recall"],
        "wall_s": round(wall_s, 3),
    })


def sweep_options(overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """{key: [option, ...]} of `hydra.sweeper.params` for a composition, e.g. ["experiment=ablation_k"]:
    what `python -m pipeline.studies.sweep -m <overrides>` would sweep (options as override strings)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        params = cfg.hydra.sweeper.get("params") or {}
        parser = OverridesParser.create()
        out = {}
        for key, value in params.items():
            ov = parser.parse_override(f"{key}={value}")
            out[str(key)] = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [str(value)]
        return out
    except HydraException as err:
        raise ConfigError(f"cannot read hydra.sweeper.params with overrides {list(overrides)}: {err}") from None


def cli_swept_keys(argv: Sequence[str]) -> list[str]:
    """The keys a command line sweeps (`models.cmr.k=4,8`, `train.lr=range(...)`), as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        return [o.get_key_element() for o in OverridesParser.create().parse_overrides(words) if o.is_sweep_override()]
    except Exception:  # Hydra itself reports a bad override before any job runs
        return []


class SweepSummary(Callback):
    """When a multirun of this entry point ends: its summary table (ablations.{csv,md,png}: one row per setting,
    titled by what was swept) in the sweep's own folder, and printed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.name != "sweep":  # another Hydra entry point (hparams_search) has its own summary
            return
        import subprocess

        # its own process: the aggregation validates configs with Hydra's compose API, which the running app holds
        sweep_dir = Path(config.hydra.sweep.dir)
        proc = subprocess.run([sys.executable, "-m", "pipeline.studies.ablations", str(sweep_dir)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"warning: no sweep summary for {sweep_dir}: {proc.stderr.strip()[-500:]}", file=sys.stderr)
            return
        print((sweep_dir / "ablations.md").read_text())
        print(proc.stdout.strip())


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    group = cfg.logger.wandb.group or (f"sweep-{Path(hc.sweep.dir).name}" if multirun else "single-run")
    job_dir = Path(hc.runtime.output_dir)
    swept = sorted(set((hc.sweeper.get("params") or {}).keys()) | set(cli_swept_keys(sys.argv[1:]))) if multirun else []
    start = time.perf_counter()
    try:
        metrics = run_job_metrics(cfg, job_dir, group)
    except (PipelineError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    write_job_record(job_dir, group=group, variant=str(cfg.sweep.variant), seed=int(cfg.sweep.seed),
                     overrides=list(hc.overrides.task), swept=swept, metrics=metrics,
                     wall_s=time.perf_counter() - start)
    return float(metrics["recall_mean"])


if __name__ == "__main__":
    main()
