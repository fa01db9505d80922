"""The LightningModule every variant trains as, and the callback that times training throughput.

One module serves every memory variant (they differ only inside `pipeline.models.build_model`): answer
cross-entropy at the query positions (+ optional next-token LM loss), validation recall and loss per split and
query type, AdamW with linear warm-up and cosine decay. `pipeline.train.train` builds it inside the process
that trains, so a stage's parent process (which only spawns one process per seed) never imports Lightning.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F

from pipeline.errors import DataError, TrainingError
from pipeline.config.schema import TrainConfig
from pipeline.config.train import QUERY_TYPES


def gather_queries(logits: torch.Tensor, query_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, N, V], query_pos [B, Q] (-1 = padding) -> (query logits [B, Q, V], mask [B, Q])."""
    mask = query_pos >= 0
    idx = query_pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.size(-1))  # [B, Q, V]
    return logits.gather(1, idx), mask


class MemoryLMModule(L.LightningModule):
    """Any MemoryLM variant, trained on answer cross-entropy (+ optional next-token LM loss).

    `hparams`, saved in every checkpoint: the whole study config (plain dict), the variant, the seed and the
    vocabulary size - enough for `pipeline.models.checkpoint` to rebuild the model without Lightning.
    """

    def __init__(self, model: torch.nn.Module, train: TrainConfig, hparams: dict, monitor: str,
                 val_names: list[str], fingerprint: dict[str, str]):
        super().__init__()
        self.save_hyperparameters(hparams)
        self.model = model
        self.tcfg = train
        self.val_history: list[dict] = []  # one entry per validation: {"step", "val/recall_far", "val_long/loss", ...}
        self.val_names = list(val_names)  # split of each validation dataloader, in the data module's order
        self.monitor = monitor  # the metric that picks best.ckpt (train.monitor, `auto` resolved)
        self._val_sums: Optional[torch.Tensor] = None
        weights = [float((train.answer_loss_weights or {}).get(q, 1.0)) for q in QUERY_TYPES]
        self.type_weights: Optional[torch.Tensor] = (  # [len(QUERY_TYPES)], in QUERY_TYPES order; None: plain mean
            None if all(w == 1.0 for w in weights) else torch.tensor(weights))
        self.fingerprint = dict(fingerprint)  # pipeline.train.run_fingerprint, saved in every checkpoint

    def forward(self, input_ids: torch.Tensor, **kw: Any):
        return self.model(input_ids, **kw)

    def losses(self, batch: dict, train: bool) -> dict:
        ids = batch["input_ids"]  # [B, N]
        w = float(self.tcfg.lm_loss_weight)
        full_logits = train and w > 0  # (the model's forward takes its memory's bptt_segments itself)
        kw = {} if full_logits else {"logits_at": batch["query_pos"]}
        logits = self.model(ids, **kw).logits  # [B, N, V], or [B, Q, V] at the query positions
        if full_logits:
            q_logits, mask = gather_queries(logits, batch["query_pos"])  # [B, Q, V], [B, Q]
        else:
            q_logits, mask = logits, batch["query_pos"] >= 0
        if not bool(mask.any()):
            raise DataError("a batch has no queries; every document must ask at least one")
        answers = batch["answers"][mask]
        answer_loss = F.cross_entropy(q_logits[mask].float(), answers, reduction="none")  # [n_queries]
        weights = None if self.type_weights is None else self.type_weights.to(answer_loss.device)[batch["query_type"][mask]]
        if train and self._world_size() > 1:
            answer_loss = self._global_mean(answer_loss, weights)
        elif weights is None:
            answer_loss = answer_loss.mean()
        else:  # a weighted mean over the batch's answers, by query type
            answer_loss = (weights * answer_loss).sum() / weights.sum().clamp_min(1e-12)
        res = {"answer_loss": answer_loss, "q_logits": q_logits, "mask": mask}
        if full_logits:
            lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1))
            res["lm_loss"] = lm
            res["loss"] = answer_loss + w * lm
        else:
            res["loss"] = answer_loss
        return res

    def _world_size(self) -> int:
        return int(self._trainer.world_size) if self._trainer is not None else 1

    def _global_mean(self, losses: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        """The (weighted) mean over the answers of the global batch, as this rank's share: DDP averages
        gradients over ranks, so sum_r(num_r * world / den) / world = the one-process mean's gradient
        although ranks hold different numbers of answers."""
        import torch.distributed as dist

        num = losses.sum() if weights is None else (weights * losses).sum()
        den = torch.tensor(float(losses.numel()), dtype=losses.dtype, device=losses.device) if weights is None \
            else weights.sum().detach().clone()
        dist.all_reduce(den)
        return num * self._world_size() / den.clamp_min(1e-12)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        res = self.losses(batch, train=True)
        loss = res["loss"]
        if not bool(torch.isfinite(loss)):
            raise TrainingError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step} "
                f"(variant {self.hparams.variant}, seed {self.hparams.seed}); lower train.lr or check the data"
            )
        if not self._logs_this_step():
            return loss
        with torch.no_grad():
            acc = (res["q_logits"].argmax(-1) == batch["answers"])[res["mask"]].float().mean()
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/answer_acc", acc, prog_bar=True, batch_size=bs)
        if "lm_loss" in res:
            self.log("train/lm_loss", res["lm_loss"], batch_size=bs)
        self.log("train/n_segments", float(batch["input_ids"].size(1)) / self._window(), batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this step's values. A `self.log` call costs ~1 ms of Lightning
        bookkeeping, ~5% of a default-profile step, and values logged on other steps are overwritten unread."""
        return loggers_write(self.global_step + 1, self.trainer.log_every_n_steps)  # this step included

    def _window(self) -> int:
        return int(self.hparams.cfg["backbone"].get("window", 1) or 1)

    def on_validation_epoch_start(self) -> None:
        # per validation split and query type: [correct, count, loss sum]
        self._val_sums = torch.zeros(len(self.val_names), len(QUERY_TYPES), 3, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        res = self.losses(batch, train=False)
        mask = res["mask"]
        correct = (res["q_logits"].argmax(-1) == batch["answers"])[mask].double().cpu()
        types = batch["query_type"][mask].cpu()
        nll = F.cross_entropy(res["q_logits"][mask].float(), batch["answers"][mask], reduction="none").double().cpu()
        n = len(QUERY_TYPES)
        sums = self._val_sums[dataloader_idx]
        sums[:, 0] += torch.bincount(types, weights=correct, minlength=n)
        sums[:, 1] += torch.bincount(types, minlength=n).double()
        sums[:, 2] += torch.bincount(types, weights=nll, minlength=n)

    def on_validation_epoch_end(self) -> None:
        if self._world_size() > 1:  # each rank scored its share of the batches
            import torch.distributed as dist

            sums = self._val_sums.to(self.device)
            dist.all_reduce(sums)
            self._val_sums = sums.cpu()
        metrics = {}
        for split, s in zip(self.val_names, self._val_sums):
            total = s[:, 1].sum().item()
            metrics[f"{split}/recall"] = s[:, 0].sum().item() / max(total, 1.0)
            metrics[f"{split}/loss"] = s[:, 2].sum().item() / max(total, 1.0)
            for i, name in enumerate(QUERY_TYPES):
                if s[i, 1] > 0:
                    metrics[f"{split}/recall_{name}"] = (s[i, 0] / s[i, 1]).item()
        self.log_dict(metrics, add_dataloader_idx=False)
        if not self.trainer.sanity_checking:
            entry = {"step": int(self.global_step), **{k: float(v) for k, v in metrics.items()}}
            self.val_history.append(entry)
            if str(self.tcfg.progress_bar) == "none" and self.trainer.is_global_zero:  # the only sign of life
                hp = self.hparams
                print(f"{hp.variant}-s{hp.seed} step {entry['step']}/{self.tcfg.max_steps}: "
                      f"{self.monitor} {entry.get(self.monitor, float('nan')):.3f}", file=sys.stderr, flush=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_history"] = list(self.val_history)
        checkpoint["fingerprint"] = dict(self.fingerprint)
        checkpoint["stopped_early"] = bool(self.trainer.should_stop)  # EarlyStopping runs before the checkpoints

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = list(checkpoint.get("val_history", []))
        self._stopped_early = bool(checkpoint.get("stopped_early", False))

    def on_train_start(self) -> None:
        if getattr(self, "_stopped_early", False):  # resumed from a run that had stopped: it stays finished
            self.trainer.should_stop = True

    def configure_optimizers(self):
        t = self.tcfg
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(t.weight_decay)},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=float(t.lr), betas=(float(t.beta1), float(t.beta2)), eps=float(t.eps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, int(t.warmup_steps), int(t.max_steps), float(t.min_lr_ratio)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def loggers_write(steps_done: int, every: int) -> bool:
    """Lightning writes step metrics when the count of optimizer steps taken is a multiple of
    log_every_n_steps (0: never)."""
    return every > 0 and steps_done % every == 0


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to `min_ratio` at `max_steps`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- callbacks


class ThroughputMonitor(L.Callback):
    """Training tokens/s, timed with perf_counter around each training batch (forward, backward,
    optimizer step; excludes validation and checkpointing). Logs the rate over the last
    `log_every_n_steps` batches; keeps totals (and the wall time of fit) across resumes."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.prior_wall_s = 0.0
        self._win_tokens, self._win_s = 0, 0.0
        self._t0 = 0.0
        self._fit_t0: Optional[float] = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()

    def wall_s(self) -> float:
        now = 0.0 if self._fit_t0 is None else time.perf_counter() - self._fit_t0
        return self.prior_wall_s + now

    def tokens_per_s(self) -> Optional[float]:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t0
        n = int(batch["input_ids"].numel()) * int(trainer.world_size)  # the global batch (ranks take equal shares)
        self.tokens += n
        self.seconds += dt
        self._win_tokens += n
        self._win_s += dt
        if loggers_write(trainer.global_step, trainer.log_every_n_steps) and self._win_s > 0:  # step counted
            pl_module.log("train/tokens_per_s", self._win_tokens / self._win_s)
            self._win_tokens, self._win_s = 0, 0.0

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "wall_s": self.wall_s()}

    def load_state_dict(self, state: dict) -> None:
        self.tokens = int(state.get("tokens", 0))
        self.seconds = float(state.get("seconds", 0.0))
        self.prior_wall_s = float(state.get("wall_s", 0.0))
        self._fit_t0 = time.perf_counter()
