"""What every evaluation stage (evaluate, overhead, attention) checks before it loads a trained run, and the
device it runs on: kept apart from the stages, so none of them imports another."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ConfigError, DataError


def check_trained(run_dir: Path, variant: str, seed: int) -> None:
    """Fail with a message that says what to run, before any work is done: only a finished training
    run is scored (its best.ckpt, and a metrics.json that says it reached its max_steps or stopped early). A run
    killed or diverged mid-way leaves a last.ckpt but no such metrics.json, and is refused."""
    hint = f"run `python -m pipeline.train --variant {variant} --seed {seed}` (or `dvc repro`) first"
    if not run_dir.is_dir():
        raise DataError(f"no trained model for {variant} seed {seed}: {run_dir} does not exist; {hint}")
    best = run_dir / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise DataError(f"no best.ckpt in {best.parent}: training of {variant} seed {seed} did not finish; {hint}")
    metrics = run_dir / "metrics.json"
    try:
        m = json.loads(metrics.read_text())
    except (OSError, ValueError):
        raise DataError(f"{metrics} missing or unreadable: training of {variant} seed {seed} did not finish "
                        f"(killed or diverged); {hint}") from None
    want = (m.get("config") or {}).get("max_steps")
    if want is not None and int(m.get("steps") or 0) < int(want) and not m.get("stopped_early"):
        raise DataError(f"{metrics}: training of {variant} seed {seed} stopped at step {m.get('steps')} of {want}; "
                        f"{hint}")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval.device is 'cuda' but no CUDA device is available; allowed: cpu, cuda, auto")
    return name
