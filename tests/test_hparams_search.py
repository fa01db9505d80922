"""The Optuna search (pipeline.studies.hparams_search): a tiny 2-trial search whose trials are sweep jobs,
its study files, resuming, and the config mistakes it rejects before any training."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pipeline.studies import hparams_search
from pipeline.config import compose
from pipeline.errors import ConfigError

TINY = ["profile=ci", "train.max_steps=20", "train.val_check_interval=10", "train.progress_bar=none", "logger=none"]


@pytest.mark.timeout(300)
def test_two_trial_search_writes_trial_jobs_and_study_csv(tmp_path, monkeypatch):
    from pipeline.studies.ablations import aggregate
    from pipeline.data.prepare import prepare

    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = tmp_path / "data"
    prepare(compose(["profile=ci", f"paths.data_dir={data}"]), quiet=True)
    study_dir = tmp_path / "study"
    args = ["n_trials=2", f"study_dir={study_dir}", *TINY, f"paths.data_dir={data}"]
    study = hparams_search.run_search("lr_width", args)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    trials = pd.read_csv(study_dir / "trials.csv")
    assert list(trials["number"]) == [0, 1]
    assert {"val_recall", "params_train.lr", "params_backbone.d_model", "user_attrs_recall_mean"} <= set(trials)
    assert trials["params_train.lr"].between(3e-4, 1e-2).all()
    assert set(trials["params_backbone.d_model"]) <= {32, 64, 96, 128}
    best = json.loads((study_dir / "best.json").read_text())
    assert best["metric"] == "val_recall" and best["n_complete"] == 2
    assert best["best"]["val_recall"] == trials["val_recall"].max()
    for t in study.trials:  # each trial is a sweep job folder with its own overrides
        job = study_dir / str(t.number)
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"backbone.d_model={t.params['backbone.d_model']}" in overrides and "sweep.variant=cmr" in overrides
        record = json.loads((job / "job.json").read_text())
        assert record["val_recall"] == pytest.approx(t.value) and record["group"] == "hparams_search_lr_width"

    again = hparams_search.run_search("lr_width", args)  # resumes the sqlite study: nothing left to run
    assert len(again.trials) == 2
    table = aggregate([study_dir])
    assert list(table["sweep"]) == ["hparams_search_lr_width"] * 2
    assert table["setting"].str.contains("train.lr=").all()


def test_unknown_search_is_named(capsys):
    assert hparams_search.main(["hparams_search=nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "lr_width" in err


def test_searched_key_cannot_also_be_overridden(tmp_path):
    with pytest.raises(ConfigError, match="train.lr"):
        hparams_search.run_search("lr_width", [f"study_dir={tmp_path}", "train.lr=0.01"])


def test_invalid_search_space_fails_before_training(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nparams:\n  backbone.d_model: {type: categorical, choices: [64, 30]}\n")
    monkeypatch.setattr(hparams_search, "SEARCH_DIR", tmp_path)
    with pytest.raises(ConfigError, match="value 30"):
        hparams_search.run_search("bad", [f"study_dir={tmp_path / 'study'}"])
    assert not (tmp_path / "study").exists()
    (tmp_path / "bad.yaml").write_text("name: bad\nparams:\n  train.lr: {type: float, low: 0, high: 1, log: true}\n")
    with pytest.raises(ConfigError, match="log scale"):
        hparams_search.run_search("bad", [])
