"""`make state-size` (pipeline/studies/state_size.py): sizes parsed and checked before anything trains, the runs'
outputs gathered into results/state_size/, and the report showing them only beside the study they match."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pipeline.config import compose, to_params_yaml
from pipeline.config.schema import ReportConfig
from pipeline.errors import ConfigError
from pipeline.report.runs import trained_state_sizes
from pipeline.report.stress import state_table
from pipeline.studies.state_size import Size, check_sizes, collect, main, parse_size


@pytest.fixture()
def params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(to_params_yaml(compose()))
    return path


def test_a_size_is_variant_key_value_and_a_setting_the_memory_accepts(params):
    assert parse_size("gdn:d_key:32") == Size("gdn", "d_key", 32)
    for bad in ("gdn:d_key", "gdn:d_key:x", "gdn:d_key:0"):
        with pytest.raises(ConfigError, match="VARIANT:KEY:VALUE"):
            parse_size(bad)
    check_sizes([Size("gdn", "d_key", 8), Size("rmt", "mem_tokens", 32)], params)
    with pytest.raises(ConfigError, match="not a setting of models.gdn"):
        check_sizes([Size("gdn", "width", 8)], params)
    with pytest.raises(ConfigError, match="capacity"):  # cmr's own check: fewer slots than it writes per segment
        check_sizes([Size("cmr", "capacity", 2)], params)
    assert main(["gdn:width:8", "--params", str(params)]) == 2  # one line, nothing trained


def fake_run(root, size, seed, floats, correct):
    """What train and stress leave in a run's folder, reduced to what collect() reads."""
    folder = root / size.name
    (folder / "stress" / size.variant / f"s{seed}").mkdir(parents=True)
    (folder / "train" / size.variant / f"s{seed}").mkdir(parents=True)
    rows = [{"variant": size.variant, "seed": seed, "split": f"load_{F}", "task": "load", "length": F, "doc_id": d,
             "query_type": "far", "state_floats": floats, "correct": correct} for F in (4, 64) for d in range(3)]
    rows.append({**rows[0], "task": "update", "split": "update_1", "length": 1})
    pd.DataFrame(rows).to_parquet(folder / "stress" / size.variant / f"s{seed}" / "predictions.parquet")
    (folder / "train" / size.variant / f"s{seed}" / "metrics.json").write_text(
        json.dumps({"val_recall_far": 0.9, "val_long_recall_far": 0.5, "steps": 3000, "wall_s": 60.0}))


def test_runs_are_collected_and_shown_only_beside_the_study_they_started_from(tmp_path, params):
    sizes = [Size("gdn", "d_key", 8), Size("gdn", "d_key", 32)]
    fake_run(tmp_path / "runs", sizes[0], 0, 1024, False)
    fake_run(tmp_path / "runs", sizes[1], 0, 4096, True)
    out = tmp_path / "state_size"
    table = collect(sizes, 0, tmp_path / "runs", params, out)
    assert list(table["setting"]) == ["d_key=8", "d_key=32"] and list(table["far_recall"]) == [0.0, 1.0]
    assert list(table["F"]) == [64, 64] and list(table["state_floats"]) == [1024, 4096]

    cfg = yaml.safe_load(params.read_text())
    notes: list[str] = []
    preds = trained_state_sizes(cfg, out, notes)
    assert len(preds) == 6 and not notes  # the largest load's far queries only
    study = pd.DataFrame([{"variant": "gdn", "seed": s, "split": "load_64", "task": "load", "length": 64,
                           "doc_id": d, "query_type": "far", "state_floats": 2048, "correct": d == 0}
                          for s in (0, 1) for d in range(3)])
    t = state_table(study, ReportConfig(), preds)
    assert list(t["setting"]) == ["d_key=8 (trained)", "as trained", "d_key=32 (trained)"]
    assert list(t["trained"]) == [True, True, True] and list(t["n_seeds"]) == [1, 2, 1]

    other = {**cfg, "train": {**cfg["train"], "lr": 1.0}}
    assert trained_state_sizes(other, out, notes) is None and "train differ" in notes[-1]
    moved = {**cfg, "models": {**cfg["models"], "gdn": {**cfg["models"]["gdn"], "heads": 4}}}
    assert trained_state_sizes(moved, out, notes) is None and "models.gdn" in notes[-1]
