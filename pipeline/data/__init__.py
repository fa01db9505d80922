"""Documents with planted facts (METHOD.md section 3): generator, tokenizer, splits on disk.

Heavy imports (datasets, tokenizers) happen inside the functions, so `pipeline.data.config`
stays cheap to import.
"""

from __future__ import annotations

from pipeline.data.config import DataConfig, validate


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


def prepare(cfg, out_dir=None, quiet: bool = False) -> dict:
    """Build and write the whole data folder; returns the manifest."""
    from pipeline.data.prepare import prepare as _prepare

    return _prepare(cfg, out_dir, quiet=quiet)


def build_all(cfg):
    """All splits as in-memory columns (no disk I/O): (splits, source, stats)."""
    from pipeline.data.prepare import build_all as _build

    from pipeline.data.config import as_data_config

    return _build(as_data_config(cfg))


__all__ = ["DataConfig", "validate", "load_split", "load_tokenizer", "load_train_counts", "load_manifest",
           "prepare", "build_all"]
