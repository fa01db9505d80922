"""Training stage: `python -m pipeline.train --variant cmr --seed 0 [--params params.yaml]`.

One LightningModule trains every memory variant (pipeline/train_module.py), one LightningDataModule
(pipeline/data/loader.py) serves the saved splits with a curriculum over document length, and
`train(cfg, variant, seed)` is the single function both the DVC stage (this module's `main`) and Hydra
sweeps call. Lightning is imported inside `train`: the stage's parent process, which only spawns one
process per seed, starts without it (~5 s per stage).

Writes experiments/train/<variant>/s<seed>/:
  checkpoints/last.ckpt, checkpoints/best.ckpt (max of train.monitor), metrics.json, csv/, wandb/
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

from pipeline.config import as_plain, typed
from pipeline.models.registry import typed_models
from pipeline.errors import ConfigError, DataError, TrainingError
from pipeline.io import atomic_write_json, write_stage_time
from pipeline import paths, stage_cli
from pipeline.config.schema import ProgressBar, RootConfig, TrainConfig
from pipeline.config.load import recipe_train
from pipeline.config.train import RUNTIME_KEYS, resolve_monitor

if TYPE_CHECKING:
    import lightning as L

    from pipeline.data.loader import DocumentSet, MemoryDataModule
    from pipeline.train_module import MemoryLMModule, ThroughputMonitor


# ----------------------------------------------------------------------------- config helpers


def check_variant(cfg: RootConfig, variant: str) -> None:
    if variant not in cfg.models:
        raise ConfigError(f"unknown variant {variant!r}; allowed (keys of cfg.models): "
                          f"{', '.join(sorted(cfg.models)) or '(none)'}")


def _vocab_size(data_dir: str | Path) -> int:
    from pipeline import data as pdata

    return int(pdata.load_tokenizer(data_dir).get_vocab_size())


# ----------------------------------------------------------------------------- trainer / entry


def run_dir_for(cfg: RootConfig, variant: str, seed: int) -> Path:
    return paths.run_dir(cfg, "train", variant, seed)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def run_fingerprint(cfg: dict, variant: str, seed: int, data_dir: str | Path) -> dict[str, str]:
    """What a checkpoint must have been trained with for a run to continue it, one hash per part so a
    mismatch can be named: the run's identity, its training, backbone and model config, the data
    (manifest) and the code that defines model and training (an edited model is a new run)."""
    here = Path(__file__).resolve().parent
    sources = sorted((here / "models").glob("*.py")) + [here / "train.py", here / "train_module.py",
                                                         here / "config" / "train.py", here / "data" / "loader.py"]
    parts = {"variant": variant, "seed": int(seed), "backbone": cfg["backbone"], "model": cfg["models"][variant],
             "train": {k: v for k, v in cfg["train"].items() if k not in RUNTIME_KEYS}}
    fp = {k: _sha(json.dumps(v, sort_keys=True, default=str).encode()) for k, v in parts.items()}
    manifest = Path(data_dir) / "manifest.json"
    fp["data"] = _sha(manifest.read_bytes()) if manifest.is_file() else "none"
    fp["code"] = _sha(b"".join(p.read_bytes() for p in sources))
    return fp


def resumable(last: Path, fingerprint: dict[str, str]) -> Optional[str]:
    """`last` if it is a readable checkpoint of a run with this fingerprint, else None (saying why)."""
    if not last.exists():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        old = dict(state.get("fingerprint") or {})
    except Exception as e:  # truncated or foreign file: torch raises several types
        reason = f"is unreadable ({type(e).__name__})"
    else:
        changed = [k for k in fingerprint if old.get(k) != fingerprint[k]]
        if not changed and _readable(last.parent / "best.ckpt"):
            return str(last)
        # a run whose best.ckpt is lost or truncated cannot be evaluated, and resuming a finished run trains nothing
        reason = (f"was trained with a different {', '.join(changed)}" if changed
                  else "has no readable best.ckpt beside it")
    print(f"warning: {last} {reason}: training from scratch", file=sys.stderr)
    return None


def _readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # missing, truncated or foreign: torch raises several types
        return False
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while training into it: a second `train` of the same run (a rerun
    beside an orphaned one whose `dvc repro` was killed) stops with an error instead of training into the same
    checkpoints. The lock goes with the process, so a killed run never leaves the folder locked."""
    import fcntl

    path = run_dir / ".train.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise TrainingError(f"{run_dir} is being trained by another process (pid {owner}); wait for it or "
                                f"stop it (`kill {owner}`) before training this run again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def clear_run(run_dir: Path) -> None:
    """Remove a run's checkpoints and metrics, so nothing of an abandoned or failed run can be scored."""
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "metrics.json").unlink(missing_ok=True)


