"""Where memories break (pipeline/stress/, pipeline/report/stress.py): the load, length and update documents on
tiny real data, their evaluation with an oracle model, and the break points the report reads off the curves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("datasets")

from pipeline.config import CONF_DIR, compose, typed  # noqa: E402
from pipeline.config.schema import ReportConfig  # noqa: E402
from pipeline.errors import ConfigError, DataError  # noqa: E402
from pipeline.report.stress import break_point, break_points, qualifier_table, update_table  # noqa: E402
from pipeline.stress.data import LATER_TO_END, build, check_fits, load_stress_split, read_manifest  # noqa: E402

W = 16


def tiny(root):
    return typed({
        "profile_name": "test", "study": {"variants": ["window", "full"], "seeds": [0]}, "sweep": {"variant": "window"},
        "paths": {"data_dir": str(root / "data"), "experiments_dir": str(root / "exp"), "results_dir": str(root / "res")},
        "backbone": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "window": W, "max_positions": 512},
        "models": {"window": {"name": "window"}, "full": {"name": "full"}},
        "data": {"segment_len": W, "n_train_docs": 40, "n_val_docs": 8, "train_min_segments": 2, "train_max_segments": 3,
                 "n_entities": 16, "n_common_values": 16, "n_variables": 8, "max_number": 9, "rare_counts": [4],
                 "rare_tokens_per_class": 1, "filler_vocab_size": 64, "eval_lengths": [64], "n_eval_docs": 2,
                 "n_eval_facts": 3, "n_eval_num_vars": 2, "rare_eval_length": 64, "n_rare_docs": 2,
                 "dialogue_turns": [2], "dialogue_turn_len": 16, "n_far_facts": 2, "n_train_long_docs": 0,
                 "val_long_lengths": [64], "n_val_long_docs": 2,
                 "train_mix": {"recall": 0.7, "numeric": 0.15, "dialogue": 0.15}},
        "stress": {"load_facts": [2, 8], "load_length": 256, "n_load_docs": 3, "lengths": [320], "n_length_docs": 2,
                   "full_max_length": 256, "update_gaps": [1, 3], "update_length": 256, "n_update_docs": 5},
        "logger": {"wandb": {"enabled": False, "mode": "disabled"}, "csv": False},
    })


@pytest.fixture(scope="module")
def stress_root(tmp_path_factory):
    from pipeline.data.prepare import prepare

    root = tmp_path_factory.mktemp("stress")
    cfg = tiny(root)
    prepare(cfg, quiet=True)
    build(cfg, root / "data_stress", quiet=True)
    return root, cfg


def test_splits_have_the_loads_lengths_and_updates_asked_for(stress_root):
    root, cfg = stress_root
    m = read_manifest(root / "data_stress")
    assert set(m["splits"]) == {"load_2", "load_8", "length_320", "update_1", "update_3", "qualifier_1", "qualifier_3"}
    for f in (2, 8):
        ds = load_stress_split(root / "data_stress", f"load_{f}")
        assert len(ds) == 3 and all(len(q) == f and set(t) == {"far"} for q, t in zip(ds["query_pos"], ds["query_type"]))
        assert all(len(ids) == 256 for ids in ds["input_ids"])
        assert all(len(set(np.array(ids)[np.array(fp) - 1])) == f for ids, fp in zip(ds["input_ids"], ds["fact_pos"]))
    assert all(len(ids) == 320 for ids in load_stress_split(root / "data_stress", "length_320")["input_ids"])


def test_an_update_states_one_entity_twice_gap_segments_apart_with_different_values(stress_root):
    root, _ = stress_root
    for gap in (1, 3):
        ds = load_stress_split(root / "data_stress", f"update_{gap}")
        for ids, qpos, ans, fpos, prior in zip(ds["input_ids"], ds["query_pos"], ds["answers"], ds["fact_pos"], ds["prior"]):
            ids = np.array(ids)
            (i,) = [k for k, p in enumerate(prior) if p >= 0]  # exactly one updated entity per document
            later_at = fpos[i]  # the later statement's value ("is E V ."): its entity just before it
            assert ids[qpos[i]] == ids[later_at - 1] and ans[i] == ids[later_at] != prior[i]  # `? is E` -> V
            earlier = [p for p in range(len(ids) - 1) if ids[p] == prior[i] and ids[p - 1] == ids[later_at - 1]]
            assert earlier and later_at // W - earlier[-1] // W == gap
            assert qpos[i] > later_at  # asked after both statements, beyond local reach of the later one
            assert qpos[i] // W - later_at // W >= LATER_TO_END - 1


def test_a_qualified_query_names_the_speaker_whose_statement_it_asks(stress_root):
    """"A: is E V1 ." ... "B: is E V2 ." (gap segments apart) ... "A: ? is E" -> V1: the answer is the value stated
    right after the query's own qualifier; `prior` the other; half the documents ask the later statement."""
    root, cfg = stress_root
    from pipeline.data import load_tokenizer

    vocab = load_tokenizer(root / "data").get_vocab()
    tags = {vocab[s] for s in cfg.data.speakers}
    for gap in (1, 3):
        ds = load_stress_split(root / "data_stress", f"qualifier_{gap}")
        asked = []
        for ids, qpos, ans, prior, later in zip(ds["input_ids"], ds["query_pos"], ds["answers"], ds["prior"],
                                                ds["asks_later"]):
            ids = np.array(ids)
            (i,) = [k for k, p in enumerate(prior) if p >= 0]
            assert later[i] in (0, 1) and all(a == -1 for k, a in enumerate(later) if k != i)
            tag, ent = ids[qpos[i] - 3], ids[qpos[i]]  # "tag ? is E": the prompt ends at E
            assert tag in tags and ans[i] != prior[i]
            stated = {int(ids[p - 3]): (p, int(ids[p])) for p in range(3, len(ids))
                      if ids[p - 1] == ent and ids[p - 2] == vocab["is"] and ids[p - 3] in tags and p < qpos[i] - 3}
            assert set(stated) == tags and stated[int(tag)][1] == ans[i]  # its own tag's value is the answer
            (other,) = set(stated) - {int(tag)}
            assert stated[other][1] == prior[i]
            (p_early, _), (p_late, _) = sorted(stated.values())
            assert p_late // W - p_early // W == gap and (stated[int(tag)][0] == p_late) == bool(later[i])
            asked.append(later[i])
        assert sorted(asked) == [0, 0, 0, 1, 1]  # alternating over 5 documents


