"""`cmr-repro hf-pretrain --params F --out DIR [--steps S] [--context C]`: a small GPT-2 pretrained on the
study's training documents, saved with `save_pretrained`.

The offline stand-in for a hub model (CMR inside a pretrained Hugging Face LM): these machines reach no model
hub, so a GPT-2 of the backbone's size (backbone.d_model, n_layers, n_heads, d_ff) with a context of C tokens
(default 256, a whole number of the data's segments: the window the HF path then reads documents in, as it reads
GPT-2's 1,024) learns next-token prediction on rows of C tokens of the training split (documents concatenated),
with the study's optimizer settings (train.lr, betas, weight decay, warm-up) and the study's tokens per step
(train.max_batch_tokens // C rows), in a Lightning loop. The folder it writes is what `backbone.hf_model` names: `build_model` loads it with
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

DEFAULT_CONTEXT = 256  # a real context for a stand-in that is still cheap on 2 cores (GPT-2: 1,024)
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # GPT-2's attention and MLP projections


def windows(data_dir: str | Path, window: int):
    """The training split's tokens as rows of `window` tokens ([M, window] long tensor), documents concatenated,
    and which of them answer a planted query ([M, window] bool: the token after each query)."""
    import numpy as np
    import torch

    from pipeline.data.store import load_split

    split = load_split(data_dir, "train")
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in split["input_ids"]])
    starts = np.concatenate([[0], np.cumsum([len(x) for x in split["input_ids"]])[:-1]])
    answer = np.zeros(len(ids), dtype=bool)
    answer[np.concatenate([s + np.asarray(q, dtype=np.int64) + 1 for s, q in zip(starts, split["query_pos"])])] = True
    m = len(ids) // window
    return torch.from_numpy(ids[: m * window].reshape(m, window)), torch.from_numpy(answer[: m * window].reshape(m, window))


def gpt2_config(backbone: Any, vocab_size: int, context: int):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=int(context), n_embd=int(backbone.d_model),
                      n_layer=int(backbone.n_layers), n_head=int(backbone.n_heads), n_inner=int(backbone.d_ff),
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                      tie_word_embeddings=True)


def save_with_lora(lm, folder: Path, final: Path, rank: int, targets: Sequence[str]) -> None:
    """`lm` saved to folder/base and an untrained LoRA adapter on `targets` (peft; B = 0, so the adapted LM
    computes what the base computes) to `folder`, naming final/base (where `folder` will be) as its base:
    `from_pretrained(final)` loads both."""
    from peft import LoraConfig, get_peft_model

    lm.save_pretrained(folder / "base")
    lm.name_or_path = lm.config._name_or_path = str(Path(final) / "base")
    get_peft_model(lm, LoraConfig(r=int(rank), lora_alpha=2 * int(rank), lora_dropout=0.0,
                                  target_modules=list(targets))).save_pretrained(folder)


def pretrain(cfg: RootConfig | Any, out: str | Path, steps: Optional[int] = None, seed: int = 0,
             context: int = DEFAULT_CONTEXT, answer_weight: float = 0.0, lora_rank: int = 0,
             lora_targets: Sequence[str] = LORA_TARGETS) -> Path:
    """Train the GPT-2 for `steps` (default train.max_steps) and save it to `out` (replaced whole). The loss is
    next-token prediction on every token, plus `answer_weight` times the mean loss on the answers to planted
    queries (0: a plain language model)."""
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
    context = int(context)
    if context < int(b.window) or context % int(b.window):
        raise PipelineError(f"--context {context} must be a positive multiple of backbone.window={b.window} "
                            "(the HF path reads whole segments)")
    rows, answers = windows(data_dir, context)
    per_step = max(1, int(t.max_batch_tokens or int(t.batch_size) * context) // context)
    lm = AutoModelForCausalLM.from_config(gpt2_config(b, _vocab_size(data_dir), context))

    class LMModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lm, self.losses = lm, []

        def training_step(self, batch, batch_idx):
            ids, answer = batch
            logits = self.lm(input_ids=ids).logits[:, :-1]
            token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            lm_loss = token_loss.mean()
            on_answers = answer[:, 1:]
            answer_loss = token_loss[on_answers].mean() if on_answers.any() else token_loss.sum() * 0.0
            loss = lm_loss + float(answer_weight) * answer_loss
            self.log("train/lm_loss", lm_loss, prog_bar=True)
            if batch_idx % 50 == 0:
                self.losses.append({"step": int(self.global_step), "lm_loss": float(lm_loss.detach()),
                                    "answer_loss": float(answer_loss.detach())})
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=float(t.lr), betas=(float(t.beta1), float(t.beta2)),
                                    weight_decay=float(t.weight_decay))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(s, int(t.warmup_steps), steps, float(t.min_lr_ratio)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    g = torch.Generator().manual_seed(seed)
    picks = [torch.randint(0, len(rows), (per_step,), generator=g) for _ in range(steps)]
    batches = [(rows[i], answers[i]) for i in picks]
    module = LMModule()
    trainer = L.Trainer(max_steps=steps, max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, deterministic=True,
                        gradient_clip_val=float(t.grad_clip) or None, enable_progress_bar=False)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    with atomic_dir(out) as tmp:
        if lora_rank:
            save_with_lora(lm, tmp, Path(out), lora_rank, lora_targets)
        else:
            lm.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps({"steps": steps, "seed": seed, "context": context,
                                                       "answer_weight": float(answer_weight),
                                                       "lora": {"rank": int(lora_rank), "targets": list(lora_targets)}
                                                       if lora_rank else None,
                                                       "rows_per_step": per_step, "windows": len(rows),
                                                       "lm_loss": module.losses}, indent=1))
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import stage_cli

    ap = stage_cli.parser("hf-pretrain", __doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder to save into (default: backbone.hf_model)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: train.max_steps)")
    ap.add_argument("--context", type=int, default=DEFAULT_CONTEXT,
                    help=f"the model's context in tokens, a multiple of backbone.window (default {DEFAULT_CONTEXT})")
    ap.add_argument("--lora-rank", type=int, default=0,
                    help="also save an untrained LoRA adapter of this rank (0: none); it trains with the memory")
    ap.add_argument("--answer-weight", type=float, default=0.0,
                    help="extra weight of the loss on answers to planted queries (default 0: a plain LM)")
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        out = args.out or cfg.backbone.hf_model
        if not out:
            raise PipelineError("no --out and no backbone.hf_model to save the pretrained model to")
        saved = pretrain(cfg, out, args.steps, context=args.context, answer_weight=args.answer_weight,
                         lora_rank=args.lora_rank)
        print(f"pretrained GPT-2 saved to {saved}")

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
