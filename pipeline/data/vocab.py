"""The word vocabulary: disjoint token sets (filler, entities, values, variables, numbers) and the
WordLevel tokenizer built from them, deterministically from `data.vocab_seed`.

Disjoint sets are what make the evaluation honest: a rare value can only occur where the
generator planted it, so its count in the training split is exactly the planned one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config.schema import DataConfig
from pipeline.errors import ConfigError, DataError

PAD, UNK = "[PAD]", "[UNK]"
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "sh", "ch", "gl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "t"]
PLACEHOLDER = re.compile(r"^\{([A-Z])\}$")


def syllable_words(rng: np.random.Generator, n: int, used: set[str], min_syl: int, max_syl: int,
                   style: str = "lower") -> list[str]:
    """n new pronounceable words (consonant-vowel syllables) not in `used` (which is updated)."""
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ConfigError(f"cannot generate {n} distinct words with {max_syl} syllables; lower the vocabulary sizes")
        k = int(rng.integers(min_syl, max_syl + 1))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                    + (_CODAS[rng.integers(len(_CODAS))] if i == k - 1 else "") for i in range(k))
        if style == "title":
            w = w.capitalize()
        elif style == "upper":
            w = w.upper()
        if w in used:
            continue
        used.add(w)
        out.append(w)
    return out


def template_words(cfg: DataConfig) -> list[str]:
    """Literal (non-placeholder) words of the templates, in a fixed order."""
    seen: list[str] = []
    for t in (cfg.fact_template, cfg.query_template, cfg.num_fact_template, cfg.num_query_template):
        for w in t.split():
            if not PLACEHOLDER.match(w) and w not in seen:
                seen.append(w)
    return seen


@dataclass
class Vocab:
    """Words in id order plus the id ranges of each token set."""

    words: list[str]
    index: dict[str, int]
    filler_ids: np.ndarray  # ids usable as filler (synthetic grammar or corpus top-N)
    entity_ids: np.ndarray
    variable_ids: np.ndarray
    number_ids: np.ndarray  # number_ids[k] is the token of the number k
    common_value_ids: np.ndarray
    rare_class_ids: list[np.ndarray]  # one array per class in cfg.rare_counts order
    speaker_ids: np.ndarray
    word_classes: dict[str, np.ndarray] = field(default_factory=dict)  # synthetic grammar classes
    joiner: str = " "  # between tokens' strings in a document's text ("": an LM's tokens carry their own space)

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        return self.index[word]

    def is_word_mask(self) -> np.ndarray:
        """True for tokens that count as words (contain a letter or digit): for n_words."""
        return np.array([any(ch.isalnum() for ch in w) and w not in (PAD, UNK) for w in self.words])


def build_vocab(cfg: DataConfig, filler_words: list[str] | None,
                word_classes: dict[str, list[str]] | None = None) -> Vocab:
    """Fixed-order vocabulary: [PAD]=0, [UNK]=1, template words, speakers, numbers, entities,
    variables, common values, rare classes, filler. Generated words avoid every filler word."""
    rng = np.random.default_rng([cfg.vocab_seed, 7001])
    words: list[str] = [PAD, UNK]
    used: set[str] = set(words)

    def add(ws: list[str]) -> np.ndarray:
        start = len(words)
        for w in ws:
            if w in used and w not in (filler_words or []):
                raise ConfigError(f"word '{w}' is used by two token sets; check data templates/speakers")
            used.add(w)
            words.append(w)
        return np.arange(start, len(words), dtype=np.int64)

    structural = template_words(cfg)
    add(structural)
    speaker_ids = add(list(cfg.speakers))
    number_ids = add([str(k) for k in range(cfg.max_number + 1)])
    # Generated words must not collide with the filler words (corpus words too).
    taken = set(used) | set(filler_words or [])
    entities = syllable_words(rng, cfg.n_entities, taken, 2, 3, style="title")
    variables = syllable_words(rng, cfg.n_variables, taken, 1, 2, style="upper")
    common = syllable_words(rng, cfg.n_common_values, taken, 2, 3)
    n_rare = cfg.rare_tokens_per_class * len(cfg.rare_counts)
    rare = syllable_words(rng, n_rare, taken, 2, 3)
    entity_ids = add(entities)
    variable_ids = add(variables)
    common_ids = add(common)
    rare_all = add(rare)
    k = cfg.rare_tokens_per_class
    rare_class_ids = [rare_all[i * k:(i + 1) * k] for i in range(len(cfg.rare_counts))]
    fw = [w for w in (filler_words or []) if w not in used]
    filler_ids = add(fw)
    index = {w: i for i, w in enumerate(words)}
    classes = {c: np.array([index[w] for w in ws if w in index], dtype=np.int64)
               for c, ws in (word_classes or {}).items()}
    return Vocab(words, index, filler_ids, entity_ids, variable_ids, number_ids, common_ids,
                 rare_class_ids, speaker_ids, classes)


def make_tokenizer(vocab: Vocab):
    """WordLevel tokenizer with a whitespace pre-tokenizer over exactly `vocab.words`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tok = Tokenizer(WordLevel(vocab=dict(vocab.index), unk_token=UNK))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def load_tokenizer(data_dir: str | Path):
    """The saved tokenizer of a prepared data folder (DataError if missing or unreadable)."""
    from tokenizers import Tokenizer

    path = Path(data_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path}: tokenizer missing; run `python -m pipeline.data.prepare`")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:
        raise DataError(f"{path}: cannot read tokenizer ({err})") from None


def vocab_summary(vocab: Vocab) -> dict:
    """Sizes and id ranges for the manifest."""
    return {
        "size": len(vocab),
        "filler": int(len(vocab.filler_ids)),
        "entities": int(len(vocab.entity_ids)),
        "variables": int(len(vocab.variable_ids)),
        "numbers": int(len(vocab.number_ids)),
        "common_values": int(len(vocab.common_value_ids)),
        "rare_classes": [[int(i) for i in c] for c in vocab.rare_class_ids],
    }
