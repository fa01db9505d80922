"""Atomic file output: results are written to a temporary sibling and renamed, so a crash never
leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def write_stage_time(out_dir: str | os.PathLike, started: float, **info: Any) -> Path:
    """<out_dir>/stage.json: the stage's wall time since `started` (time.perf_counter()), for the
    report's stage-times table (runs side by side make per-run times sum to more than the stage took)."""
    import time

    return atomic_write_json(Path(out_dir) / "stage.json", {"wall_s": round(time.perf_counter() - started, 3), **info})


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def staged_outputs(dest: str | os.PathLike, names: list[str], shared: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest` for a stage to write its outputs into; on success
    each of `names` replaces its namesake in `dest` (one the stage did not write is removed there) and
    each file under a `shared` folder (one other stages also write into) replaces its namesake; on
    error the folder is removed and `dest` keeps every old output: never half old, half new."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    try:
        yield tmp
        moves = [(tmp / n, dest / n) for n in names]
        moves += [(f, dest / d / f.name) for d in shared for f in sorted((tmp / d).glob("*"))]
        for i, (new, cur) in enumerate(moves):  # renames only, after everything was written
            if cur.exists():
                os.replace(cur, old / f"{i}")
            if new.exists():
                cur.parent.mkdir(parents=True, exist_ok=True)
                os.replace(new, cur)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_or_check(path: str | os.PathLike, text: str, *, check: bool, fix_hint: str) -> int:
    """Generated files kept in git: with `check`, exit code 1 (and `fix_hint`) if `path` does not hold
    `text` already; otherwise write it atomically. Returns a process exit code."""
    import sys

    path = Path(path)
    if check:
        current = path.read_text() if path.is_file() else None
        if current != text:
            print(f"{path} is stale: {fix_hint}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    atomic_write_text(path, text)
    print(f"wrote {path}")
    return 0
