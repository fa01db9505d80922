"""Evaluation stage: table arithmetic on hand-built predictions, predict.py batching on a fake model,
overhead on a stub, and the stage's error handling (missing checkpoint, atomic output).
Nothing here depends on trained models or on the data stage."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf

from pipeline.errors import ConfigError, DataError
from pipeline.config.checks import check_eval
from pipeline.config.evaluate import rare_buckets
from pipeline.config.schema import EvalConfig
from pipeline.evaluate import dialogue, numeric, overhead, rare, recall
from pipeline.evaluate.predict import PRED_COLUMNS, predict_split

torch.set_num_threads(1)
V = 40  # fake vocabulary


# ------------------------------------------------------------------------------------ fakes
@dataclass
class FakeOutput:
    logits: torch.Tensor  # [B, N, V]


class TableModel(torch.nn.Module):
    """logits[b, t] = E[input_ids[b, t]]: each row depends on its own tokens only, so the expected
    argmax can be computed without the model's batching. Records every input shape."""

    def __init__(self, vocab: int = V, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.calls: list[tuple[int, int]] = []

    def forward(self, ids: torch.Tensor) -> FakeOutput:
        self.calls.append(tuple(ids.shape))
        return FakeOutput(self.E[ids])  # [B, N, V]


class OracleModel(torch.nn.Module):
    """Predicts input_ids[t+1] at every t (always right), or that + 1 mod V (always wrong)."""

    vocab_size = V  # for random overhead inputs when no tokenizer is on disk

    def __init__(self, right: bool = True):
        super().__init__()
        self.right = right
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> FakeOutput:
        nxt = torch.roll(ids, -1, dims=1)  # [B, N]
        if not self.right:
            nxt = (nxt + 1) % V
        return FakeOutput(torch.nn.functional.one_hot(nxt, V).float() + 0 * self.w)  # [B, N, V]


def make_docs(lengths, n_queries=3, seed=0, task="recall", n_turns=0, qtypes=("far", "local")):
    """A datasets.Dataset with the contract's columns: random ids, queries near the end."""
    g = torch.Generator().manual_seed(seed)
    rows = {k: [] for k in ["doc_id", "task", "input_ids", "n_words", "query_pos", "answers",
                            "query_type", "fact_pos", "distance", "n_turns"]}
    for i, n in enumerate(lengths):
        ids = torch.randint(0, V, (n,), generator=g).tolist()
        qpos = [n - 2 - 2 * j for j in range(n_queries)]
        fpos = [j for j in range(n_queries)]
        rows["doc_id"].append(f"{task}-{n}-{i}-{seed}")
        rows["task"].append(task)
        rows["input_ids"].append(ids)
        rows["n_words"].append(n)
        rows["query_pos"].append(qpos)
        rows["answers"].append([ids[q + 1] for q in qpos])
        rows["query_type"].append([qtypes[j % len(qtypes)] for j in range(n_queries)])
        rows["fact_pos"].append(fpos)
        rows["distance"].append([q - f for q, f in zip(qpos, fpos)])
        rows["n_turns"].append(n_turns)
    return Dataset.from_dict(rows)


def hand_preds(task, keys, correct, *, n_per_key=4, query_types=("far", "local"), counts=None,
               variant="cmr", seed=0):
    """Hand-built predictions: n_per_key queries per key; `correct` is a bool or a list per query."""
    rows = []
    for k in keys:
        for j in range(n_per_key):
            c = correct if isinstance(correct, bool) else correct[j]
            rows.append({
                "variant": variant, "seed": seed, "split": f"{task}_{k}", "task": task, "length": k,
                "doc_id": f"d{k}-{j // 2}", "query_idx": j % 2, "query_type": query_types[j % len(query_types)],
                "answer": 5, "pred": 5 if c else 6, "correct": c, "distance": 100,
                "answer_train_count": counts[j] if counts else 0, "n_turns": k if task == "dialogue" else 0,
            })
    return pd.DataFrame(rows, columns=PRED_COLUMNS)


# ------------------------------------------------------------------------------------ tables
@pytest.mark.parametrize("right", [True, False])
def test_every_table_scores_all_right_1_and_all_wrong_0(right):
    want = 1.0 if right else 0.0
    lengths = [500, 1000]
    t = recall.score(hand_preds("recall", lengths, right))
    assert list(t["length"]) == lengths and (t["accuracy"] == want).all() and (t["n"] == 4).all()
    bt = recall.score_by_type(hand_preds("recall", lengths, right))
    assert set(bt["query_type"]) == {"far", "local"} and (bt["accuracy"] == want).all()
    assert (numeric.score(hand_preds("numeric", lengths, right, query_types=("numeric",)))["accuracy"] == want).all()
    d = dialogue.score(hand_preds("dialogue", [2, 4], right, query_types=("dialogue",)))
    assert list(d["turns"]) == [2, 4] and (d["score"] == 10 * want).all()
    r = rare.score(hand_preds("rare", [500], right, counts=[10, 10, 1000, 1000]), [10, 1000])
    assert list(r["bucket"]) == [10, 1000] and (r["accuracy"] == want).all()


def test_tables_only_count_their_own_task():
    mixed = pd.concat([hand_preds("recall", [500], True), hand_preds("rare", [500], False, counts=[10] * 4)])
    assert recall.score(mixed)["n"].tolist() == [4] and recall.score(mixed)["accuracy"].tolist() == [1.0]
    assert rare.score(mixed, [10])["accuracy"].tolist() == [0.0]


def test_far_and_local_accuracy_are_reported_separately():
    # queries alternate far/local; far ones wrong, local ones right
    t = recall.score_by_type(hand_preds("recall", [500], [False, True, False, True]))
    acc = dict(zip(t["query_type"], t["accuracy"]))
    assert acc == {"far": 0.0, "local": 1.0}
    assert recall.score(hand_preds("recall", [500], [False, True, False, True]))["accuracy"].item() == 0.5


def test_dialogue_score_is_ten_times_accuracy():
    d = dialogue.score(hand_preds("dialogue", [6], [True, True, True, False], query_types=("dialogue",)))
    assert d["accuracy"].item() == pytest.approx(0.75)
    assert d["score"].item() == pytest.approx(7.5)


def test_rare_buckets_use_measured_counts_not_intended_class():
    assert rare.assign_bucket(12, [10, 50, 100, 500, 1000]) == 10
    assert rare.assign_bucket(90, [10, 50, 100, 500, 1000]) == 100
    assert rare.assign_bucket(300, [10, 50, 100, 500, 1000]) == 500
    assert rare.assign_bucket(5000, [10, 50, 100, 500, 1000]) == 1000
    assert rare.assign_bucket(0, [10, 50, 100]) == 0
    # all four queries were meant to be class 10, but training actually held 10, 12, 90 and 0 copies
    preds = hand_preds("rare", [500], [True, False, True, False], counts=[10, 12, 90, 0])
    t = rare.score(preds, [10, 50, 100, 500, 1000]).set_index("bucket")
    assert t.loc[10, "n"] == 2 and t.loc[10, "accuracy"] == 0.5
    assert t.loc[100, "n"] == 1 and t.loc[100, "accuracy"] == 1.0 and t.loc[100, "count_min"] == 90
    assert t.loc[0, "n"] == 1
    assert 50 not in t.index


def test_chance_level_from_manifest(tmp_path):
    assert recall.chance_level(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"vocab": {"n_values": 64}}))
    assert recall.chance_level(tmp_path) == pytest.approx(1 / 64)