def test_stress_data_is_deterministic_and_checks_what_it_needs(stress_root, tmp_path):
    root, cfg = stress_root
    build(cfg, tmp_path / "again", quiet=True)
    for name in ("load_8", "update_3"):
        a, b = load_stress_split(root / "data_stress", name), load_stress_split(tmp_path / "again", name)
        assert a["doc_id"] == b["doc_id"] and a["prior"] == b["prior"]
    with pytest.raises(ConfigError, match="need as many distinct entities"):
        check_fits(cfg.data, dataclasses.replace(cfg.stress, load_facts=[17]))
    with pytest.raises(ConfigError, match="does not fit"):
        check_fits(cfg.data, dataclasses.replace(cfg.stress, update_gaps=[8]))  # 8 + 9 segments > 256 tokens
    with pytest.raises(DataError, match="stress split missing"):
        load_stress_split(tmp_path / "nowhere", "load_2")


class Oracle(torch.nn.Module):
    """Predicts the next token everywhere (right on every query)."""

    def forward(self, ids):
        return torch.nn.functional.one_hot(torch.roll(ids, -1, dims=1), 200).float()


def test_evaluation_scores_every_split_and_skips_what_full_cannot_read(stress_root, monkeypatch):
    from pipeline.stress.evaluate import evaluate_stress

    root, cfg = stress_root
    monkeypatch.chdir(root)
    out = evaluate_stress(cfg, "full", 0, model=Oracle(), root=root / "data_stress")
    pred = pd.read_parquet(out / "predictions.parquet")
    assert pred["correct"].all() and set(pred["split"]) == {"load_2", "load_8", "update_1", "update_3", "qualifier_1",
                                                            "qualifier_3"}
    assert (pred["prior"] >= 0).sum() == 20  # one restated entity in each of 5 documents x 2 gaps x 2 kinds
    assert sorted(pred.loc[pred["asks_later"] >= 0, "asks_later"]) == [0] * 6 + [1] * 4
    import json

    assert json.loads((out / "metrics.json").read_text())["skipped"] == ["length_320"]  # > full_max_length
    out = evaluate_stress(cfg, "window", 0, model=Oracle(), root=root / "data_stress")
    assert "length_320" in set(pd.read_parquet(out / "predictions.parquet")["split"])


