"""Build every split in memory: lay out documents, plan rare values, fill filler, and turn the
documents into columns (one row per document) with content hashes for disjointness.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

from pipeline.config.schema import DataConfig
from pipeline.data.documents import (DocBuilder, assemble, filler_need, layout_dialogue, layout_numeric,
                                     layout_recall, layout_train, rare_slots_needed, train_kinds)
from pipeline.data.filler import CorpusFiller, SyntheticFiller, corpus_stream, corpus_words, synthetic_word_classes
from pipeline.data.lm_tokens import LMTokens, lm_tokens, remap_docs
from pipeline.data.vocab import Vocab, build_vocab
from pipeline.errors import ConfigError, DataError

# Seeds of each split: train and val_long from data.train_seed (the training seed family), everything
# else from data.eval_seed.
_CODES = {"train": 0, "val": 1, "recall": 2, "numeric": 3, "rare": 4, "dialogue": 5, "val_long": 6,
          "train_long": 7}
TRAIN_FAMILY = ("train", "val_long", "train_long")
SELECTION_SPLITS = ("train", "val", "val_long")  # what training sees or selects checkpoints on
HASH_COLUMNS = ("doc_id", "task", "query_pos", "answers", "query_type", "fact_pos", "distance",
                "n_turns", "n_segments", "n_words")
COLUMNS = ("doc_id", "task", "input_ids", "n_words", "query_pos", "answers", "query_type", "fact_pos",
           "distance", "n_turns", "n_segments")


@dataclass
class Source:
    vocab: Vocab  # the generator's word vocabulary
    filler: SyntheticFiller | CorpusFiller
    description: str
    lm: LMTokens | None = None  # data.tokenizer: documents leave the generator in the LM's tokens

    @property
    def out_vocab(self) -> Vocab:
        """The vocabulary of the written documents' ids."""
        return self.lm.vocab if self.lm is not None else self.vocab

    def is_word(self) -> np.ndarray:
        return self.lm.is_word if self.lm is not None else self.vocab.is_word_mask()

    def to_output_ids(self, docs: list[dict]) -> list[dict]:
        if self.lm is not None:
            remap_docs(docs, self.lm.table)
        return docs


def make_source(cfg: DataConfig) -> Source:
    """Vocabulary and filler source (the corpus, when used, decides the filler words)."""
    if cfg.filler == "synthetic":
        classes = synthetic_word_classes(cfg)
        words = [w for c in classes.values() for w in c]
        vocab = build_vocab(cfg, words, classes)
        src = Source(vocab, SyntheticFiller(cfg, vocab), f"synthetic(grammar, zipf_a={cfg.zipf_a})")
    else:
        docs, top, desc = corpus_words(cfg)
        vocab = build_vocab(cfg, top)
        src = Source(vocab, CorpusFiller(corpus_stream(docs, top, vocab)), desc)
    if cfg.tokenizer:
        src.lm = lm_tokens(cfg, vocab)
        src.description += f", in the tokens of {cfg.tokenizer}"
    return src


def split_rng(cfg: DataConfig, kind: str, size: int = 0) -> np.random.Generator:
    seed = cfg.train_seed if kind in TRAIN_FAMILY else cfg.eval_seed
    return np.random.default_rng([int(seed), _CODES[kind], int(size)])


def _py_rng(rng: np.random.Generator) -> random.Random:
    """A random.Random drawn from the split's numpy generator: fast for layouts' many tiny draws."""
    return random.Random(int(rng.integers(2**62)))


def _materialise(rng, src: Source, layouts, W: int) -> list[dict]:
    docs = []
    for pieces, n_facts, meta in layouts:
        d = assemble(pieces, src.filler.sample(rng, filler_need(pieces)), W, meta["length"])
        d.update(meta)
        d["n_facts"] = n_facts
        docs.append(d)
    return docs


def _fill_values(docs: list[dict], values: np.ndarray) -> None:
    """Replace the negative slot placeholders by the values chosen for each slot."""
    for d in docs:
        ids = d["ids"]
        neg = ids < 0
        ids[neg] = values[-ids[neg] - 1]
        d["answers"] = [int(values[-a - 1]) if a < 0 else int(a) for a in d["answers"]]