def check_monitor(monitor: str, val_sets: dict[str, DocumentSet]) -> None:
    """The monitored metric must be one that validation logs (its split exists and has that query type)."""
    split, metric = monitor.split("/", 1)
    if split not in val_sets:
        raise ConfigError(f"train.monitor={monitor} but the data have no {split!r} split (have: "
                          f"{', '.join(val_sets)}); re-run prepare or pick another monitor")
    qtype = metric.split("_", 1)[1] if "_" in metric else None
    counts = val_sets[split].type_counts()
    if qtype and counts.get(qtype, 0) == 0:
        raise ConfigError(f"train.monitor={monitor} but the {split} split has no {qtype!r} queries; "
                          f"use {split}/recall or one of the types present: {counts}")


def build_trainer(t: TrainConfig, run_dir: Path, loggers: list, callbacks: list, monitor: str) -> L.Trainer:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

    # Two callbacks: Lightning 2.6's save_last only rewrites last.ckpt when the top-k one improved,
    # so "last" is its own monitor-less checkpoint, written at every validation (after "best", so
    # it carries the best tracker's state for resuming).
    ckpt_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                           save_last=False, auto_insert_metric_name=False, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, save_last=False,
                           auto_insert_metric_name=False, enable_version_counter=False)
    cbs = [best, last, *early_stopping(t, monitor), *callbacks]
    if t.progress_bar == "tqdm":
        cbs.append(TQDMProgressBar(refresh_rate=int(t.progress_refresh_rate)))
    elif t.progress_bar == "rich":
        cbs.append(RichProgressBar(refresh_rate=int(t.progress_refresh_rate)))
    lvb = float(t.limit_val_batches)
    return L.Trainer(
        accelerator=str(t.accelerator), devices=int(t.devices), num_nodes=int(t.num_nodes),
        strategy=str(t.strategy), precision=str(t.precision),
        max_steps=int(t.max_steps), max_epochs=-1, min_epochs=0,
        val_check_interval=int(t.val_check_interval), check_val_every_n_epoch=None,
        limit_val_batches=int(lvb) if lvb > 1.0 else lvb, num_sanity_val_steps=int(t.num_sanity_val_steps),
        log_every_n_steps=int(t.log_every_n_steps),
        gradient_clip_val=float(t.grad_clip) if float(t.grad_clip) > 0 else None, gradient_clip_algorithm="norm",
        deterministic=bool(t.deterministic), benchmark=False, use_distributed_sampler=False,
        callbacks=cbs, logger=loggers if loggers else False, default_root_dir=str(run_dir),
        enable_progress_bar=t.progress_bar != "none", enable_model_summary=False,
    )