def test_break_points_are_read_off_each_seed_and_censored_where_nothing_breaks():
    assert break_point({4: 0.99, 8: 0.95, 16: 0.7, 32: 0.93}, 0.9) == (8.0, "8")  # a later recovery does not count
    assert break_point({4: 0.99, 8: 0.95}, 0.9) == (8.0, ">=8")  # never broke: a lower bound
    assert break_point({4: 0.5, 8: 0.95}, 0.9) == (0.0, "<4")  # broke at the smallest load tested
    t = pd.DataFrame({"variant": ["cmr"] * 3, "F": [4, 8, 16], "s0": [1.0, 0.95, 0.5], "s1": [1.0, 0.5, 0.4]})
    bp = break_points(t, "F", 0.9, ReportConfig()).iloc[0]
    assert (bp["s0"], bp["s1"], bp["mean"]) == ("8", "4", 6.0) and bp["ci_low"] <= 6.0 <= bp["ci_high"]


def test_update_table_splits_right_earlier_and_neither():
    p = pd.DataFrame({"variant": "cmr", "seed": [0, 0, 0, 1], "task": "update", "length": 4,
                      "answer": [5, 5, 5, 5], "prior": [7, 7, 7, -1], "pred": [5, 7, 9, 7]})
    r = update_table(p).iloc[0]
    assert (r["right"], r["earlier"], r["neither"], r["n_queries"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3),
                                                                       pytest.approx(1 / 3), 3)


def test_qualifier_table_splits_right_other_neither_and_which_statement_was_asked():
    """A memory that answers the latest value whatever the speaker: right when the later speaker is named, the
    other value when the earlier one is."""
    p = pd.DataFrame({"variant": "cmr", "seed": [0, 0, 1, 1, 0], "task": "qualifier", "length": 4,
                      "answer": [5, 5, 5, 5, 5], "prior": [7, 7, 7, 7, -1], "asks_later": [0, 1, 0, 1, -1],
                      "pred": [7, 5, 7, 5, 9]})
    r = qualifier_table(p).iloc[0]
    assert (r["right"], r["other"], r["neither"], r["n_queries"]) == (0.5, 0.5, 0.0, 4)
    assert (r["right_asked_earlier"], r["right_asked_later"], r["right_s0"]) == (0.0, 1.0, 0.5)


@pytest.mark.parametrize("profile", sorted(p.stem for p in (CONF_DIR / "profile").glob("*.yaml")))
def test_every_profile_s_stress_documents_fit(profile):
    """A profile whose update gaps or loads do not fit its stress documents fails at `stress-data`, deep in a
    study: caught here instead (the ci profile did, when the later statement moved 8 segments before the queries)."""
    cfg = typed(compose([f"profile={profile}"]))
    check_fits(cfg.data, cfg.stress)


