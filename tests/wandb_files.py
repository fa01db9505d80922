"""Read an offline W&B run back from its `run-<id>.wandb` file, as `wandb sync` would: the run record (group,
job_type, tags, config) and the summary. The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of
records: crc32, length, type) of wandb_internal_pb2.Record messages; wandb's own reader left the Python SDK."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (FULL, LAST):
            yield buf
            buf = b""


def _records(path: Path, timeout: float) -> list:
    """The file's records once its `exit` record is there: wandb's service process writes the file after
    `run.finish()` returns in the caller, so a reader in the same process can find only the 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records = []
        for payload in _payloads(path.read_bytes()):
            rec = pb.Record()
            rec.ParseFromString(payload)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_run(run_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """run_dir: an `offline-run-*` folder -> {group, job_type, tags, config, summary} (summary: last value per key)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict[str, Any] = {"config": {}, "summary": {}}
    for rec in _records(path, timeout):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(group=rec.run.run_group, job_type=rec.run.job_type, tags=list(rec.run.tags))
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.summary.update})
    return out