def early_stopping(t: TrainConfig, monitor: str) -> list:
    """Lightning's EarlyStopping on the checkpoint monitor, at each validation from step `stop_min_steps` on: at the
    target (`stop_at`) or after `stop_patience` validations without a rise of `stop_min_delta`; none when both are
    off."""
    from lightning.pytorch.callbacks import EarlyStopping

    class EarlyStoppingFrom(EarlyStopping):
        """Validations before `start` are not looked at: neither the target nor the plateau's best and patience
        count them (a memory at chance while the curriculum's first stage lasts has not plateaued)."""

        def __init__(self, start: int, **kwargs: Any):
            super().__init__(**kwargs)
            self.start = start

        def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
            if trainer.global_step >= self.start:
                super()._run_early_stopping_check(trainer)

    if t.stop_at is None and int(t.stop_patience) == 0:
        return []
    return [EarlyStoppingFrom(int(t.stop_min_steps), monitor=monitor, mode="max",
                              stopping_threshold=None if t.stop_at is None else float(t.stop_at),
                              patience=int(t.stop_patience) if int(t.stop_patience) > 0 else 10**9,
                              min_delta=float(t.stop_min_delta), check_on_train_epoch_end=False, verbose=False)]


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence advice that does not apply here (num_workers=0 is deliberate: tiny CPU batches)."""
    with warnings.catch_warnings():
        for msg in (".*does not have many workers.*", ".*Checkpoint directory.*exists and is not empty.*",
                    ".*isinstance\\(treespec, LeafSpec\\).*",  # lightning 2.6 vs torch 2.13 deprecation
                    ".*sync_dist=True.*"):  # DDP: validation metrics are already summed over ranks
            warnings.filterwarnings("ignore", message=msg)
        yield


def summarize(module: MemoryLMModule, thr: ThroughputMonitor, t: TrainConfig, variant: str, seed: int,
              global_step: int, frozen: bool = False) -> dict:
    """metrics.json: val metrics at the best (max of the monitor) and last validation, speed, size
    (a frozen run, with nothing to train, planned 0 steps)."""
    hist = module.val_history
    key = module.monitor
    best = max(hist, key=lambda e: e.get(key, -1.0)) if hist else None  # first max = ModelCheckpoint's choice
    last = hist[-1] if hist else None
    reach = [e["step"] for e in hist if e.get(key, -1.0) >= float(t.target_recall)]
    model = module.model
    params = model.num_parameters() if hasattr(model, "num_parameters") else sum(p.numel() for p in model.parameters())
    mem = model.memory_floats() if hasattr(model, "memory_floats") else None
    tps = thr.tokens_per_s()
    return {
        "variant": variant, "seed": int(seed), "steps": int(global_step), "wall_s": round(thr.wall_s(), 3),
        "train_tokens_per_s": None if tps is None else round(tps, 1),
        "val_recall": None if best is None else best.get("val/recall"),
        "val_recall_far": None if best is None else best.get("val/recall_far"),
        "val_long_recall_far": None if best is None else best.get("val_long/recall_far"),
        "monitor": key, "best_step": None if best is None else best["step"],
        "val_best_monitor": None if best is None else best.get(key),
        "val_best": best, "val_last": last, "val_curve": hist,
        "params": int(params), "memory_floats": None if mem is None else int(mem),
        "tokens_trained": int(thr.tokens), "hardware": hardware(),
        "steps_to_90": reach[0] if reach else None, "target_recall": float(t.target_recall),
        "config": {"max_steps": 0 if frozen else int(t.max_steps)}, "frozen": bool(frozen),
        "stopped_early": not frozen and int(global_step) < int(t.max_steps),
    }


def hardware() -> dict:
    """Where this run trained, for the report's setup section."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import os

    return {"device": gpu or "cpu", "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def is_lead_process() -> bool:
    """Whether this is rank 0 of the run, from the environment that Lightning's DDP launcher sets (known
    before the Trainer exists): under DDP the other ranks re-run train() and must only train, not clear
    the run, log to wandb or write metrics.json. Always True without DDP."""
    import os

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(rank_zero_only.rank) == 0 and int(os.environ.get("NODE_RANK", 0) or 0) == 0


def data_module(cfg: RootConfig, seed: int) -> tuple[MemoryDataModule, int]:
    """The study's data, set up (a curriculum that allows no document fails here), and the tokenizer's size;
    a token id the model has no embedding for fails before any training."""
    from pipeline.data.loader import MemoryDataModule

    t, data_dir = cfg.train, cfg.paths.data_dir
    dm = MemoryDataModule(data_dir, int(cfg.backbone.window), int(t.batch_size), int(t.val_batch_size), t.curriculum,
                          int(seed), max_batch_tokens=t.max_batch_tokens)
    dm.setup("fit")
    vocab_size = _vocab_size(data_dir)
    for ds in (dm.train_set, *dm.val_sets.values()):
        if ds.max_token >= vocab_size:
            raise DataError(f"split {ds.split!r} has token id {ds.max_token} >= vocab size {vocab_size}")
    return dm, vocab_size


def train(cfg: RootConfig | Any, variant: str, seed: int, *, run_dir: str | Path | None = None,
          extra_callbacks: Optional[list] = None) -> dict:
    """Train `variant` with `seed` on the study config `cfg`; returns (and writes) metrics.json.

    Resumes from <run_dir>/checkpoints/last.ckpt when it was trained with the same run_fingerprint
    (train.resume), else starts from scratch; a finished run is a quick no-op that rewrites metrics.json
    from the checkpoint's history. A diverged run raises TrainingError and leaves no checkpoint.
    """
    cfg = typed(cfg)  # a RootConfig as it is; a Hydra sweep's or a test's DictConfig or dict: validated
    check_variant(cfg, variant)
    cfg = typed_models(cfg, [variant])
    if cfg.models[variant].recipe:  # the memory's own recipe: its train keys in place of the study's
        cfg = dataclasses.replace(cfg, train=recipe_train(cfg.train, cfg.models[variant].recipe,
                                                          f"models.{variant}.recipe"))
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg, variant, seed)
    torch.set_num_threads(int(cfg.train.threads))
    dm, vocab_size = data_module(cfg, seed)  # bad data fails here, before the run folder exists
    monitor = resolve_monitor(str(cfg.train.monitor), cfg.models[variant].spans_document, "val_long" in dm.val_sets)
    check_monitor(monitor, dm.val_sets)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) if is_lead_process() else contextlib.nullcontext():
        return _train(cfg, variant, seed, run_dir, dm, vocab_size, monitor, extra_callbacks)


