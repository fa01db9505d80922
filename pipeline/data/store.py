"""Reading and writing the prepared data folder: one `save_to_disk` per split, the manifest,
and the measured train counts. Every failure to read becomes a DataError naming the path."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import DataError

MANIFEST, COUNTS, SPLITS = "manifest.json", "train_counts.json", "splits"


def features():
    import datasets as ds

    ints = ds.Sequence(ds.Value("int32"))
    return ds.Features({
        "doc_id": ds.Value("string"),
        "task": ds.Value("string"),
        "input_ids": ints,
        "n_words": ds.Value("int32"),
        "query_pos": ints,
        "answers": ints,
        "query_type": ds.Sequence(ds.Value("string")),
        "fact_pos": ints,
        "distance": ints,
        "n_turns": ds.Value("int32"),
        "n_segments": ds.Value("int32"),
    })


def save_split(cols: dict, path: Path) -> None:
    import datasets

    import datasets as dtqdm

    ds = datasets.Dataset.from_dict(cols, features=features())
    was_disabled = dtqdm.are_progress_bars_disabled()
    dtqdm.disable_progress_bars()  # one bar per split is noise in a DVC log
    try:
        ds.save_to_disk(str(path))
    finally:
        if not was_disabled:
            dtqdm.enable_progress_bars()


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest missing; run `python -m pipeline.data.prepare`")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable manifest ({err})") from None


def load_split(data_dir: str | Path, name: str, verify: bool = True):
    """One split as a `datasets.Dataset`. DataError (naming the path and the problem) if the folder
    is missing or corrupt; with `verify`, also checks columns, row count and content hash
    against manifest.json when the manifest is there."""
    import datasets

    from pipeline.data.build import COLUMNS

    path = Path(data_dir) / SPLITS / name
    if not path.is_dir():
        have = sorted(p.name for p in (Path(data_dir) / SPLITS).glob("*")) if (Path(data_dir) / SPLITS).is_dir() else []
        raise DataError(f"{path}: split '{name}' missing" + (f"; available: {', '.join(have)}" if have else
                                                              "; run `python -m pipeline.data.prepare`"))
    try:
        ds = datasets.Dataset.load_from_disk(str(path))
        n = len(ds)
        if n:
            ds[n - 1]  # touch the last row: a truncated arrow file fails here, not later in training
    except Exception as err:
        raise DataError(f"{path}: corrupt split '{name}' ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                        "re-run `python -m pipeline.data.prepare`") from None
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: split '{name}' lacks columns {missing}")
    if verify and (Path(data_dir) / MANIFEST).is_file():
        info = read_manifest(data_dir).get("splits", {}).get(name)
        if info is not None:
            if info.get("docs") != len(ds):
                raise DataError(f"{path}: {len(ds)} docs but manifest says {info.get('docs')}")
            verify_content(ds, path, info.get("hash"))
    return ds


def verify_content(ds, path: Path, want: str | None) -> None:
    """The tokens must still hash to each row's doc_id, and the split (doc ids plus every query column)
    to the manifest's hash: a token changed inside a valid arrow file is caught, not scored."""
    from pipeline.data.build import HASH_COLUMNS, doc_hash, split_hash

    cols = ds.select_columns(sorted({*HASH_COLUMNS, "input_ids"}))[:]  # one conversion, not a row at a time
    for i, (ids, doc_id) in enumerate(zip(cols["input_ids"], cols["doc_id"])):
        if doc_hash(ids) != doc_id:
            raise DataError(f"{path}: document {i}: its tokens do not hash to its doc_id (the split was modified "
                            "after prepare); re-run `python -m pipeline.data.prepare`")
    got = split_hash(cols)
    if got != want:
        raise DataError(f"{path}: content hash {got[:12]} does not match manifest {str(want)[:12]}")


def load_train_counts(data_dir: str | Path) -> dict[int, int]:
    """Measured count of every token id in the train split ({token_id: count}; absent = 0)."""
    path = Path(data_dir) / COUNTS
    if not path.is_file():
        raise DataError(f"{path}: train counts missing; run `python -m pipeline.data.prepare`")
    try:
        raw = json.loads(path.read_text())
        return {int(k): int(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: unreadable train counts ({err})") from None