def train_values(rng, cfg: DataConfig, vocab: Vocab, n_slots: int, rare: bool) -> np.ndarray:
    """Common values everywhere, except that (train split) each rare token takes exactly
    count/2 random slots: one slot = the fact plus its answer = 2 occurrences."""
    values = vocab.common_value_ids[rng.integers(len(vocab.common_value_ids), size=n_slots)]
    if not rare:
        return values
    need = rare_slots_needed(cfg)
    if need > cfg.max_rare_fraction * n_slots:
        raise ConfigError(
            f"data.rare_counts={list(cfg.rare_counts)} x data.rare_tokens_per_class={cfg.rare_tokens_per_class} "
            f"need {need} fact slots, but the {cfg.n_train_docs} training docs (data.n_train_docs) hold {n_slots} "
            f"(at most data.max_rare_fraction={cfg.max_rare_fraction} may be rare); "
            "raise n_train_docs or lower rare_counts / rare_tokens_per_class"
        )
    toks = np.concatenate([np.repeat(ids, int(c) // 2) for ids, c in zip(vocab.rare_class_ids, cfg.rare_counts)])
    chosen = rng.permutation(n_slots)[:need]
    values[chosen] = rng.permutation(toks)
    return values


def rare_values(rng, vocab: Vocab, n_slots: int) -> np.ndarray:
    """Rare eval: slot i takes a random token of class i mod n_classes (balanced classes)."""
    classes = vocab.rare_class_ids
    out = np.empty(n_slots, dtype=np.int64)
    for i in range(n_slots):
        c = classes[i % len(classes)]
        out[i] = c[rng.integers(len(c))]
    return out


def gen_train(cfg: DataConfig, src: Source, split: str) -> list[dict]:
    """train (rare plan, train_seed, then the long pool from its own stream) or val (common values only,
    eval_seed)."""
    rng = split_rng(cfg, split)
    n = cfg.n_train_docs if split == "train" else cfg.n_val_docs
    segs = np.resize(np.arange(cfg.train_min_segments, cfg.train_max_segments + 1), n)
    segs = segs[rng.permutation(n)]  # balanced over n_segments for the curriculum
    docs = _train_docs(rng, cfg, src, segs, rare=(split == "train"))
    if split == "train" and cfg.n_train_long_docs:
        docs += _train_docs(split_rng(cfg, "train_long"), cfg, src,
                            np.full(cfg.n_train_long_docs, cfg.train_long_segments), rare=False)
    return docs


def _train_docs(rng, cfg: DataConfig, src: Source, segs: np.ndarray, rare: bool) -> list[dict]:
    """Training-style documents of the given segment counts, task kinds drawn from data.train_mix."""
    kinds, p = train_kinds(cfg)
    kind_idx = rng.choice(len(kinds), size=len(segs), p=p)
    b = DocBuilder(cfg, src.vocab)
    W = cfg.segment_len
    r = _py_rng(rng)
    layouts = []
    for i in range(len(segs)):
        kind, S = kinds[kind_idx[i]], int(segs[i])
        pieces, nf = layout_train(r, b, kind, S)
        layouts.append((pieces, nf, {"length": S * W, "task": "train", "n_segments": S,
                                     "n_turns": S if kind == "dialogue" else 0}))
    docs = _materialise(rng, src, layouts, W)
    _fill_values(docs, train_values(rng, cfg, src.vocab, b.n_slots, rare=rare))
    return docs


def gen_eval(cfg: DataConfig, src: Source, kind: str, size: int) -> list[dict]:
    """recall_<N>, numeric_<N>, rare (size = its length), dialogue_<T> (size = turns), or val_long
    (recall documents of every data.val_long_lengths, n_val_long_docs each)."""
    rng = split_rng(cfg, kind, size)
    b = DocBuilder(cfg, src.vocab)
    W = cfg.segment_len
    if kind == "val_long":
        sizes = [int(n) for n in cfg.val_long_lengths for _ in range(cfg.n_val_long_docs)]
    else:
        sizes = [size] * (cfg.n_rare_docs if kind == "rare" else cfg.n_eval_docs)
    r = _py_rng(rng)
    layouts = []
    for size in sizes:
        if kind in ("recall", "rare", "val_long"):
            pieces, nf = layout_recall(r, b, size)
            meta = {"length": size, "task": "recall", "n_turns": 0}
        elif kind == "numeric":
            pieces, nf = layout_numeric(r, b, size)
            meta = {"length": size, "task": "numeric", "n_turns": 0}
        else:
            pieces, nf = layout_dialogue(r, b, size)
            meta = {"length": size * cfg.dialogue_turn_len, "task": "dialogue", "n_turns": size}
        meta["n_segments"] = -(-meta["length"] // W)
        layouts.append((pieces, nf, meta))
    docs = _materialise(rng, src, layouts, W)
    if kind == "rare":
        values = rare_values(rng, src.vocab, b.n_slots)
    else:
        values = train_values(rng, cfg, src.vocab, b.n_slots, rare=False)
    _fill_values(docs, values)
    return docs


def split_plan(cfg: DataConfig) -> list[tuple[str, str, int]]:
    """(split name, generator kind, size) for every split, in a fixed order."""
    plan = [("train", "train", 0), ("val", "val", 0), ("val_long", "val_long", 0)]
    plan += [(f"recall_{n}", "recall", int(n)) for n in cfg.eval_lengths]
    plan += [(f"numeric_{n}", "numeric", int(n)) for n in cfg.eval_lengths]
    plan += [("rare", "rare", int(cfg.rare_eval_length))]
    plan += [(f"dialogue_{t}", "dialogue", int(t)) for t in cfg.dialogue_turns]
    return plan


def doc_hash(ids: np.ndarray) -> str:
    return hashlib.sha1(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def to_columns(docs: list[dict], is_word: np.ndarray) -> dict[str, list]:
    """One row per document; checks every query's answer is the next token."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for d in docs:
        ids = d["ids"]
        if ids.min() < 0 or ids.max() >= len(is_word):
            raise RuntimeError("unfilled placeholder or out-of-vocabulary id")  # a bug
        qp = np.asarray(d["query_pos"], dtype=np.int64)
        if len(qp) and not np.array_equal(ids[qp + 1], np.asarray(d["answers"])):
            raise RuntimeError("answer is not the token after the query")  # a bug
        cols["doc_id"].append(doc_hash(ids))
        cols["task"].append(d["task"])
        cols["input_ids"].append(ids.astype(np.int32))
        cols["n_words"].append(int(is_word[ids].sum()))
        cols["query_pos"].append([int(x) for x in d["query_pos"]])
        cols["answers"].append([int(x) for x in d["answers"]])
        cols["query_type"].append(list(d["query_type"]))
        cols["fact_pos"].append([int(x) for x in d["fact_pos"]])
        cols["distance"].append([int(q) - int(f) for q, f in zip(d["query_pos"], d["fact_pos"])])
        cols["n_turns"].append(int(d["n_turns"]))
        cols["n_segments"].append(int(d["n_segments"]))
    return cols


def split_hash(cols) -> str:
    """Content hash of a split: doc ids (which hash the tokens) plus every query column, in order."""
    h = hashlib.sha1()
    n = len(cols["doc_id"])
    for i in range(n):
        row = "|".join(str(cols[c][i]) for c in HASH_COLUMNS)
        h.update(row.encode())
        h.update(b"\n")
    return h.hexdigest()


def check_disjoint(train_ids, others: dict[str, list[str]]) -> dict:
    """Proof that no document (by content hash) of a validation or evaluation split is in train, and no
    evaluation document is in a validation split (val, val_long: checkpoints are selected on them);
    DataError naming the two splits if one is."""
    seen = {"train": set(train_ids)}
    seen.update({name: set(ids) for name, ids in others.items() if name in SELECTION_SPLITS})
    report = {}
    for name, ids in others.items():
        against = ["train"] if name in SELECTION_SPLITS else [s for s in SELECTION_SPLITS if s in seen]
        for sel in against:
            hits = [d for d in ids if d in seen[sel]]
            if hits:
                raise DataError(f"split '{name}': {len(hits)} document(s) also in {sel} (e.g. doc_id {hits[0]}); "
                                f"evaluation must be disjoint from training and validation")
        report[name] = 0
    return {"ok": True, "train_docs": len(train_ids), "train_unique": len(seen["train"]), "overlaps": report,
            "method": "sha1 of token ids (doc_id); no val/val_long/eval doc_id occurs in train, "
                      "and no eval doc_id in val or val_long"}
