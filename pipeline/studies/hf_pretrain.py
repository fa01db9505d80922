"""`cmr-repro hf-pretrain --params F --out DIR [--steps S]`: a small GPT-2 pretrained on the study's training
documents, saved with `save_pretrained`.

The offline stand-in for a hub model (CMR inside a pretrained Hugging Face LM): these machines reach no model
hub, so a GPT-2 of the backbone's size (backbone.d_model, n_layers, n_heads, d_ff; positions up to
backbone.window, since it will read one window at a time) learns next-token prediction on windows of the
training split, with the study's optimizer settings (train.lr, betas, weight decay, warm-up, batch size),
in a Lightning loop. The folder it writes is what `backbone.hf_model` names: `build_model` loads it with
`AutoModelForCausalLM.from_pretrained`, as it would load `gpt2` or `EleutherAI/pythia-70m` with hub access.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir
from pipeline.config.schema import RootConfig


def windows(data_dir: str | Path, window: int):
    """The training split's tokens as rows of `window` tokens ([M, window] long tensor), documents concatenated."""
    import numpy as np
    import torch

    from pipeline.data.store import load_split

    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in load_split(data_dir, "train")["input_ids"]])
    m = len(ids) // window
    return torch.from_numpy(ids[: m * window].reshape(m, window))


def gpt2_config(backbone: Any, vocab_size: int):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=int(backbone.window), n_embd=int(backbone.d_model),
                      n_layer=int(backbone.n_layers), n_head=int(backbone.n_heads), n_inner=int(backbone.d_ff),
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                      tie_word_embeddings=True)


def pretrain(cfg: RootConfig | Any, out: str | Path, steps: Optional[int] = None, seed: int = 0) -> Path:
    """Train the GPT-2 for `steps` (default train.max_steps) and save it to `out` (replaced whole)."""
    import lightning as L
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.config import typed
    from pipeline.train import _vocab_size
    from pipeline.train_module import lr_factor

    cfg = typed(cfg)
    t, b, data_dir = cfg.train, cfg.backbone, str(cfg.paths.data_dir)
    steps = int(steps if steps is not None else t.max_steps)
    L.seed_everything(seed, workers=True)
    torch.set_num_threads(int(t.threads))
    rows = windows(data_dir, int(b.window))
    lm = AutoModelForCausalLM.from_config(gpt2_config(b, _vocab_size(data_dir)))

    class LMModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lm, self.losses = lm, []

        def training_step(self, batch, batch_idx):
            loss = self.lm(input_ids=batch, labels=batch).loss
            self.log("train/lm_loss", loss, prog_bar=True)
            if batch_idx % 50 == 0:
                self.losses.append({"step": int(self.global_step), "lm_loss": float(loss.detach())})
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=float(t.lr), betas=(float(t.beta1), float(t.beta2)),
                                    weight_decay=float(t.weight_decay))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(s, int(t.warmup_steps), steps, float(t.min_lr_ratio)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    g = torch.Generator().manual_seed(seed)
    batches = [rows[torch.randint(0, len(rows), (int(t.batch_size),), generator=g)] for _ in range(steps)]
    module = LMModule()
    trainer = L.Trainer(max_steps=steps, max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, deterministic=True,
                        gradient_clip_val=float(t.grad_clip) or None, enable_progress_bar=False)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    with atomic_dir(out) as tmp:
        lm.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps({"steps": steps, "seed": seed, "windows": len(rows),
                                                       "lm_loss": module.losses}, indent=1))
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import stage_cli

    ap = stage_cli.parser("hf-pretrain", __doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder to save into (default: backbone.hf_model)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: train.max_steps)")
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        out = args.out or cfg.backbone.hf_model
        if not out:
            raise PipelineError("no --out and no backbone.hf_model to save the pretrained model to")
        print(f"pretrained GPT-2 saved to {pretrain(cfg, out, args.steps)}")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
