"""Attention allocation: the metric functions on hand-built attention maps, one document's rows on
hand-built diagnostics, tiny untrained models of every variant through evaluate_attention, the
report helpers, the config checks and the CLI's error on a missing run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf

from pipeline.errors import ConfigError, DataError
from pipeline.evaluate import attention as att
from pipeline.config.checks import check_eval
from pipeline.config.schema import EvalConfig

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
V = 30       # vocabulary of the tiny models
W = 8        # their window
TEMPLATE = "is {E} {V} ."  # offsets -2..1 around the value


# ------------------------------------------------------------------------------------ pure metrics
def test_uniform_attention_has_entropy_log_n_and_one_hot_has_zero():
    uniform = torch.full((3, 2, 5), 0.2)  # [Q, H, K]
    assert torch.allclose(att.entropy(uniform), torch.full((3,), math.log(5)))
    one_hot = torch.zeros(3, 2, 5)
    one_hot[..., 3] = 1.0
    assert torch.allclose(att.entropy(one_hot), torch.zeros(3))
    cols = torch.zeros(3, 5, dtype=torch.bool)
    cols[:, 3] = True
    assert torch.allclose(att.column_mass(one_hot, cols), torch.ones(3))
    cols[:, 3], cols[:, 0] = False, True
    assert torch.allclose(att.column_mass(one_hot, cols), torch.zeros(3))


def test_entropy_is_averaged_over_heads_and_ignores_masked_columns():
    p = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])  # [1, H=2, K=4]
    assert att.entropy(p).item() == pytest.approx(math.log(2) / 2)
    leak = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.5, 0.25, 0.25, 0.0]]])
    valid = torch.tensor([[True, True, False, False]])  # column 2 is hidden: it must not count
    want = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25))
    assert att.entropy(leak, valid).item() == pytest.approx(want)
    assert att.column_mass(leak, torch.tensor([[True, False, True, False]])).item() == pytest.approx(0.75)


def test_position_columns_and_visibility():
    key_pos = torch.tensor([[-1, 3, 4, 5, 6]])
    facts = torch.tensor([[4, 6, -1]])
    assert att.position_columns(key_pos, facts).tolist() == [[False, False, True, False, True]]
    assert att.visible_columns(key_pos, torch.tensor([5])).tolist() == [[False, True, True, True, False]]


def test_cmr_slot_mass_and_gate():
    probs = torch.tensor([[[0.7, 0.2, 0.1, 0.0], [0.1, 0.2, 0.7, 0.0]]])  # [Q=1, H=2, n=4]
    slot_pos = torch.tensor([[10, 11, 40, -1]])  # last slot empty
    fact_slots = att.position_columns(slot_pos, torch.tensor([[10, 11]]))
    assert att.column_mass(probs, fact_slots).item() == pytest.approx((0.9 + 0.3) / 2)
    gate = torch.tensor([0.3])
    assert att.memory_gate_mass(gate, slot_pos).item() == pytest.approx(0.3)
    assert att.memory_gate_mass(gate, torch.full((1, 4), -1)).item() == 0.0  # empty bank: nothing read


def test_fact_offsets_cover_the_whole_fact():
    assert att.fact_offsets("is {E} {V} .") == [-2, -1, 0, 1]
    assert att.fact_offsets("{E} is {V}") == [-2, -1, 0]
    with pytest.raises(ConfigError, match="no {V}"):
        att.fact_offsets("{E} is")


def test_document_rows_on_hand_built_diagnostics():
    """One query at 20 (fact value at 5, so the fact spans 3..6); xl-like layer 0 with 2 cache
    columns, cmr-like layer 1 with slots."""
    N, H, Tk = 24, 2, 6
    key_pos = torch.full((N, Tk), -1)
    key_pos[20] = torch.tensor([5, 6, 16, 17, 20, 21])  # cols 0-1: cache holding the fact's tail
    self0 = torch.zeros(1, N, H, Tk)
    self0[0, 20, :, 0] = 0.5   # value token (cache)
    self0[0, 20, :, 2] = 0.5
    self1 = torch.zeros(1, N, H, Tk)
    self1[0, 20, :, 4] = 1.0   # itself
    slot_pos = torch.full((1, N, 3), -1)
    slot_pos[0, 20] = torch.tensor([6, 12, -1])
    mem = torch.zeros(1, N, H, 3)
    mem[0, 20, 0] = torch.tensor([1.0, 0.0, 0.0])
    mem[0, 20, 1] = torch.tensor([0.0, 1.0, 0.0])
    layers = [
        {"self": self0, "key_pos": key_pos, "memory_columns": 2},
        {"self": self1, "key_pos": key_pos, "memory_columns": 0, "memory": mem, "slot_pos": slot_pos,
         "gate": torch.full((1, N), 0.25)},
    ]
    logits = torch.zeros(1, N, V)
    logits[0, 20, 7] = 1.0
    rows = att.document_rows(layers, logits, query_pos=[20], fact_pos=[5], answers=[7],
                             offsets=att.fact_offsets(TEMPLATE), window=8, all_fact_pos=[5, 11])
    r0, r1 = rows
    assert r0["layer"] == 0 and r0["correct"] and r0["distance"] == 15 and r0["distance_segments"] == 2
    assert r0["n_visible"] == 5  # 21 lies after the query
    assert r0["mass_fact"] == pytest.approx(0.5) and r0["fact_visible"]
    assert r0["mass_memory"] == pytest.approx(0.5)  # xl: the cache columns' share
    assert r0["entropy"] == pytest.approx(math.log(2))
    assert r0["entropy_norm"] == pytest.approx(math.log(2) / math.log(5))
    assert math.isnan(r0["mass_fact_slots"]) and r0["n_slots"] == 0
    assert r1["entropy"] == 0.0 and r1["mass_fact"] == 0.0 and r1["mass_memory"] == pytest.approx(0.25)
    assert r1["n_slots"] == 2 and r1["fact_in_memory"]
    assert r1["mass_fact_slots"] == pytest.approx(0.5)       # head 0 on the fact's slot (pos 6)
    assert r1["mass_any_fact_slots"] == pytest.approx(1.0)   # head 1 on fact 11's slot (pos 12 = 11 + 1)
    assert r1["entropy_memory"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------ the stage
def make_recall_docs(length, n_docs, seed=0, n_facts=3):
    """Random ids with n_facts facts (value at fact_pos) in the first half, queries at the end."""
    g = torch.Generator().manual_seed(seed * 100 + length)
    rows = {k: [] for k in ["doc_id", "task", "input_ids", "query_pos", "answers", "query_type", "fact_pos",
                            "distance", "n_turns"]}
    for i in range(n_docs):
        ids = torch.randint(0, V, (length,), generator=g).tolist()
        fpos = [3 + 4 * j for j in range(n_facts)]
        qpos = [length - 2 - 2 * j for j in range(n_facts)]
        rows["doc_id"].append(f"d{length}-{i}")
        rows["task"].append("recall")
        rows["input_ids"].append(ids)
        rows["query_pos"].append(qpos)
        rows["answers"].append([ids[q + 1] for q in qpos])
        rows["query_type"].append(["far" if f // W < q // W else "local" for f, q in zip(fpos, qpos)])
        rows["fact_pos"].append(fpos)
        rows["distance"].append([q - f for q, f in zip(qpos, fpos)])
        rows["n_turns"].append(0)
    return Dataset.from_dict(rows)


def loader(data_dir, name, max_docs=None):
    length = int(name.split("_")[1])
    return make_recall_docs(length, max_docs or 3)


BACKBONE = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "window": W, "positions": "rotary",
            "max_positions": 64, "dropout": 0.0}
MODELS = {"window": {"name": "window"}, "xl": {"name": "xl", "mem_len": 4}, "full": {"name": "full"},
          "cmr": {"name": "cmr", "k": 2, "capacity": 4, "gate_bias": 0.0}}


def tiny_model(variant):
    from pipeline.models import build_model

    torch.manual_seed(0)
    return build_model(BACKBONE, MODELS[variant], V)


def stage_cfg(tmp_path, max_queries=None):
    ev = OmegaConf.structured(EvalConfig)
    ev.attention.lengths = [20, 36]
    ev.attention.n_docs = 2
    ev.attention.max_queries = max_queries
    return OmegaConf.create({
        "paths": {"data_dir": str(tmp_path / "data"), "experiments_dir": str(tmp_path / "experiments")},
        "models": MODELS, "backbone": BACKBONE,
        "data": {"eval_lengths": [20, 36], "fact_template": TEMPLATE},
        "eval": ev,
    })


@pytest.mark.parametrize("variant", ["window", "xl", "full", "cmr"])
def test_every_variant_writes_rows_in_range(tmp_path, variant):
    cfg = stage_cfg(tmp_path)
    out = att.evaluate_attention(cfg, variant, 0, model=tiny_model(variant), loader=loader)
    assert out == tmp_path / "experiments" / "attention" / variant / "s0"
    df = pd.read_parquet(out / "attention.parquet")
    assert list(df.columns) == att.COLUMNS
    assert len(df) == 2 * 2 * 3 * 2  # lengths x docs x queries x layers
    assert set(df["layer"]) == {0, 1} and set(df["length"]) == {20, 36} and (df["variant"] == variant).all()
    assert ((df["entropy"] >= -1e-6) & (df["entropy"] <= np.log(df["n_visible"]) + 1e-5)).all()
    for m in ("entropy_norm", "mass_fact", "mass_any_fact"):
        assert df[m].between(-1e-6, 1 + 1e-6).all(), m
    assert (df["mass_fact"] <= df["mass_any_fact"] + 1e-6).all()
    # the fact can be seen exactly when it shares the query's columns
    far = df["query_type"] == "far"
    if variant == "full":
        assert df["fact_visible"].all() and df["mass_memory"].isna().all()
    elif variant in ("window", "cmr"):
        assert not df.loc[far, "fact_visible"].any() and (df.loc[far, "mass_fact"] == 0).all()
    if variant == "xl":
        assert df["mass_memory"].between(0, 1 + 1e-6).all()
    if variant == "window":
        assert df["mass_memory"].isna().all() and df["mass_fact_slots"].isna().all()
    if variant == "cmr":
        l0, l1 = df[df["layer"] == 0], df[df["layer"] == 1]
        assert l0["mass_memory"].isna().all() and l0["mass_fact_slots"].isna().all()
        assert l1["mass_memory"].between(0, 1).all() and (l1["mass_memory"] > 0).all()  # queries sit past segment 0
        assert l1["mass_fact_slots"].between(0, 1 + 1e-6).all() and (l1["n_slots"] > 0).all()
        assert (l1["entropy_memory"] <= np.log(l1["n_slots"]) + 1e-5).all()
    else:
        assert (df["n_slots"] == 0).all() and not df["fact_in_memory"].any()
    summary = (out / "summary.json").read_text()
    assert '"layers"' in summary and "NaN" not in summary


def test_distance_segments_and_max_queries(tmp_path):
    cfg = stage_cfg(tmp_path, max_queries=2)
    out = att.evaluate_attention(cfg, "window", 1, model=tiny_model("window"), loader=loader)
    df = pd.read_parquet(out / "attention.parquet")
    assert set(df["query_idx"]) == {0, 1} and len(df) == 2 * 2 * 2 * 2 and (df["seed"] == 1).all()
    docs = make_recall_docs(36, 1)
    q, f = docs[0]["query_pos"][0], docs[0]["fact_pos"][0]
    row = df[(df["length"] == 36) & (df["query_idx"] == 0)].iloc[0]
    assert row["distance"] == q - f and row["distance_segments"] == q // W - f // W


def test_only_finished_runs_are_read(tmp_path):
    """The attention stage reads what evaluate reads: a finished run's best.ckpt (never a last.ckpt left
    by a run that was killed or diverged)."""
    cfg = stage_cfg(tmp_path)
    with pytest.raises(DataError, match=r"does not exist.*pipeline\.train --variant window --seed 0"):
        att.evaluate_attention(cfg, "window", 0, loader=loader)
    run = tmp_path / "experiments" / "train" / "window" / "s0"
    (run / "checkpoints").mkdir(parents=True)
    model = tiny_model("window")
    hp = {"cfg": {"backbone": BACKBONE, "models": MODELS}, "variant": "window", "seed": 0, "vocab_size": V}
    ckpt = {"hyper_parameters": hp, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    with pytest.raises(DataError, match="no best.ckpt"):
        att.evaluate_attention(cfg, "window", 0, loader=loader)
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    with pytest.raises(DataError, match="metrics.json missing or unreadable.*did not finish"):
        att.evaluate_attention(cfg, "window", 0, loader=loader)
    (run / "metrics.json").write_text(json.dumps({"steps": 40, "config": {"max_steps": 100}}))
    with pytest.raises(DataError, match="stopped at step 40 of 100"):
        att.evaluate_attention(cfg, "window", 0, loader=loader)
    (run / "metrics.json").write_text(json.dumps({"steps": 100, "config": {"max_steps": 100}}))
    out = att.evaluate_attention(cfg, "window", 0, loader=loader)
    assert len(pd.read_parquet(out / "attention.parquet")) == 2 * 2 * 3 * 2  # lengths x docs x queries x layers
    assert not (tmp_path / "experiments" / "attention" / "cmr").exists()


def test_cli_reports_a_missing_run(tmp_path, capsys):
    code = att.main(["--variant", "cmr", "--seeds", "0", "--params", str(REPO / "params.yaml"),
                     f"paths.experiments_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no trained model for cmr seed 0" in err and str(tmp_path) in err
    assert att.main(["--variant", "cmr", "--params", str(tmp_path / "nope.yaml")]) == 2


# ------------------------------------------------------------------------------------ report helpers
def hand_rows():
    rows = []
    for variant, ent in (("window", 0.2), ("cmr", 0.6)):
        for doc in range(3):
            for q in range(2):
                for layer in (0, 1):
                    rows.append({c: np.nan for c in att.METRICS} | {
                        "variant": variant, "seed": 0, "length": 20, "doc_id": f"d{doc}", "query_idx": q,
                        "layer": layer, "entropy": ent + 0.1 * doc, "mass_fact": 0.5,
                        "mass_memory": 0.3 if variant == "cmr" and layer == 1 else np.nan})
    return pd.DataFrame(rows)


def test_attention_table_means_cis_and_counts(tmp_path):
    df = hand_rows()
    t = att.attention_table(df, n_resamples=200)
    assert list(t["variant"]) == ["window", "window", "cmr", "cmr"]  # the study's order
    assert (t["n_docs"] == 3).all() and (t["n_queries"] == 6).all() and (t["n_seeds"] == 1).all()
    w0 = t[(t["variant"] == "window") & (t["layer"] == 0)].iloc[0]
    assert w0["entropy_mean"] == pytest.approx(0.3) and w0["entropy_low"] <= 0.3 <= w0["entropy_high"]
    assert w0["mass_fact_mean"] == 0.5 and math.isnan(w0["mass_memory_mean"])
    c1 = t[(t["variant"] == "cmr") & (t["layer"] == 1)].iloc[0]
    assert c1["mass_memory_mean"] == pytest.approx(0.3)
    # load_attention concatenates run folders; plot_attention writes a PNG
    for v, part in df.groupby("variant"):
        d = tmp_path / v / "s0"
        d.mkdir(parents=True)
        part.to_parquet(d / "attention.parquet")
    both = att.load_attention([tmp_path / "window" / "s0", tmp_path / "cmr" / "s0" / "attention.parquet"])
    assert len(both) == len(df)
    png = att.plot_attention(both, tmp_path / "fig" / "attention.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="no attention results"):
        att.load_attention([tmp_path / "xl" / "s0"])


# ------------------------------------------------------------------------------------ config
def test_attention_config_is_checked():
    def full(**kw):
        ev = OmegaConf.structured(EvalConfig)
        for k, v in kw.items():
            ev.attention[k] = v
        return OmegaConf.create({"data": {"rare_counts": [10], "eval_lengths": [500, 1000, 2500]}, "eval": ev})

    check_eval(full())
    with pytest.raises(ConfigError, match=r"eval.attention.lengths: \[700\] not in data.eval_lengths"):
        check_eval(full(lengths=[500, 700]))
    with pytest.raises(ConfigError, match="attention.n_docs"):
        check_eval(full(n_docs=0))
    with pytest.raises(ConfigError, match="attention.max_queries"):
        check_eval(full(max_queries=0))
    with pytest.raises(ConfigError, match="at least one"):
        check_eval(full(lengths=[]))


def test_captured_and_top_slot_flags_on_hand_built_inputs():
    # two queries in segment 2 (W=16: positions 32..47); fact 0's value at 5 (tokens 3..6), fact 1's at 20
    q = torch.tensor([40, 44])
    value = torch.tensor([5, 20])
    facts = value[:, None] + torch.tensor([-2, -1, 0, 1])[None, :]
    cap_v, cap_any = att.captured_flags(torch.tensor([5, 19, 36]), q, facts, value, window=16)
    assert cap_v.tolist() == [True, False] and cap_any.tolist() == [True, True]  # 19 is fact 1's entity
    cap_v, _ = att.captured_flags(torch.tensor([41]), torch.tensor([40]), facts[:1] + 36, value[:1] + 36, 16)
    assert cap_v.tolist() == [False]  # a capture of the query's own segment cannot be read by it
    none_v, none_any = att.captured_flags(None, q, facts, value, 16)
    assert not none_v.any() and not none_any.any()
    slot_pos = torch.tensor([[5, 20, -1], [5, 20, -1]])
    probs = torch.tensor([[[0.7, 0.3, 0.0]], [[0.6, 0.4, 0.0]]])  # [Q, H=1, n]: both read slot 0 most
    assert att.top_slot_flags(probs, slot_pos, facts).tolist() == [True, False]
    empty = torch.full((2, 3), -1)
    assert att.top_slot_flags(probs, empty, facts).tolist() == [False, False]


def test_cmr_rows_record_the_memory_funnel(tmp_path):
    cfg = stage_cfg(tmp_path)
    out = att.evaluate_attention(cfg, "cmr", 0, model=tiny_model("cmr"), loader=loader)
    df = pd.read_parquet(out / "attention.parquet")
    l1 = df[df["layer"] == 1]
    # each stage implies the one before it: retained => captured, value retained => value captured
    assert (l1["captured_any"] | ~l1["fact_in_memory"]).all() and (l1["captured_value"] | ~l1["value_in_memory"]).all()
    assert (l1["fact_in_memory"] | ~l1["value_in_memory"]).all() and (l1["captured_any"] | ~l1["captured_value"]).all()
    assert (l1["fact_in_memory"] | ~l1["top_slot_on_fact"]).all()  # the read can only find what is there
    from pipeline.report.memory import STAGES, far_queries, funnel

    fq = far_queries(df)
    assert set(fq["lost_at"]) <= set(STAGES) and len(fq) == (df[df["layer"] == 1]["query_type"] == "far").sum()
    t = funnel(fq, "length")
    shares = t[[c for c in t if c.startswith("lost_")] + ["answered"]].sum(axis=1)
    assert np.allclose(shares, 1.0) and (t["n"] > 0).all()
    for variant in ("window", "xl", "full"):
        other = att.evaluate_attention(cfg, variant, 0, model=tiny_model(variant), loader=loader)
        o = pd.read_parquet(other / "attention.parquet")
        assert not o[["captured_value", "captured_any", "value_in_memory", "top_slot_on_fact"]].any().any()
