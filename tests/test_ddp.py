"""Training on more than one process (Lightning DDP, gloo on CPU): the curriculum sampler gives each rank a
disjoint share of the one-process batch, and a 2-process run matches a 1-process run with the same global
batch (same answers' mean loss, validation summed over ranks) within float tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.config import REPO_ROOT, as_plain
from pipeline.data.loader import CurriculumBatchSampler, eval_batches
from pipeline.errors import ConfigError
from pipeline.config.checks import check_train as validate_train
from tests.test_train import W, data_root, tiny_config  # noqa: F401 (data_root: the module's tiny data)

SCHED = [{"until_step": 5, "max_segments": 2}, {"until_step": None, "max_segments": 4}]


def test_ranks_split_the_one_process_batch_into_disjoint_shares():
    n_seg = np.repeat([1, 2, 3, 4], 10)
    lengths = n_seg * W
    one = CurriculumBatchSampler(lengths, n_seg, batch_size=8, curriculum=SCHED, seed=3)
    ranks = [CurriculumBatchSampler(lengths, n_seg, 8, SCHED, 3, rank=r, world_size=2) for r in (0, 1)]
    for step in range(30):
        shares = [s.batch_at(step) for s in ranks]
        assert [len(x) for x in shares] == [4, 4]
        assert shares[0] + shares[1] == one.batch_at(step)  # the same global batch, split in order
        whole = one.batch_at(step)
        if len(set(whole)) == len(whole):  # drawn without replacement: no document on both ranks
            assert not set(shares[0]) & set(shares[1])
    with pytest.raises(ConfigError, match="split evenly over 3 processes"):
        CurriculumBatchSampler(lengths, n_seg, 8, SCHED, 3, rank=0, world_size=3)


def test_token_cap_keeps_an_equal_share_for_every_rank():
    n_seg = np.repeat([1, 4], 10)
    lengths = n_seg * W
    ranks = [CurriculumBatchSampler(lengths, n_seg, 8, [], 3, rank=r, world_size=2, max_batch_tokens=3 * W)
             for r in (0, 1)]
    for step in range(20):
        shares = [s.batch_at(step) for s in ranks]
        assert len({int(lengths[i]) for i in shares[0] + shares[1]}) == 1
        assert len(shares[0]) == len(shares[1]) == 1  # 3 one-segment documents fit: 2, a multiple of 2 ranks


def test_each_rank_validates_its_own_batches_and_together_all():
    lengths = np.repeat([16, 32, 48], 7)
    whole = eval_batches(lengths, 4)
    shares = [eval_batches(lengths, 4, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(map(tuple, shares[0] + shares[1])) == sorted(map(tuple, whole))
    assert not {i for b in shares[0] for i in b} & {i for b in shares[1] for i in b}


def test_global_batch_must_split_over_the_processes():
    cfg = tiny_config(REPO_ROOT / "unused")
    validate_train(OmegaConf.merge(cfg.train, {"devices": 2, "strategy": "ddp"}), cfg)  # 8 over 2: fine
    with pytest.raises(ConfigError, match="devices x num_nodes = 3"):
        validate_train(OmegaConf.merge(cfg.train, {"devices": 3}), cfg)
    with pytest.raises(ConfigError, match="train.strategy='fsdp' is not allowed"):
        validate_train(OmegaConf.merge(cfg.train, {"strategy": "fsdp"}), cfg)


def _run(cmd, *, timeout=300):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


@pytest.mark.timeout(420)
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(data_root, tmp_path):  # noqa: F811
    """Through the documented front door (`cmr-repro train`, the console script) and with two seeds in one
    command: each seed trains on its own two ranks, and seed 0 matches its one-process run."""
    params = tmp_path / "params.yaml"
    OmegaConf.save(as_plain(tiny_config(data_root)), params)
    _run([sys.executable, "-m", "pipeline.train", "--variant", "cmr", "--params", str(params),
          "--run-dir", str(tmp_path / "one"), "--seeds", "0"])
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    log = _run([str(Path(sys.executable).parent / "cmr-repro"), "train", "--variant", "cmr", "--params", str(params),
                "--seeds", "0", "1", f"paths.experiments_dir={tmp_path / 'exp'}", "train.strategy=ddp",
                "train.devices=2"])
    assert log.count("Starting with 2 processes") == 2 and log.count("GLOBAL_RANK: 1") == 2, log[-3000:]
    runs = {s: tmp_path / "exp" / "train" / "cmr" / f"s{s}" for s in (0, 1)}
    two = json.loads((runs[0] / "metrics.json").read_text())
    assert two["steps"] == one["steps"] == 10
    assert two["tokens_trained"] == one["tokens_trained"]  # the same global batches
    w1, w2 = _weights(tmp_path / "one"), _weights(runs[0])
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(one["val_curve"], two["val_curve"]):  # validation over all batches, summed over ranks
        assert a["step"] == b["step"]
        assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-4)
        assert b["val/recall"] == pytest.approx(a["val/recall"], abs=1e-9)
    seed1 = json.loads((runs[1] / "metrics.json").read_text())
    assert seed1["seed"] == 1 and seed1["steps"] == 10
    w_seed1 = _weights(runs[1])
    assert any(not torch.equal(w_seed1[k], w2[k]) for k in w2)  # its own seed, not seed 0 again
