"""Data component: determinism, exact rare counts, query/answer alignment, layouts, disjointness,
clear errors for missing/corrupt splits and bad configs, and the hf/local filler sources."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import DataConfig, load_split, load_tokenizer, load_train_counts
from pipeline.data.prepare import build_all, prepare
from pipeline.data.build import check_disjoint
from pipeline.data.documents import check_data as validate
from pipeline.errors import ConfigError, DataError

TINY = DataConfig(
    n_train_docs=300, n_val_docs=20, eval_lengths=[64, 128], n_eval_docs=4, rare_eval_length=64,
    n_rare_docs=10, dialogue_turns=[2, 3], dialogue_turn_len=24, rare_counts=[2, 4, 10],
    rare_tokens_per_class=2, n_eval_facts=4, n_eval_num_vars=4, filler_vocab_size=64, verify_docs=8,
    val_long_lengths=[64, 96], n_val_long_docs=5, max_number=99, train_max_segments=4, n_train_long_docs=0,
    train_long_segments=16, n_far_facts=2, train_mix={"recall": 0.7, "numeric": 0.15, "dialogue": 0.15},
)
EVAL_SPLITS = ["recall_64", "recall_128", "numeric_64", "numeric_128", "rare", "dialogue_2", "dialogue_3"]


def tiny(**kw) -> DataConfig:
    return dataclasses.replace(TINY, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "data"
    prepare(tiny(), out, quiet=True)
    return out


def test_same_seed_same_splits_different_seed_differs():
    _, _, a = build_all(tiny())
    _, _, b = build_all(tiny())
    assert {k: v["hash"] for k, v in a.items()} == {k: v["hash"] for k, v in b.items()}
    _, _, c = build_all(tiny(train_seed=5))
    assert c["train"]["hash"] != a["train"]["hash"]
    assert c["recall_64"]["hash"] == a["recall_64"]["hash"]  # eval docs depend on eval_seed only
    _, _, d = build_all(tiny(eval_seed=7))
    assert d["recall_64"]["hash"] != a["recall_64"]["hash"]


def test_written_files_and_manifest(data_dir):
    for f in ["tokenizer.json", "manifest.json", "train_counts.json"]:
        assert (data_dir / f).is_file()
    m = json.loads((data_dir / "manifest.json").read_text())
    assert set(m["splits"]) == {"train", "val", "val_long", *EVAL_SPLITS}
    assert m["disjointness"]["ok"] is True
    assert m["generator"]["train_seed"] == 0 and m["filler_source"].startswith("synthetic")
    for name, s in m["splits"].items():
        assert s["docs"] == len(load_split(data_dir, name))


def test_rare_classes_have_exactly_configured_counts(data_dir):
    counts = load_train_counts(data_dir)
    m = json.loads((data_dir / "manifest.json").read_text())
    assert [c["count"] for c in m["rare_classes"]] == TINY.rare_counts
    for want, ids in ((c["count"], c["ids"]) for c in m["rare_classes"]):
        assert len(ids) == TINY.rare_tokens_per_class
        assert [counts.get(i, 0) for i in ids] == [int(want)] * len(ids)
    # and recount from the saved split, independently of train_counts.json
    flat = np.concatenate([np.asarray(x) for x in load_split(data_dir, "train")["input_ids"]])
    for c in m["rare_classes"]:
        assert [int((flat == i).sum()) for i in c["ids"]] == [c["count"]] * len(c["ids"])


def test_answers_single_tokens_and_aligned(data_dir):
    tok = load_tokenizer(data_dir)
    vocab = tok.get_vocab()
    inv = {i: w for w, i in vocab.items()}
    for name in ["train", "val", *EVAL_SPLITS]:
        ds = load_split(data_dir, name)
        for row in ds:
            ids = row["input_ids"]
            assert len(row["query_pos"]) == len(row["answers"]) == len(row["fact_pos"]) == len(row["distance"]) > 0
            for q, a in zip(row["query_pos"], row["answers"]):
                assert ids[q + 1] == a
                assert tok.encode(inv[a]).ids == [a]
        # the whole doc round-trips through the tokenizer
        row = ds[0]
        assert tok.encode(" ".join(inv[i] for i in row["input_ids"])).ids == row["input_ids"]


def test_fact_positions_and_distances(data_dir):
    numbers = {load_tokenizer(data_dir).token_to_id(str(k)) for k in range(TINY.max_number + 1)}
    for name in ["train", "val_long", *EVAL_SPLITS]:
        for row in load_split(data_dir, name):
            ids = row["input_ids"]
            for q, a, f, d, t in zip(row["query_pos"], row["answers"], row["fact_pos"], row["distance"], row["query_type"]):
                assert d == q - f and d > 0
                if t == "numeric":
                    assert ids[f] in numbers  # the earlier of the two summands
                else:
                    assert ids[f] == a  # the stated value is the answer
                if t in ("far", "local"):
                    W = TINY.segment_len
                    assert (t == "far") == (f // W < q // W)


def test_train_docs_exact_lengths_and_segment_layout(data_dir):
    W = TINY.segment_len
    qlen = len(TINY.query_template.split())
    for name in ["train", "val"]:
        ds = load_split(data_dir, name)
        assert set(ds["task"]) == {"train"}
        segs = set()
        for row in ds:
            S = row["n_segments"]
            segs.add(S)
            assert TINY.train_min_segments <= S <= TINY.train_max_segments
            assert len(row["input_ids"]) == S * W
            local_segs = set()
            for q, t, f in zip(row["query_pos"], row["query_type"], row["fact_pos"]):
                start = q - (qlen - 1) if t != "numeric" else q - (len(TINY.num_query_template.split()) - 1)
                assert start // W == (q + 1) // W  # never straddles a segment boundary
                if t == "local" or (t == "numeric" and f // W == q // W):  # numeric docs: local sum triples
                    local_segs.add(q // W)
                if t == "far":
                    assert q // W == S - 1  # far queries sit in the last segment
            assert set(range(S - 1)) <= local_segs  # a local pair in every early segment (the last: where room)
        assert segs == set(range(TINY.train_min_segments, TINY.train_max_segments + 1))


def test_eval_splits_layout(data_dir):
    for n in TINY.eval_lengths:
        for kind in ("recall", "numeric"):
            ds = load_split(data_dir, f"{kind}_{n}")
            assert all(len(x) == n for x in ds["input_ids"]) and set(ds["task"]) == {kind}
            for row in ds:  # queries are at the very end
                assert max(row["query_pos"]) + 1 == n - 1  # the last answer is the last token
    rare = load_split(data_dir, "rare")
    m = json.loads((data_dir / "manifest.json").read_text())
    cls = {i: c["count"] for c in m["rare_classes"] for i in c["ids"]}
    got = [cls[a] for ans in rare["answers"] for a in ans]
    assert len(got) == TINY.n_rare_docs * TINY.n_eval_facts
    per = {c: got.count(c) for c in TINY.rare_counts}
    assert max(per.values()) - min(per.values()) <= 1  # balanced across classes
    L = TINY.dialogue_turn_len
    for T in TINY.dialogue_turns:
        for row in load_split(data_dir, f"dialogue_{T}"):
            assert row["n_turns"] == T and len(row["input_ids"]) == T * L
            assert all(q // L == T - 1 for q in row["query_pos"])  # asked in the last turn
            assert all(f // L < T - 1 for f in row["fact_pos"])  # stated in earlier turns
            assert set(row["query_type"]) == {"dialogue"}


def test_disjointness_and_planted_duplicate(data_dir):
    train = set(load_split(data_dir, "train")["doc_id"])
    for name in ["val", "val_long", *EVAL_SPLITS]:
        assert not train & set(load_split(data_dir, name)["doc_id"])
    val_long = set(load_split(data_dir, "val_long")["doc_id"])
    for name in EVAL_SPLITS:
        assert not val_long & set(load_split(data_dir, name)["doc_id"])
    check_disjoint(["a", "b"], {"recall_64": ["c"]})
    with pytest.raises(DataError, match="recall_64.*also in train"):
        check_disjoint(["a", "b"], {"val": ["x"], "recall_64": ["c", "b"]})
    with pytest.raises(DataError, match="recall_64.*also in val_long"):  # checkpoints are selected on val_long
        check_disjoint(["a"], {"val_long": ["x", "y"], "recall_64": ["c", "y"]})
    with pytest.raises(DataError, match="val_long.*also in train"):
        check_disjoint(["a"], {"val_long": ["a"]})


def test_val_long_is_evaluation_like_from_the_training_seed_family():
    _, _, a = build_all(tiny())
    _, _, b = build_all(tiny(train_seed=5))
    _, _, c = build_all(tiny(eval_seed=7))
    assert b["val_long"]["hash"] != a["val_long"]["hash"] and c["val_long"]["hash"] == a["val_long"]["hash"]
    splits, _, stats = build_all(tiny())
    lengths = sorted({len(x) for x in splits["val_long"]["input_ids"]})
    assert lengths == TINY.val_long_lengths and stats["val_long"]["docs"] == 2 * TINY.n_val_long_docs
    assert stats["val_long"]["query_types"].get("far", 0) > 0
    for ids, qp in zip(splits["val_long"]["input_ids"], splits["val_long"]["query_pos"]):
        assert max(qp) + 2 == len(ids)  # queries back to back at the end, like the evaluation documents


def test_longer_training_documents_hold_more_far_facts():
    splits, _, _ = build_all(tiny(n_far_facts=4, train_max_segments=4, train_mix={"recall": 1.0}))
    far = {}
    for n, qt in zip(splits["train"]["n_segments"], splits["train"]["query_type"]):
        far.setdefault(n, set()).add(sum(t == "far" for t in qt))
    # a 2-segment doc has room for 2 far facts beside its local pair; 3+ segments hold all 4
    assert far == {2: {2}, 3: {4}, 4: {4}}


def test_long_pool_is_appended_with_common_values_and_leaves_the_short_pool_alone():
    from pipeline.data.build import make_source

    cfg = tiny(n_train_long_docs=12, train_long_segments=8)
    splits, _, stats = build_all(cfg)
    base, _, base_stats = build_all(tiny())
    n = TINY.n_train_docs
    short = {c: v[:n] for c, v in splits["train"].items()}
    assert short["doc_id"] == base["train"]["doc_id"] and stats["val"]["hash"] == base_stats["val"]["hash"]
    assert splits["train"]["n_segments"][n:] == [8] * 12
    assert all(len(x) == 8 * TINY.segment_len for x in splits["train"]["input_ids"][n:])
    rare = {int(i) for ids in make_source(cfg).vocab.rare_class_ids for i in ids}
    long_answers = {a for ans in splits["train"]["answers"][n:] for a in ans}
    assert long_answers and not long_answers & rare  # the rare plan is the short pool's alone
    far = [sum(t == "far" for t in qt) for qt in splits["train"]["query_type"][n:]]
    assert max(far) > 0  # recall documents ask far facts (dialogue ones ask theirs by speaker)


def test_curriculum_reaches_the_long_pool_only_when_it_allows_its_length():
    from pipeline.data.loader import CurriculumBatchSampler

    segs = np.array([2, 3, 2, 3, 16, 16])
    s = CurriculumBatchSampler(segs * 16, segs, 4, [{"until_step": 10, "max_segments": 3},
                                                    {"until_step": None, "max_segments": 16}], seed=0)
    assert all(max(segs[s.batch_at(t)]) <= 3 for t in range(10))
    assert any(set(segs[s.batch_at(t)]) == {16} for t in range(10, 60))


def test_document_set_holds_each_row_and_names_the_first_bad_document(data_dir):
    """DocumentSet reads whole columns at once: each document must still come back as its own row, and a
    bad row is named by its index (the checks run on all rows together)."""
    import datasets
    import torch

    from pipeline.data.loader import TYPE_INDEX, DocumentSet

    ds = load_split(data_dir, "train").select([5, 0, 17])  # an index mapping: rows out of storage order
    docs = DocumentSet(ds, TINY.segment_len, "train")
    for i, row in enumerate(ds):
        assert torch.equal(docs.ids[i], torch.tensor(row["input_ids"]))
        assert torch.equal(docs.qpos[i], torch.tensor(row["query_pos"]))
        assert torch.equal(docs.answers[i], torch.tensor(row["answers"]))
        assert docs.qtype[i].tolist() == [TYPE_INDEX[t] for t in row["query_type"]]
        assert docs.lengths[i] == len(row["input_ids"]) and docs.n_segments[i] == row["n_segments"]

    good = {"input_ids": [1, 2, 3, 4], "query_pos": [1], "answers": [3], "query_type": ["far"]}
    for bad, message in [({"answers": [3, 4]}, "lengths differ"), ({"query_type": ["zzz"]}, "unknown query_type"),
                         ({"answers": [2]}, r"input_ids\[query_pos \+ 1\] != answers"),
                         ({"query_pos": [3]}, "!= answers"), ({"query_pos": [-1]}, "!= answers")]:
        rows = [good, {**good, **bad}]
        table = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in good})
        with pytest.raises(DataError, match=f"split 'x' doc 1: .*{message}"):
            DocumentSet(table, 2, "x")


def test_no_fact_straddles_a_segment_boundary(data_dir):
    """A value whose entity sits in the previous segment could not be bound to it by anything that reads
    segment by segment, so every fact of every split lies inside one segment (as in training documents)."""
    W = TINY.segment_len
    span = {"numeric": len(TINY.num_fact_template.split())}
    words = TINY.fact_template.split()
    v_off = words.index("{V}")
    for name in ["train", "val", "val_long", *EVAL_SPLITS]:
        for row in load_split(data_dir, name):
            for f, t in zip(row["fact_pos"], row["query_type"]):
                if t == "numeric":
                    first, last = f - 2, f + 1  # 'is {X} {N} .': the earlier summand's fact
                else:
                    first, last = f - v_off, f + len(words) - 1 - v_off
                assert first // W == last // W, (name, f, t, span)


def test_first_segment_layout_puts_every_fact_in_segment_zero():
    cfg = tiny(eval_facts="first_segment", fact_template="{E} {V}", query_template="{E}")
    splits, _, _ = build_all(cfg)
    W = cfg.segment_len
    for n in cfg.eval_lengths:
        cols = splits[f"recall_{n}"]
        for fp, qp, ids in zip(cols["fact_pos"], cols["query_pos"], cols["input_ids"]):
            assert all(f < W for f in fp) and all(q // W == (len(ids) - 1) // W for q in qp)
    with pytest.raises(ConfigError, match="eval_facts=first_segment"):
        validate(tiny(eval_facts="first_segment", n_eval_facts=5))  # 5 x 4 tokens do not fit 16
    with pytest.raises(ConfigError, match="data.eval_facts.*spread, first_segment"):
        validate(tiny(eval_facts="middle"))


def test_missing_and_corrupt_splits(data_dir, tmp_path):
    with pytest.raises(DataError, match="split 'nope' missing"):
        load_split(data_dir, "nope")
    with pytest.raises(DataError, match="missing"):
        load_split(tmp_path / "nowhere", "train")
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    arrow = next((bad / "splits" / "recall_64").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(DataError, match=r"recall_64.*corrupt"):
        load_split(bad, "recall_64")
    (bad / "splits" / "train" / "state.json").unlink()
    with pytest.raises(DataError, match=r"train.*corrupt"):
        load_split(bad, "train")
    # a tampered manifest hash is caught
    m = json.loads((bad / "manifest.json").read_text())
    m["splits"]["val"]["hash"] = "0" * 40
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="content hash"):
        load_split(bad, "val")
    with pytest.raises(DataError, match="train counts missing"):
        load_train_counts(tmp_path)


LOCAL_TEXT = ("the river runs past the old mill and the miller sings a song of grain\n"
              "a quiet village wakes when the baker opens the door to the morning light\n") * 20


@pytest.mark.parametrize("fmt", ["text", "json", "parquet"])
def test_local_filler(tmp_path, fmt):
    import pandas as pd

    lines = [ln for ln in LOCAL_TEXT.splitlines() if ln]
    if fmt == "text":
        path = tmp_path / "c.txt"
        path.write_text(LOCAL_TEXT)
    elif fmt == "json":
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"body": ln}) + "\n" for ln in lines))
    else:
        path = tmp_path / "c.parquet"
        pd.DataFrame({"body": lines}).to_parquet(path)
    cfg = tiny(filler="local", local_files=[str(path)], text_column="text" if fmt == "text" else "body",
               n_train_docs=200, rare_counts=[2, 4], dialogue_turns=[2], eval_lengths=[64])
    m = prepare(cfg, tmp_path / "data", quiet=True)
    assert m["filler_source"].startswith(f"local:{fmt}")
    tok = load_tokenizer(tmp_path / "data")
    words = set(tok.get_vocab())
    assert {"river", "miller", "village", "the"} <= words
    row = load_split(tmp_path / "data", "recall_64")[0]
    text = tok.decode(row["input_ids"])
    assert sum(w in LOCAL_TEXT.split() for w in text.split()) > 20  # filler comes from the corpus
    with pytest.raises(ConfigError, match="data.text_column"):
        prepare(dataclasses.replace(cfg, text_column="nope"), tmp_path / "d2", quiet=True)


def test_hf_filler_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(DataError, match="no-such-org/made-up-dataset-xyz"):
        prepare(tiny(filler="hf", hf_name="no-such-org/made-up-dataset-xyz"), tmp_path / "d", quiet=True)
    assert time.perf_counter() - t < 20
    assert not (tmp_path / "d").exists()  # nothing half-written


@pytest.mark.parametrize("kw, key", [
    ({"filler": "bogus"}, r"data.filler.*synthetic, hf, local"),
    ({"eval_seed": 0}, r"data.train_seed and data.eval_seed"),
    ({"n_train_docs": 5}, r"data.rare_counts.*n_train_docs"),
    ({"rare_counts": [3, 10]}, r"data.rare_counts.*even"),
    ({"train_mix": {"recall": 1.0, "poetry": 1.0}}, r"data.train_mix.poetry.*recall, numeric, dialogue"),
    ({"fact_template": "{E} is ."}, r"data.fact_template"),
    ({"local_pairs_per_segment": 2}, r"no far fact fits"),
    ({"filler": "local"}, r"data.local_files"),
    ({"local_format": "xml"}, r"data.local_format.*text, json, parquet"),
    ({"val_long_lengths": []}, r"data.val_long_lengths: must be a non-empty list"),
    ({"n_val_long_docs": 0}, r"data.n_val_long_docs: must be >= 1"),
    ({"n_train_long_docs": 5, "train_long_segments": 3}, r"data.train_long_segments \(3\) must be > data.train_max_segments"),
    ({"n_train_long_docs": -1}, r"data.n_train_long_docs: must be >= 0"),
])
def test_bad_config(kw, key):
    with pytest.raises(ConfigError, match=key):
        validate(tiny(**kw))


def test_validate_against_backbone_window_and_whole_config():
    full = {"data": dataclasses.asdict(tiny()), "backbone": {"window": 32}}
    with pytest.raises(ConfigError, match="segment_len=16 must equal backbone.window=32"):
        validate(full["data"], full)
    with pytest.raises(ConfigError, match="backbone.window"):
        validate(full)  # the lead's one-argument form
    full["backbone"]["window"] = 16
    validate(full)
    with pytest.raises(ConfigError, match="data.colour: unknown key"):
        validate({**dataclasses.asdict(tiny()), "colour": 1})


def test_prepare_cli_with_params_file(tmp_path):
    """The DVC stage's command on a composed params file; a bad value exits 2 naming the key."""
    from pipeline.config import compose, to_params_yaml

    params = tmp_path / "params.yaml"
    params.write_text(to_params_yaml(compose(["profile=ci", "data.n_train_docs=200"])))
    cmd = [sys.executable, "-m", "pipeline.data.prepare", "--params"]
    cwd = tmp_path  # the stage writes experiments/prepare/stage.json under the cwd: never into the repo
    r = subprocess.run([*cmd, str(params), "--out", str(tmp_path / "data")], capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "prepared" in r.stdout and (tmp_path / "data" / "manifest.json").is_file()
    stage = tmp_path / "experiments" / "prepare" / "stage.json"
    recorded = stage.read_text()  # paths.data_dir is data/ under the cwd: the stage's own run, timed
    r = subprocess.run([*cmd, str(params), "--out", str(tmp_path / "elsewhere")], capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    assert r.returncode == 0 and (tmp_path / "elsewhere" / "manifest.json").is_file()
    assert stage.read_text() == recorded  # a copy prepared elsewhere leaves the stage's record alone
    bad = tmp_path / "bad.yaml"
    bad.write_text(params.read_text().replace("filler: synthetic", "filler: bogus"))
    r = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert r.returncode == 2 and "data.filler" in r.stderr


def test_a_changed_token_in_a_valid_split_is_caught(data_dir, tmp_path):
    import datasets

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    split = copy / "splits" / "recall_64"
    ds = datasets.Dataset.load_from_disk(str(split))
    rows = ds.to_dict()
    rows["input_ids"][0][3] = (rows["input_ids"][0][3] + 1) % 10  # one token, every other column intact
    shutil.rmtree(split)
    datasets.Dataset.from_dict(rows, features=ds.features).save_to_disk(str(split))
    with pytest.raises(DataError, match="document 0: its tokens do not hash to its doc_id"):
        load_split(copy, "recall_64")
    load_split(copy, "recall_64", verify=False)  # readable; only verification refuses it


def test_prepare_twice_writes_identical_files(tmp_path):
    """No wall-clock time (or anything else that varies) inside data/: a rerun of prepare must not change
    the folder's hash, or DVC would retrain every model on identical data."""
    import hashlib

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    prepare(tiny(n_train_docs=200, rare_counts=[2], rare_tokens_per_class=1), tmp_path / "a", quiet=True)
    time.sleep(0.05)
    prepare(tiny(n_train_docs=200, rare_counts=[2], rare_tokens_per_class=1), tmp_path / "b", quiet=True)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    assert "wall_s" not in json.loads((tmp_path / "a" / "manifest.json").read_text())


def test_distractor_facts_are_stated_never_asked_and_leave_rare_counts_exact(tmp_path):
    import random

    from pipeline.data.documents import Block, DocBuilder, layout_train
    from pipeline.data.vocab import build_vocab

    cfg = tiny(n_distractor_facts=3, train_max_segments=4, n_train_docs=400)
    b = DocBuilder(cfg, build_vocab(cfg, filler_words=["x"]))
    for n_seg, want in ((2, 0), (3, 2), (4, 3)):  # 2 facts fit each early segment beside its local pair
        pieces, _ = layout_train(random.Random(n_seg), b, "recall", n_seg)
        blocks = [p for p in pieces if isinstance(p, Block)]
        asked = {r for q in blocks if q.is_query for r in q.refs}
        unasked = [f for f in blocks if not f.is_query and f.fact_id not in asked]
        assert len(unasked) == want, (n_seg, len(unasked))
        assert all(v >= 0 for f in unasked for v in f.tokens)  # a real value, not a rare-plan slot
    prepare(cfg, tmp_path / "data", quiet=True)  # raises unless every rare class has its exact count
