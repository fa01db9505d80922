"""A tiny Hydra multirun through `pipeline.studies.sweep`: every job trains and evaluates into its own folder,
running the same functions as the DVC stages. And the ablation sweeps of conf/experiment/: each of
their options composes into a config that validates (no training)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, REPO_ROOT, compose
from pipeline.errors import ConfigError, DataError
from pipeline.paths import run_dir
from pipeline.studies.sweep import sweep_options

ABLATIONS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("ablation_*.yaml"))


@pytest.mark.timeout(300)
def test_multirun_trains_and_evaluates_each_job(tiny_multirun):
    sweep_dir = tiny_multirun("sweep.variant=window,cmr")
    for job, variant in (("0", "window"), ("1", "cmr")):
        job_cfg = {"paths": {"experiments_dir": str(sweep_dir / job)}}
        metrics = json.loads((run_dir(job_cfg, "eval", variant, 0) / "metrics.json").read_text())
        assert set(metrics["recall"]) == {"64", "128"}
        assert (run_dir(job_cfg, "train", variant, 0) / "checkpoints" / "last.ckpt").is_file()
        record = json.loads((sweep_dir / job / "job.json").read_text())
        assert record["group"] == f"sweep-{sweep_dir.name}"  # one wandb group per sweep
        assert f"sweep.variant={variant}" in record["overrides"]
        assert record["overrides"] == yaml.safe_load((sweep_dir / job / ".hydra" / "overrides.yaml").read_text())
        assert record["recall"] == metrics["recall"] and record["eval_dir"] == f"eval/{variant}/s0"
        assert record["swept"] == ["sweep.variant"]  # a sweep given on the command line is recorded too
    # the multirun's own summary, in its folder, titled by what it swept
    summary = (sweep_dir / "ablations.md").read_text()
    assert summary.startswith(f"# Sweep sweep-{sweep_dir.name}: sweep.variant") and "sweep.variant=cmr" in summary
    assert (sweep_dir / "ablations.csv").is_file() and (sweep_dir / "ablations.png").is_file()


def test_unknown_sweep_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="sweep.variant"):
        compose(["sweep.variant=lstm"])


def test_sweep_prepares_missing_data_and_refuses_data_of_other_settings(tmp_path):
    from pipeline.studies.sweep import ensure_data

    cfg = compose(["profile=ci", f"paths.data_dir={tmp_path / 'data'}"])
    ensure_data(cfg)  # missing: prepared here
    assert (tmp_path / "data" / "manifest.json").is_file()
    ensure_data(cfg)  # same settings: reused
    other = compose(["profile=ci", f"paths.data_dir={tmp_path / 'data'}", "data.n_train_docs=700"])
    with pytest.raises(DataError, match=r"prepared with other data settings.*data.n_train_docs: 600 there, 700 here"):
        ensure_data(other)
    cmd = [sys.executable, "-m", "pipeline.studies.sweep", "profile=ci", f"paths.data_dir={tmp_path / 'data'}",
           "data.n_train_docs=700", f"hydra.run.dir={tmp_path / 'run'}", "logger=none"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "prepared with other data settings" in proc.stderr


def test_every_ablation_named_in_the_method_has_a_sweep():
    assert set(ABLATIONS) == {f"ablation_{n}" for n in ("capture", "k", "capacity", "selection", "mode", "gate",
                                                        "bptt")}


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_option_validates_on_the_default_backbone(name):
    base = compose([f"experiment={name}"])
    assert base.sweep.variant == "cmr" and base.logger.wandb.group == name
    assert base.backbone.n_layers == 2 and base.backbone.window == 16  # pipeline/schema.py BackboneConfig
    options = sweep_options([f"experiment={name}"])
    assert options and all(len(v) >= 2 for v in options.values()), options
    for key, values in options.items():
        assert key.startswith("models.cmr."), key
        composed = [OmegaConf.select(compose([f"experiment={name}", f"{key}={v}"]), key) for v in values]
        default = OmegaConf.select(base, key)
        assert default in composed, f"{name}: the default {key}={default} is not among the options {values}"
        assert len({json.dumps(OmegaConf.to_container(c) if OmegaConf.is_config(c) else c) for c in composed}) \
            == len(values), f"{name}: duplicate options {values}"


@pytest.mark.timeout(300)
def test_multirun_through_the_submitit_launcher(tiny_multirun):
    """conf/hydra/launcher/local.yaml: the sweep's jobs run as submitit jobs (hydra-submitit-launcher,
    the `cluster` extra), each in its own process, with the same outputs as the basic launcher's."""
    sweep_dir = tiny_multirun("hydra/launcher=local", "sweep.variant=window", "sweep.seed=0,1")
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # two jobs, each run by submitit
    for job, seed in (("0", 0), ("1", 1)):
        job_cfg = {"paths": {"experiments_dir": str(sweep_dir / job)}}
        metrics = json.loads((run_dir(job_cfg, "eval", "window", seed) / "metrics.json").read_text())
        assert set(metrics["recall"]) == {"64", "128"}
        assert json.loads((sweep_dir / job / "job.json").read_text())["recall"] == metrics["recall"]
