"""Stage `stress-data`: the load, length, update and qualifier documents (pipeline/stress/__init__.py) in data_stress/.

The study's generator and vocabulary (checked against data/tokenizer.json) with the `stress` section's sizes and
seed; written atomically, one `datasets` split per folder, plus a manifest. An update document's queries carry,
beside the answer (the later value), `prior`: the value the entity held before (-1 for an ordinary fact); a
qualifier document's, `prior`: the value stated under the other qualifier, and `asks_later`: whether the qualified
query asks the later of the two statements (1) or the earlier (0; -1 for an ordinary fact)."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.schema import DataConfig, StressConfig
from pipeline.data.build import (Source, _fill_values, _materialise, _py_rng, gen_eval, make_source, split_rng,
                                 to_columns, train_values)
from pipeline.data.documents import Block, DocBuilder, _aligned, _region
from pipeline.errors import ConfigError, DataError
from pipeline.io import atomic_dir, atomic_write_json, write_stage_time
from pipeline.paths import experiments_dir
from pipeline.stress import STRESS_DIR

MANIFEST = "manifest.json"


def check_fits(data: DataConfig, st: StressConfig) -> None:
    """F facts need F distinct entities; an update gap must fit its document with room before and after."""
    if max(st.load_facts) > data.n_entities:
        raise ConfigError(f"stress.load_facts: {max(st.load_facts)} facts need as many distinct entities; "
                          f"data.n_entities = {data.n_entities}")
    if len(data.speakers) < 2:
        raise ConfigError(f"stress qualifier documents need two qualifiers (data.speakers); got {list(data.speakers)}")
    W = data.segment_len
    need = max(st.update_gaps) + LATER_TO_END + 1
    if need * W > st.update_length:
        raise ConfigError(f"stress.update_gaps: a gap of {max(st.update_gaps)} segments does not fit in "
                          f"stress.update_length = {st.update_length} tokens (segments of {W}, "
                          f"{LATER_TO_END + 1} more needed)")


def split_plan(st: StressConfig) -> list[tuple[str, str, int]]:
    """(split name, kind, size) of every stress split, in a fixed order."""
    return ([(f"load_{f}", "load", int(f)) for f in st.load_facts]
            + [(f"length_{n}", "length", int(n)) for n in st.lengths]
            + [(f"update_{g}", "update", int(g)) for g in st.update_gaps]
            + [(f"qualifier_{g}", "qualifier", int(g)) for g in st.update_gaps])


def _seeded(data: DataConfig, st: StressConfig, kind: str, size: int) -> DataConfig:
    """The data config a stress split is drawn with: its own seed per kind and size (no study split's stream)."""
    code = {"load": 1, "length": 2, "update": 3, "qualifier": 4}[kind]
    return dataclasses.replace(data, eval_seed=int(st.seed) * 1_000_003 + code * 100_000 + int(size))


def gen_split(data: DataConfig, st: StressConfig, src: Source, kind: str, size: int) -> list[dict]:
    cfg = _seeded(data, st, kind, size)
    if kind == "load":
        cfg = dataclasses.replace(cfg, n_eval_facts=int(size), n_eval_docs=int(st.n_load_docs), eval_facts="spread")
        return gen_eval(cfg, src, "recall", int(st.load_length))
    if kind == "length":
        cfg = dataclasses.replace(cfg, n_eval_docs=int(st.n_length_docs), eval_facts="spread")
        return gen_eval(cfg, src, "recall", int(size))
    if kind == "qualifier":
        return gen_qualifier(cfg, st, src, int(size))
    return gen_update(cfg, st, src, int(size))


# segments between the later statement and the end of the document, where the queries are: beyond any local reach
# (the window and xl's cache span 2 segments), so only a memory can answer, with either value
LATER_TO_END = 8


def _update_layout(r: random.Random, b: DocBuilder, length: int, gap: int) -> tuple[list, int, int, int]:
    """(pieces, facts, prior slot, later slot) of one update document: n_eval_facts - 1 ordinary facts spread
    before the first statement, the entity's first statement (slot `prior`) `gap` segments before its second
    (the slot its query answers), and every query at the end. The second statement sits LATER_TO_END segments
    before the end, so only `gap` varies from split to split."""
    W = b.cfg.segment_len
    ents = r.sample(b.entities, b.cfg.n_eval_facts)
    pairs = [b.recall(e, i) for i, e in enumerate(ents)]  # pair 0: the updated entity's later statement, its query
    prior = b.new_slot()
    first = Block(b.t.fact.render(E=ents[0], V=prior), b.t.fact.slots["V"], fact_id=len(ents))
    s2 = length // W - LATER_TO_END
    s1 = s2 - gap
    queries = [p[1] for p in pairs]
    r.shuffle(queries)
    pieces = _aligned(r, W, s1 * W, [p[0] for p in pairs[1:]])
    pieces += _region(r, W, [first]) + [(s2 - s1 - 1) * W] + _region(r, W, [pairs[0][0]])
    pieces += _aligned(r, W, length - (s2 + 1) * W, [], offset=(s2 + 1) * W, tail=queries)
    return pieces, len(pairs), prior, pairs[0][1].tokens[-1]


def gen_update(cfg: DataConfig, st: StressConfig, src: Source, gap: int) -> list[dict]:
    """Update documents; `prior`: the earlier value of the updated entity on its query."""
    return _gen_restated(cfg, st, src, gap, lambda r, b, length, i: (*_update_layout(r, b, length, gap), None))


def _gen_restated(cfg: DataConfig, st: StressConfig, src: Source, gap: int, layout) -> list[dict]:
    """Documents in which one entity is given two different values: `layout(r, builder, length, i)` -> (pieces,
    facts, the wrong value's slot, the right value's slot, asks_later or None). Each doc's `prior` lists, per
    query, the wrong value on the restated entity's query and -1 on the others (`asks_later` likewise, where the
    layout says which statement is asked). The two values always differ."""
    rng = split_rng(cfg, "recall", gap)
    b = DocBuilder(cfg, src.vocab)
    r = _py_rng(rng)
    length = int(st.update_length) // cfg.segment_len * cfg.segment_len
    layouts, slots = [], []
    for i in range(int(st.n_update_docs)):
        pieces, nf, wrong, right, later = layout(r, b, length, i)
        layouts.append((pieces, nf, {"length": length, "task": "recall", "n_turns": 0,
                                     "n_segments": length // cfg.segment_len}))
        slots.append((-wrong - 1, -right - 1, right, later))
    docs = _materialise(rng, src, layouts, cfg.segment_len)
    values = train_values(rng, cfg, src.vocab, b.n_slots, rare=False)
    common = src.vocab.common_value_ids
    for d, (wrong, right, right_ph, later) in zip(docs, slots):
        while values[wrong] == values[right]:
            values[wrong] = common[rng.integers(len(common))]
        d["prior"] = [int(values[wrong]) if a == right_ph else -1 for a in d["answers"]]
        if later is not None:
            d["asks_later"] = [int(later) if a == right_ph else -1 for a in d["answers"]]
    _fill_values(docs, values)
    return docs


def _qualifier_layout(r: random.Random, b: DocBuilder, length: int, gap: int,
                      asks_later: bool) -> tuple[list, int, int, int]:
    """(pieces, facts, other slot, asked slot) of one qualifier document: laid out as an update document, but each
    of the entity's two statements is made under its own qualifier (a speaker tag of data.speakers right before
    it: "A: is E V1 ." ... "B: is E V2 .") and its query names one of them ("A: ? is E"), the later one when
    `asks_later`: the right answer is the value stated under the named qualifier, the other is the wrong one."""
    W = b.cfg.segment_len
    ents = r.sample(b.entities, b.cfg.n_eval_facts)
    pairs = [b.recall(e, i) for i, e in enumerate(ents[1:], start=1)]
    q1, q2 = r.sample(b.speakers, 2)
    slots = (b.new_slot(), b.new_slot())  # the earlier and the later statement's values
    off = b.t.fact.slots["V"] + 1
    first = Block([q1] + b.t.fact.render(E=ents[0], V=slots[0]), off, fact_id=0)
    later = Block([q2] + b.t.fact.render(E=ents[0], V=slots[1]), off, fact_id=len(ents))
    asked, other, tag, fid = (slots[1], slots[0], q2, len(ents)) if asks_later else (slots[0], slots[1], q1, 0)
    query = Block([tag] + b.t.query.render(E=ents[0]) + [asked], len(b.t.query), refs=(fid,), qtype="recall")
    s2 = length // W - LATER_TO_END
    s1 = s2 - gap
    queries = [p[1] for p in pairs] + [query]
    r.shuffle(queries)
    pieces = _aligned(r, W, s1 * W, [p[0] for p in pairs])
    pieces += _region(r, W, [first]) + [(s2 - s1 - 1) * W] + _region(r, W, [later])
    pieces += _aligned(r, W, length - (s2 + 1) * W, [], offset=(s2 + 1) * W, tail=queries)
    return pieces, len(pairs) + 2, other, asked


def gen_qualifier(cfg: DataConfig, st: StressConfig, src: Source, gap: int) -> list[dict]:
    """Qualifier documents, naming the earlier statement's speaker and the later's in turn; `prior`: the other
    speaker's value on the qualified query, `asks_later`: 1 / 0 there (the later / earlier statement named)."""
    return _gen_restated(cfg, st, src, gap, lambda r, b, length, i: (
        *_qualifier_layout(r, b, length, gap, asks_later=i % 2 == 1), i % 2))


def check_vocab(src: Source, data_dir: Path) -> None:
    """The stress documents must use the study's token ids: the rebuilt vocabulary must equal data/'s tokenizer
    (in an LM's tokens: the LM's tokenizer, and the study's token sets in its ids as the manifest records them)."""
    from pipeline.data import load_manifest, load_tokenizer
    from pipeline.data.vocab import vocab_summary

    vocab = load_tokenizer(data_dir).get_vocab()
    if src.lm is not None:
        same = (vocab == src.lm.tokenizer.backend_tokenizer.get_vocab()
                and load_manifest(data_dir).get("vocab") == vocab_summary(src.out_vocab))
    else:
        same = len(vocab) == len(src.vocab) and all(vocab.get(w) == i for i, w in enumerate(src.vocab.words))
    if not same:
        raise DataError(f"{data_dir}/tokenizer.json differs from the vocabulary params.yaml's data section builds; "
                        f"rerun `dvc repro prepare`")


def build(cfg: Any, out: Path, quiet: bool = False) -> dict:
    """Every stress split of `cfg` written to `out` (atomically); returns the manifest."""
    data, st = cfg.data, cfg.stress
    check_fits(data, st)
    src = make_source(data)
    check_vocab(src, Path(cfg.paths.data_dir))
    is_word = src.is_word()
    stats = {}
    with atomic_dir(out) as tmp:
        for name, kind, size in split_plan(st):
            docs = src.to_output_ids(gen_split(data, st, src, kind, size))
            cols = to_columns(docs, is_word)
            for col in ("prior", "asks_later"):
                cols[col] = [d.get(col, [-1] * len(d["query_pos"])) for d in docs]
            save_stress_split(cols, tmp / "splits" / name)
            stats[name] = {"kind": kind, "size": size, "docs": len(docs), "tokens": int(docs[0]["ids"].shape[0]),
                           "queries_per_doc": float(np.mean([len(d["query_pos"]) for d in docs]))}
        manifest = {"stress": dataclasses.asdict(st), "splits": stats}
        atomic_write_json(tmp / MANIFEST, manifest)
    if not quiet:
        print(f"stress splits written to {out}/: " + ", ".join(f"{k} ({v['docs']} docs of {v['tokens']} tokens)"
                                                              for k, v in stats.items()))
    return manifest


def save_stress_split(cols: dict, path: Path) -> None:
    """A split as the study's (pipeline/data/store.py features) plus its `prior` column."""
    import datasets

    from pipeline.data.store import features

    f = features()
    f["prior"] = datasets.Sequence(datasets.Value("int32"))
    f["asks_later"] = datasets.Sequence(datasets.Value("int8"))
    datasets.disable_progress_bars()  # one bar per split is noise in a DVC log
    datasets.Dataset.from_dict(cols, features=f).save_to_disk(str(path))


def load_stress_split(root: str | Path, name: str):
    import datasets

    path = Path(root) / "splits" / name
    if not path.is_dir():
        raise DataError(f"{path}: stress split missing; run `cmr-repro stress-data` (dvc repro stress-data)")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for a corrupt folder
        raise DataError(f"{path}: unreadable stress split ({err})") from None


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: missing; run `cmr-repro stress-data` (dvc repro stress-data)")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    from pipeline import stage_cli

    ap = stage_cli.parser("stress-data", __doc__.splitlines()[0])
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        t0 = time.perf_counter()
        build(cfg, Path(STRESS_DIR))
        write_stage_time(experiments_dir(cfg) / "stress-data", t0)

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
