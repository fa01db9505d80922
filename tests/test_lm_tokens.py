"""Documents in a pretrained LM's own tokens (data.tokenizer, pipeline/data/lm_tokens.py), tested offline with a
byte-level BPE tokenizer the test trains and saves with save_pretrained: every study word becomes one LM token,
answers stay single tokens after their queries, documents round-trip through the LM's tokenizer, the study's
layouts and rare counts survive the mapping, and a template word the LM splits is a one-line error."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline.data import load_split, load_tokenizer
from pipeline.data.prepare import build_all, prepare
from pipeline.errors import ConfigError, DataError
from tests.test_data import EVAL_SPLITS, tiny

SPEAKERS = ["Ann", "Bob"]  # the default "A:" is two tokens of a byte-level BPE (" A", ":")


def _words(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(letters, int(rng.integers(3, 7)))))
    return sorted(out)


@pytest.fixture(scope="module")
def lm_tokenizer(tmp_path_factory):
    """A GPT-2-style byte-level BPE whose vocabulary holds the templates' words, the speakers, numbers 0-99 and
    600 letter-only words as single tokens (each with its leading space), saved as a transformers tokenizer."""
    pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    words = ["is", "?", ".", "sum", *SPEAKERS, *map(str, range(100)), *_words(600)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" " + " ".join(words)] * 50, vocab_size=8000, min_frequency=2, show_progress=False,
                            special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("lm") / "tokenizer"
    tok.save_pretrained(folder)
    return folder


def lm_tiny(folder, **kw):
    return tiny(tokenizer=str(folder), speakers=SPEAKERS, **kw)


def test_every_word_is_one_lm_token_and_documents_round_trip(lm_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "data"
    manifest = prepare(lm_tiny(lm_tokenizer), out, quiet=True)
    tok = AutoTokenizer.from_pretrained(lm_tokenizer)
    assert load_tokenizer(out).get_vocab() == tok.backend_tokenizer.get_vocab()  # the LM's own tokenizer is saved
    assert manifest["vocab"]["size"] == len(tok)
    for name in ["train", "val", *EVAL_SPLITS]:
        ds = load_split(out, name)
        for i in range(min(len(ds), 5)):
            row = ds[i]
            ids = [int(x) for x in row["input_ids"]]
            assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids, name  # the text is the ids
            for q, a in zip(row["query_pos"], row["answers"]):
                assert ids[q + 1] == a  # still the token after its query
                assert tok.decode([a]).startswith(" ") and len(tok.encode(tok.decode([a]),
                                                                         add_special_tokens=False)) == 1
    # the templates' words are the LM's own tokens, not stand-ins
    assert tok.encode(" is", add_special_tokens=False)[0] in {int(x) for x in load_split(out, "recall_64")[0]["input_ids"]}


def test_the_mapping_keeps_the_studys_layouts_and_rare_counts(lm_tokenizer):
    study, src_study, _ = build_all(tiny(speakers=SPEAKERS))
    lm, src_lm, _ = build_all(lm_tiny(lm_tokenizer))
    table = src_lm.lm.table
    words = table[2:].tolist()  # after [PAD] and [UNK] (the LM's end-of-text token: never in a document)
    assert len(set(words)) == len(words) and not set(words) & set(table[:2].tolist())  # one token per word
    for name in ("train", "recall_64", "rare"):
        a, b = study[name], lm[name]
        assert a["query_pos"] == b["query_pos"] and a["n_words"] == b["n_words"]
        assert all(np.array_equal(table[x], y) for x, y in zip(a["input_ids"], b["input_ids"]))
    for ids_study, ids_lm in zip(src_study.vocab.rare_class_ids, src_lm.out_vocab.rare_class_ids):
        assert np.array_equal(table[ids_study], ids_lm)


def test_a_template_word_the_lm_splits_is_a_clear_error(lm_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="'A:' .* is not one token of the LM's tokenizer"):
        build_all(tiny(tokenizer=str(lm_tokenizer)))  # the default speakers
    with pytest.raises(DataError, match="data.tokenizer=.*cannot load it"):
        build_all(tiny(tokenizer=str(tmp_path / "missing")))
    assert not (tmp_path / "data").exists()


def test_stress_documents_follow_the_studys_lm_tokens(lm_tokenizer, tmp_path):
    """The stress stage rebuilds the vocabulary and maps its documents the same way, checked against data/."""
    from omegaconf import OmegaConf

    from pipeline.config import as_plain, typed
    from pipeline.data.prepare import prepare
    from pipeline.stress.data import build, load_stress_split
    from tests.test_stress import tiny as stress_tiny

    plain = as_plain(stress_tiny(tmp_path))
    plain["data"].update(tokenizer=str(lm_tokenizer), speakers=SPEAKERS)
    cfg = typed(OmegaConf.create(plain))
    prepare(cfg, quiet=True)
    build(cfg, tmp_path / "data_stress", quiet=True)
    allowed = set(load_tokenizer(tmp_path / "data").get_vocab().values())
    for name in ("load_8", "update_3"):
        ds = load_stress_split(tmp_path / "data_stress", name)
        for ids, qp, ans in zip(ds["input_ids"], ds["query_pos"], ds["answers"]):
            assert set(int(x) for x in ids) <= allowed
            assert [int(ids[q + 1]) for q in qp] == [int(a) for a in ans]
    plain["data"]["vocab_seed"] = 5  # another mapping than data/'s: refused
    with pytest.raises(DataError, match="differs from the vocabulary"):
        build(typed(OmegaConf.create(plain)), tmp_path / "other", quiet=True)