def _train(cfg: RootConfig, variant: str, seed: int, run_dir: Path, dm: MemoryDataModule, vocab_size: int,
           monitor: str, extra_callbacks: Optional[list]) -> dict:
    t = cfg.train

    module, ckpt_path, plain = _module_to_fit(cfg, variant, seed, run_dir, dm, vocab_size, monitor)
    lead = is_lead_process()

    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from pipeline.tracking import wandb_run
    from pipeline.train_module import ThroughputMonitor

    name = paths.run_name(variant, seed)
    extra = {"variant": variant, "seed": int(seed), "cfg": plain}
    thr = ThroughputMonitor()
    with (wandb_run(cfg, "train", name, run_dir, extra, variant=variant, seed=seed) if lead
          else contextlib.nullcontext()) as run, \
            _quiet_lightning():
        loggers: list = []
        if cfg.logger.csv:
            loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
        if run is not None:
            loggers.append(WandbLogger(experiment=run))
        trainer = build_trainer(t, run_dir, loggers, [thr, *(extra_callbacks or [])], monitor)
        frozen = not any(p.requires_grad for p in module.parameters())
        if frozen:
            frozen_run(trainer, module, dm, run_dir)
        else:
            fit(trainer, module, dm, ckpt_path, run_dir if lead else None)
        metrics = summarize(module, thr, t, variant, seed, trainer.global_step, frozen)
        if lead:
            atomic_write_json(run_dir / "metrics.json", metrics)
        if run is not None:
            run.summary.update(run_summary(metrics))
    return metrics


def run_summary(metrics: dict) -> dict:
    """metrics.json's numbers for the run's W&B summary, under `best_checkpoint/` where they are the selected
    checkpoint's (val_*), `run/` otherwise: the logged curves keep their own `val/...` keys, so no summary key
    looks like a curve's last point while holding another value."""
    return {(f"best_checkpoint/{k}" if k.startswith("val_") else f"run/{k}"): v for k, v in metrics.items()
            if isinstance(v, (int, float)) and v is not None}


def _module_to_fit(cfg: RootConfig, variant: str, seed: int, run_dir: Path, dm: Any, vocab_size: int,
                   monitor: str) -> tuple[Any, Optional[Path], dict]:
    """The seeded model in its LightningModule, the checkpoint to resume (None: a fresh start, whose run folder
    is cleared by the lead process), and the config as the checkpoint's plain hyperparameters hold it."""
    import lightning as L

    from pipeline import models
    from pipeline.train_module import MemoryLMModule

    L.seed_everything(int(seed), workers=True, verbose=False)
    model = models.build_model(cfg.backbone, cfg.models[variant], vocab_size)
    plain = as_plain(cfg)
    hparams = {"cfg": plain, "variant": variant, "seed": int(seed), "vocab_size": vocab_size}  # what load_trained reads
    module = MemoryLMModule(model, cfg.train, hparams, monitor, dm.val_names,
                            run_fingerprint(plain, variant, seed, cfg.paths.data_dir))
    ckpt_path = resumable(run_dir / "checkpoints" / "last.ckpt", module.fingerprint) if cfg.train.resume else None
    if is_lead_process() and ckpt_path is None:
        clear_run(run_dir)
    elif is_lead_process():
        (run_dir / "metrics.json").unlink(missing_ok=True)  # a run in progress has none; written when it ends
    return module, ckpt_path, plain


