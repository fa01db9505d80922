"""Filler text between planted facts: a seeded synthetic grammar (default, offline), or the
words of a Hugging Face / local corpus mapped into the vocabulary (top-N words + [UNK]).

A filler source hands out token ids only; it never emits entity or value tokens, so planted
facts are the only place those occur.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config.schema import DataConfig
from pipeline.data.vocab import Vocab, syllable_words
from pipeline.errors import ConfigError, DataError

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")

# The synthetic grammar: word classes (share of the filler vocabulary) and sentence patterns.
_CLASS_SHARE = {"det": 0.03, "prep": 0.04, "noun": 0.45, "verb": 0.25, "adj": 0.23}
_PATTERNS = [
    ["det", "noun", "verb", "det", "noun", "."],
    ["det", "adj", "noun", "verb", "."],
    ["noun", "verb", "det", "adj", "noun", "."],
    ["det", "noun", "verb", "prep", "det", "noun", "."],
    ["det", "adj", "noun", "verb", "prep", "det", "adj", "noun", "."],
    ["noun", "verb", "prep", "noun", "."],
]


def synthetic_word_classes(cfg: DataConfig) -> dict[str, list[str]]:
    """Pronounceable words per grammar class, seeded by data.vocab_seed (class order = frequency order)."""
    rng = np.random.default_rng([cfg.vocab_seed, 7002])
    used: set[str] = set()
    sizes = {c: max(2, int(round(s * cfg.filler_vocab_size))) for c, s in _CLASS_SHARE.items()}
    out = {}
    for c, n in sizes.items():
        lo, hi = (1, 1) if c in ("det", "prep") else (1, 3)
        out[c] = syllable_words(rng, n, used, lo, hi)
    return out


class SyntheticFiller:
    """Sentences from a small seeded grammar; each class samples words with Zipf-like frequencies."""

    def __init__(self, cfg: DataConfig, vocab: Vocab):
        self.classes = ["det", "prep", "noun", "verb", "adj"]
        self.ids = [vocab.word_classes[c] for c in self.classes]
        self.cdfs = []
        for ids in self.ids:
            p = 1.0 / np.arange(1, len(ids) + 1) ** cfg.zipf_a
            self.cdfs.append(np.cumsum(p / p.sum()))
        code = {c: i for i, c in enumerate(self.classes)}
        code["."] = -1
        self.patterns = [np.array([code[s] for s in p]) for p in _PATTERNS]
        self.mean_len = float(np.mean([len(p) for p in _PATTERNS]))
        self.period = vocab.id(".") if "." in vocab.index else vocab.id(vocab.words[1])
        self.sentence_end = self.period

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n filler token ids: whole sentences from a random point (int64[n])."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        n_sent = int((n + 10) / self.mean_len * 1.3) + 2
        pat = rng.integers(len(self.patterns), size=n_sent)
        slots = np.concatenate([self.patterns[p] for p in pat])  # class code per token
        out = np.full(len(slots), self.sentence_end, dtype=np.int64)
        for c, (ids, cdf) in enumerate(zip(self.ids, self.cdfs)):
            where = np.nonzero(slots == c)[0]
            pick = np.minimum(np.searchsorted(cdf, rng.random(len(where))), len(ids) - 1)
            out[where] = ids[pick]
        start = int(rng.integers(0, 8))
        if len(out) < start + n:  # pragma: no cover - sized generously above
            out = np.concatenate([out, self.sample(rng, n)])
        return out[start:start + n]


class CorpusFiller:
    """Contiguous runs of a corpus' word stream (wrapping around), from a random offset per call."""

    def __init__(self, stream: np.ndarray):
        if len(stream) == 0:
            raise DataError("filler corpus has no words")
        self.stream = stream

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        start = int(rng.integers(len(self.stream)))
        idx = (start + np.arange(n)) % len(self.stream)
        return self.stream[idx]


def split_words(text: str) -> list[str]:
    """Lower-cased words, numbers and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


def _infer_format(files: list[str]) -> str:
    ext = {Path(f).suffix.lower() for f in files}
    if ext <= {".txt", ".text", ".md"}:
        return "text"
    if ext <= {".json", ".jsonl"}:
        return "json"
    if ext <= {".parquet"}:
        return "parquet"
    raise ConfigError(f"data.local_format: cannot infer from extensions {sorted(ext)}; set one of text, json, parquet")


def _force_offline() -> None:
    """huggingface_hub/datasets read HF_HUB_OFFLINE at import; honour it if they were imported earlier."""
    import datasets.config as dcfg

    dcfg.HF_HUB_OFFLINE = True
    import huggingface_hub.constants as hc

    hc.HF_HUB_OFFLINE = True


def load_corpus_texts(cfg: DataConfig) -> tuple[list[str], str]:
    """Texts of the configured corpus (hf or local) and a description for the manifest."""
    if cfg.filler == "hf":
        # Offline unless the user says otherwise: without a hub, retries would cost ~25 s.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    if cfg.filler == "hf":
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            _force_offline()
        desc = f"hf:{cfg.hf_name}" + (f"/{cfg.hf_config}" if cfg.hf_config else "") + f"[{cfg.hf_split}]"
        try:
            ds = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.hf_split)
        except Exception as err:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise DataError(
                f"cannot load Hugging Face dataset '{cfg.hf_name}' (config={cfg.hf_config}, split={cfg.hf_split})"
                f"{' with HF_HUB_OFFLINE=1 (not cached locally)' if offline else ''}: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}"
            ) from None
    else:
        files = [str(f) for f in cfg.local_files]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"data.local_files: no such file: {missing[0]}")
        fmt = cfg.local_format if cfg.local_format != "auto" else _infer_format(files)
        desc = f"local:{fmt}:{','.join(files)}"
        try:
            ds = datasets.load_dataset(fmt, data_files=files, split="train")
        except Exception as err:
            raise DataError(f"cannot read local filler files {files} as {fmt}: {type(err).__name__}: {err}") from None
    if cfg.text_column not in ds.column_names:
        raise ConfigError(
            f"data.text_column: '{cfg.text_column}' not in {desc}; columns: {', '.join(ds.column_names)}"
        )
    return ds[cfg.text_column], desc


def corpus_words(cfg: DataConfig) -> tuple[list[list[str]], list[str], str]:
    """Word-split corpus (capped at data.filler_max_words) and its top-N words by frequency."""
    texts, desc = load_corpus_texts(cfg)
    docs: list[list[str]] = []
    total = 0
    for t in texts:
        if not t:
            continue
        ws = split_words(str(t))
        if not ws:
            continue
        docs.append(ws)
        total += len(ws)
        if total >= cfg.filler_max_words:
            break
    if total == 0:
        raise DataError(f"{desc}: column '{cfg.text_column}' holds no words")
    counts = Counter(w for d in docs for w in d)
    top = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.filler_vocab_size]]
    return docs, top, desc


def corpus_stream(docs: list[list[str]], top: list[str], vocab: Vocab) -> np.ndarray:
    """Map corpus words to ids: top-N words keep their id, all others become [UNK] (int64[total])."""
    unk = vocab.id("[UNK]")
    m = {w: vocab.index[w] for w in top if w in vocab.index}
    return np.array([m.get(w, unk) for d in docs for w in d], dtype=np.int64)
