"""Aggregation of ablation sweeps (pipeline.studies.ablations): a tiny real multirun of an ablation config
through to results/ablations.{csv,md,png}, the arithmetic on hand-built job folders (seeds pooled,
the reference row, the paired test), and clear errors for folders that hold no sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.studies.ablations import aggregate, main
from pipeline.config import compose
from pipeline.errors import DataError
from pipeline.paths import run_dir


@pytest.mark.timeout(300)
def test_ablation_multirun_aggregates_to_csv_md_png(tmp_path, tiny_multirun):
    sweep_dir = tiny_multirun("experiment=ablation_gate")
    assert json.loads((sweep_dir / "0" / "job.json").read_text())["group"] == "ablation_gate"

    out = tmp_path / "results"
    assert main([str(sweep_dir), "--out", str(out)]) == 0
    df = pd.read_csv(out / "ablations.csv")
    assert list(df["sweep"]) == ["ablation_gate"] * 2
    assert list(df["setting"]) == ["models.cmr.gate=True", "models.cmr.gate=False"]
    assert list(df["reference"]) == [True, False]
    for col in ("recall_64", "recall_128", "recall_mean", "recall_mean_ci_low", "val_recall", "params",
                "train_tokens_per_s", "p_vs_reference_holm"):
        assert col in df.columns, col
    assert df["recall_mean"].between(0, 1).all() and (df["recall_mean_ci_low"] <= df["recall_mean"]).all()
    assert df.loc[0, "params"] > df.loc[1, "params"]  # the gate has weights
    evals = [json.loads((run_dir({"paths": {"experiments_dir": str(sweep_dir / j)}}, "eval", "cmr", 0)
                         / "metrics.json").read_text()) for j in ("0", "1")]
    for i, m in enumerate(evals):  # one seed: the row's recall by N is the job's own
        assert df.loc[i, "recall_64"] == pytest.approx(m["recall"]["64"])
    md = (out / "ablations.md").read_text()
    assert "## ablation_gate" in md and "models.cmr.gate=False" in md and "N=128" in md
    assert (out / "ablations.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------- hand-built job folders
def _fake_job(job_dir: Path, gate: bool, seed: int, correct: np.ndarray) -> None:
    """A job folder as pipeline.studies.sweep leaves it, with given per-query outcomes (2 lengths x 4 docs x 2 queries)."""
    overrides = ["experiment=ablation_gate", f"models.cmr.gate={gate}", f"sweep.seed={seed}"]
    cfg = compose(overrides)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (job_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    exp = {"paths": {"experiments_dir": str(job_dir)}}
    rows = [{"variant": "cmr", "seed": seed, "split": f"recall_{n}", "task": "recall", "length": n, "doc_id": d,
             "query_idx": q, "query_type": "far", "answer": 1, "pred": 1, "correct": False}
            for n in (64, 128) for d in range(4) for q in range(2)]
    preds = pd.DataFrame(rows)
    preds["correct"] = correct.astype(bool)
    ev = run_dir(exp, "eval", "cmr", seed)
    ev.mkdir(parents=True)
    preds.to_parquet(ev / "predictions.parquet")
    tr = run_dir(exp, "train", "cmr", seed)
    tr.mkdir(parents=True)
    (tr / "metrics.json").write_text(json.dumps({"val_recall": 0.5 + seed / 10, "params": 1000 + int(gate),
                                                 "train_tokens_per_s": 100.0 * (seed + 1), "wall_s": 1.0}))


def test_rows_pool_seeds_and_test_against_the_reference(tmp_path):
    ones, zeros = np.ones(16), np.zeros(16)
    _fake_job(tmp_path / "0", True, 0, ones)
    _fake_job(tmp_path / "1", True, 1, np.r_[np.ones(8), np.zeros(8)])  # N=64 right, N=128 wrong
    _fake_job(tmp_path / "2", False, 0, zeros)
    _fake_job(tmp_path / "3", False, 1, zeros)
    df = aggregate([tmp_path]).set_index("setting")
    ref, off = df.loc["models.cmr.gate=True"], df.loc["models.cmr.gate=False"]
    assert ref["reference"] == True and off["reference"] == False  # noqa: E712  (numpy bools)
    assert ref["n_seeds"] == 2 and ref["seeds"] == "0 1"
    assert ref["recall_64"] == 1.0 and ref["recall_128"] == 0.5 and ref["recall_mean"] == 0.75
    assert ref["val_recall"] == pytest.approx(0.55) and ref["train_tokens_per_s"] == 150.0
    assert off["recall_mean"] == 0.0 and off["delta_vs_reference"] == -0.75
    assert off["n_pairs"] == 32 and off["p_vs_reference"] < 1e-5  # 24 discordant pairs, all one way


def test_a_seed_twice_in_one_setting_is_an_error(tmp_path):
    _fake_job(tmp_path / "a" / "0", True, 0, np.ones(16))
    _fake_job(tmp_path / "b" / "0", True, 0, np.ones(16))
    _fake_job(tmp_path / "b" / "1", False, 0, np.ones(16))
    with pytest.raises(DataError, match="more than once"):
        aggregate([tmp_path / "a", tmp_path / "b"])


def test_empty_foreign_or_missing_folders_fail_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a sweep")
    for folder in ("empty", "foreign"):
        with pytest.raises(DataError, match="no Hydra job folders"):
            aggregate([tmp_path / folder])
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_job_that_did_not_finish_is_named(tmp_path):
    _fake_job(tmp_path / "0", True, 0, np.ones(16))
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- models.cmr.gate=false\n")
    (tmp_path / "1" / ".hydra" / "config.yaml").write_text((tmp_path / "0" / ".hydra" / "config.yaml").read_text())
    with pytest.raises(DataError, match=str(tmp_path / "1")):
        aggregate([tmp_path])
