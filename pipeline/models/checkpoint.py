"""Rebuild a trained model from its training checkpoint with plain torch (evaluation needs no Lightning).

A checkpoint of `pipeline.train` holds the whole composed config, the variant and the vocabulary size
(`hyper_parameters`) beside the LightningModule's weights (`state_dict`, keys `model.<...>`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.errors import ConfigError, DataError
from pipeline.models import build_model


def load_trained(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """The MemoryLM of <run_dir>/checkpoints/<which>.ckpt, in eval mode, and its hparams
    ({"cfg": composed config (dict), "variant", "seed", "vocab_size"})."""
    if which not in ("best", "last"):
        raise ConfigError(f"load_trained(which={which!r}); allowed: best, last")
    path = Path(run_dir) / "checkpoints" / f"{which}.ckpt"
    if not path.exists():
        raise DataError(f"no checkpoint at {path}; run `python -m pipeline.train` for this variant/seed first")
    # weights_only=False: our own checkpoint (the trainer's loop and callback state are plain Python objects)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file: torch raises several types
        raise DataError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:120]}); "
                        "retrain this run") from None
    hp = dict(state["hyper_parameters"])
    cfg = hp["cfg"]
    model = build_model(cfg["backbone"], cfg["models"][hp["variant"]], int(hp["vocab_size"]))
    model.load_state_dict({k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")})
    model.eval()
    return model, hp
