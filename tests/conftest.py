"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT, compose


@pytest.fixture
def tiny_multirun(tmp_path):
    """tiny_multirun(*overrides) -> sweep folder (see run_tiny_multirun)."""
    return lambda *overrides: run_tiny_multirun(tmp_path, *overrides)


def run_tiny_multirun(tmp_path: Path, *overrides: str) -> Path:
    """Prepare ci-profile data, run `python -m pipeline.studies.sweep -m <overrides>` at a few training steps
    into tmp_path/multirun, assert it succeeded, and return that sweep folder."""
    from pipeline.data.prepare import prepare

    data = tmp_path / "data"
    prepare(compose(["profile=ci", f"paths.data_dir={data}"]), quiet=True)
    sweep_dir = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "pipeline.studies.sweep", "-m", *overrides, "profile=ci",
           "train.max_steps=20", "train.val_check_interval=10", "train.progress_bar=none", "logger=none",
           f"paths.data_dir={data}", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir
