"""Report stage on hand-built predictions: every file, every row, paper numbers beside ours, validity checks."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError, DataError
from pipeline.report import build_report, load_paper_numbers, main

NS = (500, 1000, 1500)
BUCKETS = (10, 100, 1000)
TURNS = (2, 6)
VARIANTS = ("window", "cmr")
SEEDS = (0, 1)
N_DOCS, N_Q = 6, 4


def _rows(variant, seed, rng, p_far, p_local=0.95):
    rows = []
    for n in NS:
        for d in range(N_DOCS):
            for q in range(N_Q):
                qt = "far" if q < 3 else "local"
                ans = int(rng.integers(0, 20))
                ok = rng.random() < (p_far(n) if qt == "far" else p_local)
                rows.append(dict(split=f"recall_{n}", task="recall", length=n, doc_id=f"r{n}-{d}", query_idx=q,
                                 query_type=qt, answer=ans, pred=ans if ok else (ans + 1) % 20, correct=ok))
    for n in NS:
        for d in range(N_DOCS):
            for q in range(2):
                ok = rng.random() < 0.6
                rows.append(dict(split=f"numeric_{n}", task="numeric", length=n, doc_id=f"n{n}-{d}", query_idx=q,
                                 query_type="numeric", answer=5, pred=5 if ok else 6, correct=ok))
    for d in range(N_DOCS):
        for q, b in enumerate(BUCKETS):
            ok = rng.random() < 0.5
            rows.append(dict(split="rare", task="rare", length=800, doc_id=f"x{d}", query_idx=q, query_type="far",
                             answer=7, pred=7 if ok else 8, correct=ok, bucket=b))
    for t in TURNS:
        for d in range(N_DOCS):
            ok = rng.random() < 0.8
            rows.append(dict(split=f"dialogue_{t}", task="dialogue", length=t, doc_id=f"g{t}-{d}", query_idx=0,
                             query_type="dialogue", answer=3, pred=3 if ok else 4, correct=ok))
    df = pd.DataFrame(rows)
    df["variant"], df["seed"] = variant, seed
    df["distance"], df["answer_train_count"], df["n_turns"] = 100, 10, 0
    return df


def make_study(root, window_far=lambda n: 0.05, cmr_far=lambda n: 0.97, variants=VARIANTS, seeds=SEEDS):
    rng = np.random.default_rng(0)
    evals, trains = [], []
    for v in variants:
        for s in seeds:
            d = root / "experiments" / "eval" / f"{v}-s{s}"
            d.mkdir(parents=True)
            _rows(v, s, rng, window_far if v == "window" else cmr_far).to_parquet(d / "predictions.parquet")
            ms = {str(n): (0.03 if v == "window" else 0.04) + 1e-5 * n for n in NS}
            (d / "overhead.json").write_text(json.dumps({"ms_per_token": ms, "peak_memory_mb": 50.0,
                                                         "params": 142000 if v == "window" else 150000,
                                                         "train_tokens_per_s": 9000.0 if v == "window" else 7000.0}))
            (d / "metrics.json").write_text(json.dumps({"wall_s": 3.5}))
            t = root / "experiments" / "train" / f"{v}-s{s}"
            t.mkdir(parents=True)
            (t / "metrics.json").write_text(json.dumps({"wall_s": 60.0, "train_tokens_per_s": 9000.0, "steps": 100,
                                                        "val_recall": 0.9, "steps_to_90": 80, "params": 142000}))
            evals.append(d)
            trains.append(t)
    (root / "data").mkdir()
    (root / "data" / "manifest.json").write_text(json.dumps({"wall_s": 12.0}))
    cfg = {"profile_name": "test", "study": {"variants": list(variants), "seeds": list(seeds)},
           "paths": {"data_dir": str(root / "data"), "experiments_dir": str(root / "experiments"),
                     "results_dir": str(root / "results")},
           "report": {"n_resamples": 200}}
    return cfg, evals, trains


def test_paper_numbers_match_method_table():
    p = load_paper_numbers()
    t = p["tables"]
    assert "2502.02046" in p["source"]
    assert t["recall"].baseline == (85.3, 78.6, 72.4, 65.8, 59.7) and t["recall"].cmr == (88.7, 84.2, 81.5, 79.1, 76.8)
    assert t["overhead"].baseline == (2.8, 3.5, 4.2, 5.3, 6.1) and t["overhead"].cmr == (3.1, 3.8, 4.6, 5.7, 6.5)
    assert t["rare"].rows == (10, 50, 100, 500, 1000) and t["rare"].cmr == (67.8, 74.5, 81.3, 89.2, 94.6)
    assert t["rare"].baseline == (52.3, 63.1, 71.2, 84.5, 91.7)
    assert t["dialogue"].baseline == (8.1, 7.5, 6.9, 6.2, 5.6) and t["dialogue"].cmr == (8.4, 8.2, 7.8, 7.4, 7.1)
    assert t["numeric"].baseline == (92.7, 87.4, 81.2, 74.5, 68.3) and t["numeric"].cmr == (94.3, 91.8, 88.5, 85.6, 82.1)
    assert t["recall"].lookup(1000) == (78.6, 84.2)


def test_report_writes_every_file_and_row(tmp_path):
    cfg, evals, trains = make_study(tmp_path)
    res = tmp_path / "results"
    tab = res / "tables"
    summary = build_report(cfg, evals, trains, res)
    for name in ("recall", "rare", "numeric", "dialogue", "overhead"):
        for ext in ("csv", "md", "tex"):
            assert (tab / f"{name}.{ext}").stat().st_size > 0
        assert (tab / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (res / "plots" / f"{name}.csv").is_file()
    for f in ("summary.json", "REPORT.md", "stage_times.csv", "tables/recall_tests.csv"):
        assert (res / f).is_file()

    rec = pd.read_csv(tab / "recall.csv")
    assert len(rec) == len(VARIANTS) * len(NS)
    assert set(zip(rec["variant"], rec["N"])) == {(v, n) for v in VARIANTS for n in NS}
    for c in ("accuracy", "ci_low", "ci_high", "accuracy_far", "accuracy_local"):
        assert rec[c].between(0, 1).all(), c
    assert (rec["ci_low"] <= rec["accuracy"] + 1e-12).all() and (rec["accuracy"] <= rec["ci_high"] + 1e-12).all()
    assert (rec["n_seeds"] == 2).all() and (rec["n_docs"] == N_DOCS).all()
    assert (rec["n_queries"] == N_DOCS * N_Q * 2).all()
    r500 = rec[rec["N"] == 500].iloc[0]
    assert r500["paper_baseline"] == pytest.approx(0.853) and r500["paper_cmr"] == pytest.approx(0.887)
    cmr = rec[rec["variant"] == "cmr"]
    assert cmr["p_vs_window_holm"].notna().all() and (cmr["p_vs_window_holm"] < 0.05).all()
    assert (cmr["p_vs_window_holm"] >= cmr["p_vs_window"]).all()

    rare = pd.read_csv(tab / "rare.csv")
    assert set(zip(rare["variant"], rare["bucket"])) == {(v, b) for v in VARIANTS for b in BUCKETS}
    assert rare.loc[rare["bucket"] == 100, "paper_cmr"].iloc[0] == pytest.approx(0.813)
    assert len(pd.read_csv(tab / "numeric.csv")) == len(VARIANTS) * len(NS)
    dia = pd.read_csv(tab / "dialogue.csv")
    assert set(zip(dia["variant"], dia["turns"])) == {(v, t) for v in VARIANTS for t in TURNS}
    assert dia.loc[dia["turns"] == 6, "paper_cmr"].iloc[0] == pytest.approx(0.78)  # 7.8 / 10
    for t in ("rare", "numeric", "dialogue"):
        d = pd.read_csv(tab / f"{t}.csv")
        assert d[["accuracy", "ci_low", "ci_high", "paper_baseline", "paper_cmr"]].stack().between(0, 1).all(), t

    oh = pd.read_csv(tab / "overhead.csv")
    assert len(oh) == len(VARIANTS) * len(NS)
    c500 = oh[(oh["variant"] == "cmr") & (oh["N"] == 500)].iloc[0]
    assert c500["ratio_vs_window"] == pytest.approx(0.045 / 0.035)
    assert c500["train_ratio_vs_window"] == pytest.approx(7000 / 9000)
    assert c500["paper_baseline"] == 2.8 and c500["paper_ratio"] == pytest.approx(3.1 / 2.8)

    plot = pd.read_csv(res / "plots" / "recall.csv")
    assert {"variant", "N", "accuracy"} <= set(plot.columns)
    assert {"paper_baseline", "paper_cmr", "window", "cmr"} == set(plot["variant"])

    s = json.loads((res / "summary.json").read_text())
    assert s == summary
    assert set(s["recall"]) == set(VARIANTS) and set(s["recall"]["cmr"]) == {str(n) for n in NS}
    assert s["validity"]["learnable"]["status"] == "PASSED"
    assert s["validity"]["window_near_chance"]["status"] == "PASSED"
    assert s["overhead"]["cmr"]["params"] == 150000

    times = pd.read_csv(res / "stage_times.csv")
    assert list(times.columns) == ["stage", "run", "wall_s", "source"]
    assert times["stage"].tolist().count("train") == 4 and times["stage"].tolist().count("evaluate") == 4
    assert times.loc[times["stage"] == "prepare", "wall_s"].iloc[0] == 12.0

    md = (res / "REPORT.md").read_text()
    assert "0.853" in md and "0.887" in md and "PASSED" in md and "window" in md
    assert "Where CMR does not beat window" in md
    assert "numeric, N=500: CMR does not beat window" in md or "numeric, N=500: CMR is above window" in md
    tex = (tab / "recall.tex").read_text()
    assert "\\begin{table}" in tex and "paper\\_baseline" in tex


def test_failed_validity_is_marked_failed(tmp_path, capsys):
    # window recalls far facts it cannot reach (leak) and cmr never learns: both checks must fail
    cfg, evals, trains = make_study(tmp_path, window_far=lambda n: 0.9, cmr_far=lambda n: 0.3)
    s = build_report(cfg, evals, trains, tmp_path / "results")
    assert s["validity"]["learnable"]["status"] == "FAILED" and s["validity"]["learnable"]["passed"] is False
    assert s["validity"]["window_near_chance"]["status"] == "FAILED"
    md = (tmp_path / "results" / "REPORT.md").read_text()
    assert "**learnable: FAILED**" in md and "**window_near_chance: FAILED**" in md
    assert "CMR does not beat window" in md
    assert "FAILED" in capsys.readouterr().out
    assert main(["--params", str(_write_params(tmp_path, cfg)), "--strict"]) == 1


def _write_params(tmp_path, cfg):
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_learnable_not_run_without_full_or_cmr(tmp_path):
    cfg, evals, trains = make_study(tmp_path)
    s = build_report(cfg, [e for e in evals if "window" in e.name], trains, tmp_path / "results")
    assert s["validity"]["learnable"]["status"] == "NOT RUN"
    assert "Not assessed" in (tmp_path / "results" / "REPORT.md").read_text()


def test_missing_eval_dir_raises_data_error(tmp_path):
    cfg, evals, trains = make_study(tmp_path)
    with pytest.raises(DataError, match="nope-s0"):
        build_report(cfg, evals + [tmp_path / "experiments" / "eval" / "nope-s0"], trains, tmp_path / "results")
    (evals[0] / "predictions.parquet").unlink()
    with pytest.raises(DataError, match="window-s0"):
        build_report(cfg, evals, trains, tmp_path / "results")
    assert main(["--params", str(_write_params(tmp_path, cfg))]) == 2


def test_cli_writes_results(tmp_path):
    cfg, _, _ = make_study(tmp_path)
    assert main(["--params", str(_write_params(tmp_path, cfg))]) == 0
    assert (tmp_path / "results" / "REPORT.md").is_file()


def test_bad_report_config_raises(tmp_path):
    cfg, evals, trains = make_study(tmp_path)
    cfg["report"] = {"ci_methd": "bca"}
    with pytest.raises(ConfigError, match="ci_methd"):
        build_report(cfg, evals, trains, tmp_path / "results")


def test_chance_comes_from_eval_metrics_when_present(tmp_path):
    cfg, evals, trains = make_study(tmp_path)
    for d in evals:
        m = json.loads((d / "metrics.json").read_text())
        m["chance_recall"] = 0.25
        (d / "metrics.json").write_text(json.dumps(m))
    s = build_report(cfg, evals, trains, tmp_path / "results")
    assert s["validity"]["window_near_chance"]["chance"] == 0.25
    cfg["report"]["chance"] = 0.5  # explicit config wins
    s = build_report(cfg, evals, trains, tmp_path / "results")
    assert s["validity"]["window_near_chance"]["chance"] == 0.5


def test_xl_comparison_joins_the_holm_family(tmp_path):
    from omegaconf import OmegaConf

    cfg, evals, trains = make_study(tmp_path, variants=("window", "xl", "cmr"), seeds=(0,))
    s = build_report(OmegaConf.create(cfg), evals, trains, tmp_path / "results")  # DictConfig accepted
    tests = pd.read_csv(tmp_path / "results" / "tables" / "recall_tests.csv")
    assert set(tests["comparison"]) == {"cmr_vs_window", "cmr_vs_xl"} and len(tests) == 2 * len(NS)
    from pipeline.stats import holm

    np.testing.assert_allclose(tests["p_holm"], holm(tests["p_value"]))
    rec = pd.read_csv(tmp_path / "results" / "tables" / "recall.csv")
    assert rec.loc[rec["variant"] == "cmr", "p_vs_xl_holm"].notna().all()
    assert rec.loc[rec["variant"] != "cmr", "p_vs_xl_holm"].isna().all()
    assert set(s["tests"]["recall"]) == {"cmr_vs_window", "cmr_vs_xl"}


def test_learnable_uses_full_within_its_training_length():
    """`full` at the shortest eval N is extrapolating; its validation recall (training length) counts."""
    from pipeline.report import ReportConfig, validity_checks

    rows = [{"variant": v, "seed": 0, "split": "recall_500", "task": "recall", "length": 500, "doc_id": f"d{i}", "query_idx": 0,
             "query_type": "far", "answer": i % 7, "correct": False} for v in ("full", "cmr", "window")
            for i in range(6)]
    preds = pd.DataFrame(rows)
    low = validity_checks(preds, ReportConfig(), 0.02, {"full-s0": {"val_recall": 0.5}})
    assert low["learnable"]["status"] == "FAILED" and low["learnable"]["full_val"] == 0.5
    high = validity_checks(preds, ReportConfig(), 0.02, {"full-s0": {"val_recall": 0.95}, "cmr-s0": {"val_recall": 0.1}})
    assert high["learnable"]["status"] == "PASSED" and high["learnable"]["full_all"] == 0.0


def test_distance_and_datasets_tables(tmp_path):
    cfg, evals, trains = make_study(tmp_path)
    cfg["backbone"] = {"window": 16}
    manifest = {"wall_s": 1.0, "filler_source": "synthetic",
                "splits": {"train": {"docs": 10, "mean_tokens": 64.0, "mean_words": 50.0, "facts_per_doc": 3.0,
                                     "queries_per_doc": 3.0, "mean_distance": 20.0},
                           "recall_500": {"docs": 4, "mean_tokens": 500.0, "mean_words": 410.0,
                                          "facts_per_doc": 8.0, "queries_per_doc": 8.0, "mean_distance": 250.0}}}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    build_report(cfg, evals, trains, tmp_path / "results")
    tab = tmp_path / "results" / "tables"
    dist = pd.read_csv(tab / "recall_by_distance.csv")
    assert set(dist["distance_segments"]) == {4}  # distance 100 tokens = 6 segments of 16 -> bin [4, 8)
    assert set(dist["variant"]) == set(VARIANTS) and dist["accuracy"].between(0, 1).all()
    ds = pd.read_csv(tab / "datasets.csv")
    assert ds.set_index("split").loc["recall_500", "mean_tokens"] == 500.0 and len(ds) == 2
    assert "Data (our Table I)" in (tmp_path / "results" / "REPORT.md").read_text()
