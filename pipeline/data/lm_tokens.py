"""Documents in a pretrained LM's own tokens (`data.tokenizer`: an AutoTokenizer folder or hub name).

The generator keeps working in the study's word vocabulary (pipeline/data/vocab.py), so layouts, counts, disjoint
token sets and seeds stay the study's; each word then becomes exactly one token of the LM's tokenizer, so every
fact, query and answer stays one token, aligned as the evaluation expects (an answer is the token after its query):

- a word the LM already encodes as one token with its leading space (` is`, ` ?`, ` 7`, a corpus word) keeps it;
- every other word (the generated entities, variables, values and synthetic filler) takes a distinct unused
  single-token word of the LM's vocabulary (letters only), drawn with `data.vocab_seed`.

A document's text is then the concatenation of its tokens' strings, each with its own leading space, and encodes
back to the same ids (prepare checks a sample of every split).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.data.vocab import PAD, UNK, Vocab, template_words
from pipeline.errors import ConfigError, DataError

MIN_LETTERS = 2  # replacement words: letters only, at least this long (no word pieces like ` s`)


def load_lm_tokenizer(name: str) -> Any:
    """The LM's fast tokenizer (transformers.AutoTokenizer), or a one-line DataError naming what failed."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError("data.tokenizer needs the `transformers` package: pip install -e '.[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # a missing folder, no hub access, a malformed file
        raise DataError(f"data.tokenizer={name!r}: cannot load it with AutoTokenizer "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"data.tokenizer={name!r} has no fast tokenizer (tokenizer.json); the pipeline saves and "
                          f"reads documents through one")
    return tok


def single_token(tok: Any, word: str) -> int | None:
    """The LM's id of ` word` when it is one token, else None."""
    ids = tok.encode(" " + word, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def _candidates(tok: Any, rng: np.random.Generator) -> list[int]:
    """Ids of the LM's single-token words (leading space, letters only), in an order drawn from rng."""
    ids = []
    for i in range(len(tok)):
        s = tok.decode([i])
        if s.startswith(" ") and len(s) > MIN_LETTERS and s[1:].isalpha() and s[1:].isascii():
            ids.append(i)
    ids = np.asarray(sorted(ids), dtype=np.int64)
    return rng.permutation(ids).tolist()


def lm_vocab(vocab: Vocab, tok: Any, vocab_seed: int, fixed_words: list[str]) -> tuple[Vocab, np.ndarray]:
    """(the vocabulary in the LM's ids, table: study id -> LM id). fixed_words (template words, speakers,
    numbers) must be single tokens of the LM: they are the documents' grammar and its numbers."""
    table = np.full(len(vocab), -1, dtype=np.int64)
    used: set[int] = set()
    fixed = set(fixed_words)
    for i, w in enumerate(vocab.words):
        if w in (PAD, UNK):
            continue
        t = single_token(tok, w)
        if w in fixed:
            if t is None:
                raise ConfigError(f"'{w}' (a template word, speaker or number) is not one token of the LM's "
                                  f"tokenizer (it encodes ' {w}' as {tok.encode(' ' + w, add_special_tokens=False)}); "
                                  f"change data.*_template, data.speakers or data.max_number")
        if t is not None and t not in used:
            table[i] = t
            used.add(t)
    pool = (c for c in _candidates(tok, np.random.default_rng([int(vocab_seed), 7002])) if c not in used)
    for i, w in enumerate(vocab.words):
        if table[i] < 0 and w not in (PAD, UNK):
            t = next(pool, None)
            if t is None:
                raise ConfigError(f"the LM's tokenizer has too few single-token words for the study's "
                                  f"{len(vocab)} words; lower data.filler_vocab_size or data.n_entities")
            table[i] = t
            used.add(t)
    special = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    table[vocab.index[PAD]] = special if special is not None else 0
    table[vocab.index[UNK]] = tok.unk_token_id if tok.unk_token_id is not None else table[vocab.index[PAD]]
    words = [tok.decode([i]) for i in range(len(tok))]
    lm = Vocab(
        words=words, index={w: int(table[i]) for i, w in enumerate(vocab.words)},
        filler_ids=table[vocab.filler_ids], entity_ids=table[vocab.entity_ids],
        variable_ids=table[vocab.variable_ids], number_ids=table[vocab.number_ids],
        common_value_ids=table[vocab.common_value_ids], rare_class_ids=[table[c] for c in vocab.rare_class_ids],
        speaker_ids=table[vocab.speaker_ids], word_classes={c: table[ids] for c, ids in vocab.word_classes.items()},
        joiner="")
    return lm, table


def fixed_words(cfg: Any) -> list[str]:
    """The words that must be the LM's own single tokens: the templates' literal words, speakers and numbers."""
    return template_words(cfg) + list(cfg.speakers) + [str(k) for k in range(int(cfg.max_number) + 1)]


def is_word_mask(study_vocab: Vocab, table: np.ndarray, size: int) -> np.ndarray:
    """vocab.is_word_mask() over the LM's ids (a study word counts where it counted before)."""
    mask = np.zeros(size, dtype=bool)
    mask[table[study_vocab.is_word_mask()]] = True
    return mask


def remap_docs(docs: list[dict], table: np.ndarray) -> None:
    """Study ids -> LM ids in place: the tokens and every id-valued field (answers, earlier values)."""
    for d in docs:
        d["ids"] = table[d["ids"]]
        d["answers"] = [int(table[a]) for a in d["answers"]]
        if "prior" in d:
            d["prior"] = [int(table[a]) if a >= 0 else -1 for a in d["prior"]]


@dataclasses.dataclass
class LMTokens:
    """What prepare needs to write documents in the LM's tokens."""

    tokenizer: Any  # the LM's fast tokenizer (transformers)
    table: np.ndarray  # study id -> LM id
    vocab: Vocab  # the study's token sets in LM ids; words: every LM id's string
    is_word: np.ndarray  # over LM ids: the study's words


def lm_tokens(cfg: Any, vocab: Vocab) -> LMTokens:
    """cfg: the data config (its `tokenizer` set); vocab: the study's word vocabulary."""
    tok = load_lm_tokenizer(str(cfg.tokenizer))
    out, table = lm_vocab(vocab, tok, int(cfg.vocab_seed), fixed_words(cfg))
    return LMTokens(tok, table, out, is_word_mask(vocab, table, len(out)))