# ------------------------------------------------------------------------------------ predict
def test_predict_returns_argmax_at_query_pos_in_equal_length_batches():
    ds = make_docs([10, 10, 12, 10, 10, 10, 12])
    model = TableModel()
    df = predict_split(model, ds, variant="cmr", seed=3, split="recall_x", task="recall", batch_size=2)
    # length 10: 5 docs -> 2 + 2 + 1 (final partial batch); length 12: 2 docs -> one batch
    assert model.calls == [(2, 10), (2, 10), (1, 10), (2, 12)]
    assert list(df.columns) == PRED_COLUMNS and len(df) == 7 * 3
    for i, doc in enumerate(ds):
        rows = df[df["doc_id"] == doc["doc_id"]].sort_values("query_idx")
        want = [int(model.E[doc["input_ids"][q]].argmax()) for q in doc["query_pos"]]
        assert rows["pred"].tolist() == want
        assert rows["answer"].tolist() == doc["answers"]
        assert (rows["correct"] == (rows["pred"] == rows["answer"])).all()
        assert (rows["length"] == len(doc["input_ids"])).all()
    assert (df["variant"] == "cmr").all() and (df["seed"] == 3).all()


def test_predict_batch_size_does_not_change_predictions():
    ds = make_docs([16] * 5)
    a = predict_split(TableModel(), ds, variant="v", seed=0, split="s", batch_size=1)
    b = predict_split(TableModel(), ds, variant="v", seed=0, split="s", batch_size=4)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("right", [True, False])
