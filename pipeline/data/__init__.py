"""Documents with planted facts (METHOD.md section 3): generator, tokenizer, splits on disk.

Heavy imports (datasets, tokenizers) happen inside the functions, so `pipeline.config.data`
stays cheap to import.
"""

from __future__ import annotations

from pipeline.config.schema import DataConfig


def load_split(data_dir, name, verify: bool = True):
    """`datasets.Dataset` of one split; DataError if missing/corrupt (see store.load_split)."""
    from pipeline.data.store import load_split as _load

    return _load(data_dir, name, verify=verify)


def load_tokenizer(data_dir):
    """The `tokenizers.Tokenizer` saved in data_dir/tokenizer.json."""
    from pipeline.data.vocab import load_tokenizer as _load

    return _load(data_dir)


def load_train_counts(data_dir) -> dict[int, int]:
    """{token_id: count} measured in the saved train split."""
    from pipeline.data.store import load_train_counts as _load

    return _load(data_dir)


def load_manifest(data_dir) -> dict:
    from pipeline.data.store import read_manifest

    return read_manifest(data_dir)


__all__ = ["DataConfig", "load_split", "load_tokenizer", "load_train_counts", "load_manifest"]
