"""Table I stage: from data/manifest.json to results/datasets/datasets.* and results/plots/datasets.csv."""

import json

import pandas as pd
import pytest
import yaml

from pipeline.config import compose, to_params_yaml
from pipeline.datasets_table import datasets_table, main, write_datasets
from pipeline.errors import DataError

MANIFEST = {
    "filler_source": "synthetic(grammar, zipf_a=1.1)",
    "splits": {
        "recall_1000": {"docs": 5, "mean_tokens": 1000.0, "max_tokens": 1000, "mean_words": 830.0,
                        "facts_per_doc": 8.0, "queries_per_doc": 8.0, "mean_distance": 500.0},
        "train": {"docs": 100, "mean_tokens": 64.0, "max_tokens": 96, "mean_words": 50.0, "facts_per_doc": 6.0,
                  "queries_per_doc": 5.7, "mean_distance": 14.0},
        "recall_500": {"docs": 5, "mean_tokens": 500.0, "max_tokens": 500, "mean_words": 415.0,
                       "facts_per_doc": 8.0, "queries_per_doc": 8.0, "mean_distance": 250.0},
        "val": {"docs": 10, "mean_tokens": 64.0, "max_tokens": 96, "mean_words": 50.2, "facts_per_doc": 6.1,
                "queries_per_doc": 5.7, "mean_distance": 14.5},
        "dialogue_2": {"docs": 5, "mean_tokens": 128.0, "max_tokens": 128, "mean_words": 106.0,
                       "facts_per_doc": 2.0, "queries_per_doc": 2.0, "mean_distance": 92.0},
    },
}


def test_table_has_every_split_in_order():
    df = datasets_table(MANIFEST)
    assert df["split"].tolist() == ["train", "val", "dialogue_2", "recall_500", "recall_1000"]
    r = df.set_index("split").loc["recall_500"]
    assert (r["kind"], r["documents"], r["mean_tokens"], r["mean_words"], r["facts_per_doc"]) == (
        "recall", 5, 500.0, 415.0, 8.0)
    assert (df["filler"] == MANIFEST["filler_source"]).all()


def test_stage_writes_tables_plot_and_plot_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(MANIFEST))
    params = tmp_path / "params.yaml"  # a whole composed config: the stage validates it like every stage
    params.write_text(to_params_yaml(compose(["profile=ci", f"paths.data_dir={tmp_path / 'data'}",
                                              f"paths.results_dir={tmp_path / 'results'}"])))
    assert main(["--params", str(params)]) == 0
    tab = tmp_path / "results" / "datasets"
    for ext in ("csv", "md", "tex"):
        assert (tab / f"datasets.{ext}").stat().st_size > 0
    assert (tab / "datasets.png").read_bytes()[:4] == b"\x89PNG"
    df = pd.read_csv(tab / "datasets.csv")
    assert len(df) == len(MANIFEST["splits"]) and {"documents", "mean_tokens", "mean_words", "facts_per_doc",
                                                    "filler"} <= set(df.columns)
    assert "Table I" in (tab / "datasets.md").read_text() and "\\begin{table}" in (tab / "datasets.tex").read_text()
    plot = pd.read_csv(tmp_path / "results" / "plots" / "datasets.csv")
    assert plot.set_index("split").loc["recall_1000", "mean_tokens"] == 1000.0


def test_missing_or_bad_manifest(tmp_path):
    with pytest.raises(DataError, match="manifest.json missing"):
        write_datasets(tmp_path / "manifest.json", tmp_path / "results")
    (tmp_path / "manifest.json").write_text(json.dumps({"wall_s": 1.0}))
    with pytest.raises(DataError, match="no `splits`"):
        write_datasets(tmp_path / "manifest.json", tmp_path / "results")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        write_datasets(tmp_path / "manifest.json", tmp_path / "results")
    params = tmp_path / "params.yaml"
    params.write_text(to_params_yaml(compose(["profile=ci", f"paths.data_dir={tmp_path / 'nodata'}"])))
    assert main(["--params", str(params)]) == 2  # a valid config whose data folder has no manifest
    params.write_text(yaml.safe_dump({"paths": {"data_dir": str(tmp_path / "nodata")}}))
    assert main(["--params", str(params)]) == 2  # not a whole config: validated like every stage's
    assert main(["--params", str(tmp_path / "nope.yaml")]) == 2