def test_predict_oracle_model_scores_1_or_0(right):
    ds = make_docs([20, 20, 20])
    df = predict_split(OracleModel(right), ds, variant="v", seed=0, split="recall_20", task="recall",
                       length=20, batch_size=2, train_counts={"1": 7})
    assert recall.score(df)["accuracy"].item() == (1.0 if right else 0.0)
    assert set(df["answer_train_count"]) <= {0, 7}


def test_predict_rejects_answers_that_do_not_match_the_document():
    ds = make_docs([10]).to_dict()
    ds["answers"][0][0] = (ds["answers"][0][0] + 1) % V
    with pytest.raises(DataError, match="answer"):
        predict_split(TableModel(), Dataset.from_dict(ds), variant="v", seed=0, split="bad")


def test_predict_runs_without_grad():
    seen = []

    class GradProbe(TableModel):
        def forward(self, ids):
            seen.append(torch.is_grad_enabled())
            return super().forward(ids)

    predict_split(GradProbe(), make_docs([8]), variant="v", seed=0, split="s")
    assert seen == [False]


# ------------------------------------------------------------------------------------ overhead
class StubLM(torch.nn.Module):
    """Allocates a known activation (N x 256 floats) per forward."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def num_parameters(self):
        return 20

    def memory_floats(self):
        return 64

    def forward(self, ids):
        h = torch.zeros(ids.shape[0], ids.shape[1], 256)  # [B, N, 256]
        return FakeOutput((h + 1.0)[..., :V])


def test_overhead_measures_positive_numbers_with_the_right_keys():
    calls = []

    def make(n):
        calls.append(n)
        return torch.zeros(n, dtype=torch.long)

    oh = overhead.measure(StubLM(), [8, 16], make, warmup=1, repeats=3, batch_size=1)
    for key in ["ms_per_token", "ms_per_token_repeats", "peak_bytes", "peak_memory_mb", "params",
                "param_bytes", "memory_floats", "threads", "batch_size", "warmup", "repeats", "device",
                "peak_memory_method"]:
        assert key in oh, key
    assert set(oh["ms_per_token"]) == {"8", "16"} and calls == [8, 16]
    for n in ["8", "16"]:
        assert oh["ms_per_token"][n] > 0
        assert len(oh["ms_per_token_repeats"][n]) == 3
        assert oh["ms_per_token"][n] == statistics.median(oh["ms_per_token_repeats"][n])
    # h (N*256 floats) and h + 1 are alive together; parameters are excluded
    assert oh["peak_bytes"]["16"] >= 2 * 16 * 256 * 4
    assert oh["peak_bytes"]["16"] > oh["peak_bytes"]["8"]
    assert oh["params"] == 20 and oh["memory_floats"] == 64 and oh["threads"] == torch.get_num_threads()
    t = overhead.score(oh, "cmr", 0)
    assert list(t["length"]) == [8, 16] and (t["ms_per_token"] > 0).all()


def test_round_robin_times_every_model_in_turns():
    import time as _time

    order = []

    class Sleepy(StubLM):
        def __init__(self, name, secs):
            super().__init__()
            self.name, self.secs = name, secs

        def forward(self, ids):
            order.append(self.name)
            _time.sleep(self.secs)
            return super().forward(ids)

    models = {"fast": Sleepy("fast", 0.001), "slow": Sleepy("slow", 0.004)}
    res = overhead.measure_round_robin(models, [8, 16], lambda n: torch.zeros(n, dtype=torch.long),
                                       warmup=1, repeats=4, measure_memory=True)
    assert set(res) == {"fast", "slow"}
    for oh in res.values():
        assert set(oh["ms_per_token"]) == {"8", "16"} and oh["repeats"] == 4
        assert all(len(v) == 4 for v in oh["ms_per_token_repeats"].values())
        assert oh["peak_bytes"]["16"] > oh["peak_bytes"]["8"] and oh["params"] == 20
    assert res["slow"]["ms_per_token"]["8"] > res["fast"]["ms_per_token"]["8"]
    # per length: warm-ups, then turns with a rotated order, then one untimed forward each for memory
    timed = order[2:10]
    assert timed == ["fast", "slow", "slow", "fast", "fast", "slow", "slow", "fast"]


def test_overhead_peak_memory_excludes_parameters():
    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1000, 1000))  # 4 MB, not an activation

        def forward(self, ids):
            return FakeOutput(self.w[:1].t()[: ids.shape[1]].reshape(1, -1, 1).expand(-1, -1, V).clone())

    peak = overhead.peak_forward_bytes(Big(), torch.zeros(1, 10, dtype=torch.long))
    assert 0 < peak < 1_000_000


def test_overhead_reads_train_throughput(tmp_path):
    assert overhead.train_throughput(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"train_tokens_per_s": 1234.5}))
    assert overhead.train_throughput(tmp_path) == 1234.5


# ------------------------------------------------------------------------------------ config
def test_config_defaults_validate_and_bad_values_name_the_key():
    full = OmegaConf.create({"data": {"rare_counts": [10, 50]}, "eval": OmegaConf.structured(EvalConfig)})
    check_eval(full.eval, full)
    check_eval(full)  # the lead's one-argument form
    assert rare_buckets(full) == [10, 50]
    bad = full.copy()
    bad.eval.tasks = ["recall", "perplexity"]
    with pytest.raises(ConfigError, match="eval.tasks.*perplexity.*allowed"):
        check_eval(bad)
    bad = full.copy()
    bad.eval.overhead.repeats = 0
    with pytest.raises(ConfigError, match="eval.overhead.repeats"):
        check_eval(bad)
    toolong = OmegaConf.create({"data": {"rare_counts": [10]}, "backbone": {"max_positions": 1000, "positions": "learned"},
                                "study": {"variants": ["window", "full"]},
                                "models": {"window": {"name": "window"}, "full": {"name": "full"}},
                                "eval": OmegaConf.structured(EvalConfig)})
    from pipeline.models.registry import check_models  # a whole-sequence memory's positions cover the timed lengths

    with pytest.raises(ConfigError, match="max_positions.*eval.overhead.lengths"):
        check_models(toolong)
    nodata = OmegaConf.create({"data": {}, "eval": OmegaConf.structured(EvalConfig)})
    with pytest.raises(ConfigError, match="rare_buckets"):
        check_eval(nodata)


# ------------------------------------------------------------------------------------ the stage
def stage_cfg(tmp_path, tasks=("recall", "rare", "numeric", "dialogue", "overhead")):
    ev = OmegaConf.structured(EvalConfig)
    ev.tasks = list(tasks)
    ev.batch_size = 2
    ev.overhead.lengths = [20, 24]
    ev.overhead.warmup = 1
    ev.overhead.repeats = 2
    return OmegaConf.create({
        "paths": {"data_dir": str(tmp_path / "data"), "experiments_dir": str(tmp_path / "experiments")},
        "models": {"cmr": {}, "window": {}},
        "data": {"eval_lengths": [20, 30], "dialogue_turns": [2, 4], "rare_counts": [10, 100]},
        "eval": ev,
        "logger": {"wandb": {"enabled": False}},
    })


SPLITS = {
    "recall_20": lambda: make_docs([20] * 3, task="recall"),
    "recall_30": lambda: make_docs([30] * 3, seed=1, task="recall"),
    "numeric_20": lambda: make_docs([20] * 2, seed=2, task="numeric", qtypes=("numeric",)),
    "numeric_30": lambda: make_docs([30] * 2, seed=3, task="numeric", qtypes=("numeric",)),
    "rare": lambda: make_docs([20] * 2, seed=4, task="recall"),
    "dialogue_2": lambda: make_docs([24] * 2, seed=5, task="dialogue", n_turns=2, qtypes=("dialogue",)),
    "dialogue_4": lambda: make_docs([40] * 2, seed=6, task="dialogue", n_turns=4, qtypes=("dialogue",)),
}


def fake_loader(fail_on=None):
    def load(data_dir, name, max_docs=None):
        if name == fail_on:
            raise DataError(f"split {name} is corrupt (test)")
        if name not in SPLITS:
            raise DataError(f"no split {name}")
        ds = SPLITS[name]()
        return ds.select(range(min(len(ds), max_docs))) if max_docs else ds
    return load


def test_stage_writes_every_output(tmp_path, monkeypatch):
    from pipeline.evaluate import evaluate

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = stage_cfg(tmp_path)
    tdir = tmp_path / "experiments" / "train" / "cmr" / "s0"
    tdir.mkdir(parents=True)
    (tdir / "metrics.json").write_text(json.dumps({"train_tokens_per_s": 999.0}))
    out = evaluate(cfg, "cmr", 0, model=OracleModel(True), loader=fake_loader(), train_counts={})
    assert out == tmp_path / "experiments" / "eval" / "cmr" / "s0"
    names = {p.name for p in out.iterdir()}
    assert {"predictions.parquet", "recall.csv", "recall_by_type.csv", "rare.csv", "numeric.csv", "dialogue.csv",
            "overhead.csv", "overhead.json", "metrics.json", "timing.json"} <= names
    pred = pd.read_parquet(out / "predictions.parquet")
    assert list(pred.columns) == PRED_COLUMNS + ["bucket"]
    assert set(pred["task"]) == {"recall", "rare", "numeric", "dialogue"}
    assert pred["correct"].all()
    assert sorted(set(pred.loc[pred["task"] == "dialogue", "length"])) == [2, 4]  # turns, not tokens
    m = json.loads((out / "metrics.json").read_text())
    assert m["recall"] == {"20": 1.0, "30": 1.0} and m["recall_far"]["20"] == 1.0
    assert m["dialogue"] == {"2": 10.0, "4": 10.0} and m["numeric"] == {"20": 1.0, "30": 1.0}
    assert m["rare"] == {"0": 1.0}  # empty train counts: every answer measured as unseen
    assert set(m["ms_per_token"]) == {"20", "24"} and m["wall_s"] > 0
    oh = json.loads((out / "overhead.json").read_text())
    assert oh["train_tokens_per_s"] == 999.0
    assert oh["inputs"]["20"] == "recall_20[0]" and oh["inputs"]["24"].startswith("random ids")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_missing_checkpoint_dir_is_a_clear_data_error(tmp_path):
    from pipeline.evaluate import evaluate

    cfg = stage_cfg(tmp_path)
    with pytest.raises(DataError, match=r"cmr/s0.*does not exist.*pipeline\.train --variant cmr --seed 0"):
        evaluate(cfg, "cmr", 0, loader=fake_loader(), train_counts={})
    ckpts = tmp_path / "experiments" / "train" / "cmr" / "s0" / "checkpoints"
    ckpts.mkdir(parents=True)
    with pytest.raises(DataError, match="no best.ckpt"):
        evaluate(cfg, "cmr", 0, loader=fake_loader(), train_counts={})
    (ckpts / "last.ckpt").write_bytes(b"x")  # a run killed mid-way: last.ckpt only
    with pytest.raises(DataError, match="no best.ckpt"):
        evaluate(cfg, "cmr", 0, loader=fake_loader(), train_counts={})
    (ckpts / "best.ckpt").write_bytes(b"x")  # ... or one that stopped before max_steps (diverged)
    (ckpts.parent / "metrics.json").write_text('{"steps": 250, "config": {"max_steps": 3000}}')
    with pytest.raises(DataError, match="stopped at step 250 of 3000"):
        evaluate(cfg, "cmr", 0, loader=fake_loader(), train_counts={})
    assert not (tmp_path / "experiments" / "eval").exists()
    from pipeline.evaluate import check_trained

    (ckpts.parent / "metrics.json").write_text('{"steps": 2000, "config": {"max_steps": 3000}, "stopped_early": true}')
    check_trained(ckpts.parent, "cmr", 0)  # early stopping ended it: a finished run


def test_unknown_variant_is_a_config_error(tmp_path):
    from pipeline.evaluate import evaluate

    with pytest.raises(ConfigError, match="allowed: cmr, window"):
        evaluate(stage_cfg(tmp_path), "lstm", 0, model=OracleModel(), loader=fake_loader(), train_counts={})


def test_error_midway_leaves_no_half_written_output(tmp_path, monkeypatch):
    from pipeline.evaluate import evaluate

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = stage_cfg(tmp_path, tasks=("recall", "dialogue"))
    out = tmp_path / "experiments" / "eval" / "cmr" / "s0"
    # recall succeeds, then dialogue_4 fails: nothing may appear
    with pytest.raises(DataError, match="corrupt"):
        evaluate(cfg, "cmr", 0, model=OracleModel(), loader=fake_loader("dialogue_4"), train_counts={})
    assert not out.exists() and list(out.parent.iterdir()) == []
    # a previous good result survives a failed re-run unchanged
    evaluate(cfg, "cmr", 0, model=OracleModel(), loader=fake_loader(), train_counts={})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError):
        evaluate(cfg, "cmr", 0, model=OracleModel(False), loader=fake_loader("dialogue_4"), train_counts={})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["s0"]


def test_cli_reports_missing_params_file(tmp_path, capsys):
    from pipeline.evaluate.__main__ import main

    assert main(["--variant", "cmr", "--seed", "0", "--params", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_an_evaluation_run_in_wandb_carries_its_config(tmp_path, monkeypatch):
    """An eval run can be grouped by variant and plotted against any eval or model key (read back offline)."""
    pytest.importorskip("wandb")
    from pipeline.config import compose
    from pipeline.evaluate import _wandb_start
    from pipeline.tracking import finish_wandb
    from tests.wandb_files import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    finish_wandb(_wandb_start(compose([]), "cmr", 2, tmp_path))
    run = read_run(next((tmp_path / "wandb").glob("offline-run-*")))
    assert run["job_type"] == "evaluate" and "variant:cmr" in run["tags"] and "seed:2" in run["tags"]
    assert run["config"]["variant"] == "cmr" and run["config"]["model"]["name"] == "cmr"
    assert "lengths" in run["config"]["eval"]["overhead"]
