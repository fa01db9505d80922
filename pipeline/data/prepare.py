"""Stage `prepare`: build every split and write data/ atomically.

    python -m pipeline.data.prepare [--params params.yaml] [--out data]

`prepare(cfg, out_dir)` takes the whole composed config, so Hydra entry points call the same code.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.build import (check_disjoint, gen_eval, gen_train, make_source, split_hash, split_plan,
                                 to_columns)
from pipeline.data.documents import check_data
from pipeline.config.data import as_data_config
from pipeline.config.access import cfg_path
from pipeline.config.schema import DataConfig, RootConfig
from pipeline.data.store import COUNTS, MANIFEST, SPLITS, load_split, save_split
from pipeline.data.vocab import make_tokenizer, vocab_summary
from pipeline.errors import DataError
from pipeline.io import atomic_dir, atomic_write_json, atomic_write_text, write_stage_time
from pipeline.paths import experiments_dir


def _is_full(cfg: Any) -> bool:
    """Whether `cfg` is a whole study config (RootConfig, or a mapping with `data`), not a DataConfig alone."""
    if isinstance(cfg, RootConfig):
        return True
    try:
        return not isinstance(cfg, DataConfig) and "data" in cfg
    except TypeError:
        return False


def _default_out(cfg: Any) -> Path:
    return Path(cfg_path(cfg, "paths.data_dir", "data") if _is_full(cfg) else "data")


def build_all(cfg: DataConfig) -> tuple[dict[str, dict], Any, dict]:
    """Every split as columns, plus the vocabulary source and per-split stats (no disk I/O)."""
    src = make_source(cfg)
    is_word = src.is_word()
    splits, stats = {}, {}
    for name, kind, size in split_plan(cfg):
        docs = gen_train(cfg, src, kind) if kind in ("train", "val") else gen_eval(cfg, src, kind, size)
        cols = to_columns(src.to_output_ids(docs), is_word)
        splits[name] = cols
        n = len(docs)
        lens = [len(x) for x in cols["input_ids"]]
        qtypes: dict[str, int] = {}
        for qt in cols["query_type"]:
            for t in qt:
                qtypes[t] = qtypes.get(t, 0) + 1
        stats[name] = {
            "docs": n,
            "tokens": int(sum(lens)),
            "mean_tokens": float(np.mean(lens)) if n else 0.0,
            "min_tokens": int(min(lens)) if n else 0,
            "max_tokens": int(max(lens)) if n else 0,
            "mean_words": float(np.mean(cols["n_words"])) if n else 0.0,
            "facts_per_doc": float(np.mean([d["n_facts"] for d in docs])) if n else 0.0,
            "queries_per_doc": float(np.mean([len(q) for q in cols["query_pos"]])) if n else 0.0,
            "query_types": qtypes,
            "mean_distance": float(np.mean([x for d in cols["distance"] for x in d])) if n else 0.0,
            "hash": split_hash(cols),
        }
    return splits, src, stats


def _verify_tokenizer(tok, vocab, splits: dict, n_docs: int) -> None:
    """Round-trip a sample of documents through the saved tokenizer; answers must be single tokens."""
    words = vocab.words
    answers = sorted({a for cols in splits.values() for qa in cols["answers"] for a in qa})
    for a in answers:
        enc = tok.encode(words[a], add_special_tokens=False).ids
        if enc != [a]:
            raise DataError(f"answer '{words[a]}' (id {a}) is not a single token of the tokenizer: {enc}")
    for name, cols in splits.items():
        sample = cols["input_ids"][:n_docs]
        texts = [vocab.joiner.join(words[i] for i in ids) for ids in sample]
        for ids, enc in zip(sample, tok.encode_batch(texts, add_special_tokens=False)):
            if enc.ids != [int(i) for i in ids]:
                raise DataError(f"split '{name}': a document does not round-trip through tokenizer.json")


def prepare(cfg: Any, out_dir: str | Path | None = None, quiet: bool = False) -> dict:
    """Build and write data/ (tokenizer, splits, manifest, train counts) atomically; return the manifest."""
    t0 = time.perf_counter()
    dcfg = as_data_config(cfg)
    check_data(dcfg, cfg if _is_full(cfg) else None)
    out = Path(out_dir) if out_dir is not None else _default_out(cfg)
    splits, src, stats = build_all(dcfg)
    disjoint = check_disjoint(splits["train"]["doc_id"],
                              {k: v["doc_id"] for k, v in splits.items() if k != "train"})
    vocab = src.out_vocab
    tok = src.lm.tokenizer.backend_tokenizer if src.lm is not None else make_tokenizer(vocab)
    _verify_tokenizer(tok, vocab, splits, dcfg.verify_docs)
    with atomic_dir(out) as tmp:
        atomic_write_text(tmp / "tokenizer.json", tok.to_str(pretty=False))
        for name, cols in splits.items():
            save_split(cols, tmp / SPLITS / name)
        # Counts are measured from the split as saved, not from the plan.
        train = load_split(tmp, "train", verify=False)
        flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in train["input_ids"]]) if len(train) else np.zeros(0, np.int64)
        counts = np.bincount(flat, minlength=len(vocab))
        atomic_write_json(tmp / COUNTS, {str(i): int(c) for i, c in enumerate(counts) if c > 0})
        for ids, want in zip(vocab.rare_class_ids, dcfg.rare_counts):
            got = counts[ids]
            if not np.all(got == int(want)):
                raise DataError(f"rare class {want}: measured counts {got.tolist()} in the saved train split")
        manifest = {
            "splits": stats,
            "generator": dataclasses.asdict(dcfg),
            "filler_source": src.description,
            "vocab": vocab_summary(vocab),
            "disjointness": disjoint,
            "rare_classes": [{"count": int(c), "ids": [int(i) for i in ids]}
                             for c, ids in zip(dcfg.rare_counts, vocab.rare_class_ids)],
        }  # no timings here: data/ must hash the same on every rerun (the stage's time is stage.json's)
        atomic_write_json(tmp / MANIFEST, manifest)
    if not quiet:
        print(summary(manifest, out, time.perf_counter() - t0))
    return manifest


def summary(manifest: dict, out: Path, wall_s: float) -> str:
    lines = [f"prepared {out}/ in {wall_s:.1f} s  (filler: {manifest['filler_source']}, "
             f"vocab {manifest['vocab']['size']}, disjoint: {manifest['disjointness']['ok']})"]
    lines.append(f"  {'split':<16}{'docs':>7}{'tokens':>11}{'mean len':>10}{'facts/doc':>10}{'queries/doc':>12}")
    for name, s in manifest["splits"].items():
        lines.append(f"  {name:<16}{s['docs']:>7}{s['tokens']:>11}{s['mean_tokens']:>10.1f}"
                     f"{s['facts_per_doc']:>10.1f}{s['queries_per_doc']:>12.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline import stage_cli

    ap = stage_cli.parser("prepare", __doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default: paths.data_dir)")
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        t0 = time.perf_counter()
        prepare(cfg, args.out)
        if args.out is None or Path(args.out).resolve() == Path(cfg.paths.data_dir).resolve():
            write_stage_time(experiments_dir(cfg) / "prepare", t0)  # the stage's record: only for its own data/

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