def test_a_state_size_is_resized_at_evaluation_only_where_no_weight_depends_on_it(stress_root, monkeypatch):
    """cmr's bank slots are a buffer: the same weights answer at 8 and 64 slots (task `state`, its floats on every
    row); rmt's memory tokens are a weight, so resizing them is refused, as is a key the memory does not have."""
    from pipeline.models import build_model
    from pipeline.stress.evaluate import evaluate_stress, resized_models

    root, cfg = stress_root
    cmr_cfg = {"name": "cmr", "capture_layers": [0], "reweave_layers": [0], "mode": "flat"}
    cfg = dataclasses.replace(cfg, models={**cfg.models, "cmr": cmr_cfg, "rmt": {"name": "rmt"}},
                              stress=dataclasses.replace(cfg.stress, state_sizes={"cmr": {"capacity": [8, 64]},
                                                                                  "rmt": {"mem_tokens": [2]}}))
    vocab = 200
    torch.manual_seed(0)
    cmr = build_model(cfg.backbone, cmr_cfg, vocab).eval()
    resized = resized_models(cfg, "cmr", cmr)
    assert [(k, v) for k, v, _ in resized] == [("capacity", 8), ("capacity", 64)]
    for _, v, m in resized:
        assert m.memory_floats() == cmr.memory_floats() * v // cmr.memory_cfg.capacity
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), cmr.state_dict().values()))
    rmt = build_model(cfg.backbone, {"name": "rmt"}, vocab)
    with pytest.raises(ConfigError, match="changes the shape of weights"):
        resized_models(cfg, "rmt", rmt)
    bad = dataclasses.replace(cfg, stress=dataclasses.replace(cfg.stress, state_sizes={"cmr": {"slots": [8]}}))
    with pytest.raises(ConfigError, match="not a setting of models.cmr"):
        resized_models(bad, "cmr", cmr)

    monkeypatch.chdir(root)
    pred = pd.read_parquet(evaluate_stress(cfg, "cmr", 0, model=cmr, root=root / "data_stress") / "predictions.parquet")
    state = pred[pred["task"] == "state"]
    assert set(state["split"]) == {"state_capacity_8", "state_capacity_64"} and (state["length"] == 8).all()
    assert len(state) == 2 * len(pred[pred["split"] == "load_8"])  # the largest load, read once per size
    assert dict(zip(state["split"], state["state_floats"])) == {
        "state_capacity_8": resized[0][2].memory_floats(), "state_capacity_64": resized[1][2].memory_floats()}
    assert (pred.loc[pred["task"] != "state", "state_floats"] == cmr.memory_floats()).all()


def test_state_table_puts_each_memory_as_trained_beside_its_resized_selves():
    from pipeline.report.stress import state_table

    rows = []
    for split, task, F, floats, correct in (("load_4", "load", 4, 100, 1), ("load_8", "load", 8, 100, 0),
                                            ("state_capacity_8", "state", 8, 50, 0),
                                            ("state_capacity_64", "state", 8, 400, 1)):
        for seed in (0, 1):
            for doc in range(3):
                rows.append({"variant": "cmr", "seed": seed, "split": split, "task": task, "length": F,
                             "doc_id": doc, "query_type": "far", "state_floats": floats, "correct": bool(correct)})
    t = state_table(pd.DataFrame(rows), ReportConfig())
    assert list(t["state_floats"]) == [50, 100, 400] and list(t["trained"]) == [False, True, False]
    assert list(t["setting"]) == ["capacity=8", "as trained", "capacity=64"] and (t["F"] == 8).all()
    assert list(t["accuracy"]) == [0.0, 0.0, 1.0] and list(t["s1"]) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("profile", sorted(p.stem for p in (CONF_DIR / "profile").glob("*.yaml")))
def test_every_profile_s_state_sizes_are_valid_memories(profile):
    """A state size the memory rejects (cmr: fewer slots than it writes per segment) would fail the stress stage
    after the trainings: checked here for every variant of every profile."""
    from pipeline.models.registry import backbone_config, check_model, memory_config

    cfg = typed(compose([f"profile={profile}"]))
    backbone = backbone_config(cfg.backbone)
    for variant in cfg.study.variants:
        mem = memory_config(cfg.models[variant])
        for key, values in (cfg.stress.state_sizes.get(variant) or {}).items():
            for value in values:
                check_model(backbone, dataclasses.replace(mem, **{key: int(value)}))


def test_break_points_read_as_counts_in_the_headline_table():
    """Capacity and effective length are counts: a mean over seeds shows one decimal below 100, none above, and
    whole numbers as they are (the table once read '2.66667 [0, 8]' and '1166.67 [0, 2500]')."""
    from pipeline.report.stress import _with_ci

    assert _with_ci({"mean": 8 / 3, "ci_low": 0.0, "ci_high": 8.0, "s0": 8, "s1": "<4", "s2": "<4"}) == \
        "2.7 [0, 8] (8, <4, <4)"
    assert _with_ci({"mean": 3500 / 3, "ci_low": 0.0, "ci_high": 2500.0, "s0": 2500, "s1": 1000, "s2": "<500"}) == \
        "1167 [0, 2500] (2500, 1000, <500)"
    assert _with_ci({"mean": 16.0, "ci_low": 16.0, "ci_high": 16.0, "s0": 16}) == "16 (16)"
    assert _with_ci({}) == "n/a"