def fit(trainer: L.Trainer, module: MemoryLMModule, dm: Any, ckpt_path: Optional[Path], run_dir: Optional[Path]) -> None:
    """trainer.fit; a diverged run (TrainingError) leaves nothing to resume or score in `run_dir` (None: not the
    lead process, which clears it)."""
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except TrainingError:
        if run_dir is not None:
            clear_run(run_dir)
        raise


def frozen_run(trainer: L.Trainer, module: MemoryLMModule, dm: Any, run_dir: Path) -> None:
    """Nothing to train (a frozen pretrained backbone reading window by window): validate once and save
    that model as both checkpoints, so the evaluation scores it like any trained run (0 steps)."""
    trainer.validate(module, datamodule=dm, verbose=False)
    for name in ("best", "last"):
        trainer.save_checkpoint(run_dir / "checkpoints" / f"{name}.ckpt")


def train_seeds(cfg: RootConfig, variant: str, seeds: list[int], jobs: int) -> list[dict]:
    """Train `variant` for each seed, `jobs` processes at a time (pipeline.parallel). With more
    than one process, runs print a line per validation instead of progress bars, which would interleave."""
    import dataclasses

    from pipeline.parallel import map_seeds

    if min(int(jobs), len(seeds)) > 1:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress_bar=ProgressBar.none))
    return map_seeds(train, cfg, variant, [int(s) for s in seeds], jobs)


def _train_seed_command(args: Any, seed: int) -> None:
    """Train one seed of a multi-process (DDP) stage as its own command, `python -m pipeline.train ... --seeds
    <seed>`: Lightning starts a run's other ranks by rerunning the command line, so that command must name
    one seed (a multi-seed command rerun as rank 1 would train every seed, pairing with whichever rank 0)."""
    import subprocess

    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(args.params), "--variant", str(args.variant),
           "--seeds", str(int(seed)), "--jobs", "1", *(args.overrides or [])]
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise TrainingError(f"seed {seed} of {args.variant} failed (exit {code}): {' '.join(cmd)}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = stage_cli.parser("train", __doc__.split("\n")[0], variant=True, seeds=True)
    ap.add_argument("--jobs", type=int, default=None, help="processes at once (default: study.jobs)")
    ap.add_argument("--run-dir", default=None, help="override experiments/train/<variant>/s<seed> (one seed only)")
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        seeds = stage_cli.seeds_of(args, cfg)
        if args.run_dir is not None:
            if len(seeds) != 1:
                raise ConfigError(f"--run-dir names one run's folder; got {len(seeds)} seeds {seeds}")
            results = [train(cfg, args.variant, seeds[0], run_dir=args.run_dir)]
        else:
            check_variant(cfg, args.variant)
            jobs = args.jobs if args.jobs is not None else int(cfg.study.jobs)
            t0 = time.perf_counter()
            if len(seeds) > 1 and int(cfg.train.devices) * int(cfg.train.num_nodes) > 1:
                jobs, results = 1, []  # each seed's own command prints its line
                for seed in seeds:
                    _train_seed_command(args, seed)
            else:
                results = train_seeds(cfg, args.variant, seeds, jobs)
            write_stage_time(paths.variant_dir(cfg, "train", args.variant), t0, seeds=seeds, jobs=jobs)
        for metrics in results if is_lead_process() else []:  # under DDP, rank 0 speaks for the run
            short = {k: metrics[k] for k in ("variant", "seed", "steps", "wall_s", "train_tokens_per_s",
                                             "val_recall", "val_recall_far", "steps_to_90")}
            print(json.dumps(short))

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
