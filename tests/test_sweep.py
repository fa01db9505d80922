"""A tiny Hydra multirun through `pipeline.sweep`: every job trains and evaluates into its own folder,
running the same functions as the DVC stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.config import REPO_ROOT, compose
from pipeline.errors import ConfigError


@pytest.mark.timeout(300)
def test_multirun_trains_and_evaluates_each_job(tmp_path):
    from pipeline.data.prepare import prepare

    data = tmp_path / "data"
    prepare(compose(["profile=ci", f"paths.data_dir={data}"]), quiet=True)
    sweep_dir = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "pipeline.sweep", "-m", "profile=ci", "sweep.variant=window,cmr",
           "train.max_steps=20", "train.val_check_interval=10", "train.progress_bar=none", "logger=none",
           f"paths.data_dir={data}", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, variant in (("0", "window"), ("1", "cmr")):
        metrics = json.loads((sweep_dir / job / "eval" / f"{variant}-s0" / "metrics.json").read_text())
        assert set(metrics["recall"]) == {"64", "128"}
        assert (sweep_dir / job / "train" / f"{variant}-s0" / "checkpoints" / "last.ckpt").is_file()


def test_unknown_sweep_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="sweep.variant"):
        compose(["sweep.variant=lstm"])


def test_sweep_without_prepared_data_fails_clearly(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.sweep", "profile=ci", f"paths.data_dir={tmp_path / 'none'}",
           f"hydra.run.dir={tmp_path / 'run'}", "logger=none"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no prepared data" in proc.stderr
