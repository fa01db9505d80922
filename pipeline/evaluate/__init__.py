"""Evaluation stage: score one trained (variant, seed) on every evaluation split and measure its cost.

`evaluate(cfg, variant, seed)` is the one function both entry points call (`python -m
pipeline.evaluate` for DVC, or a Hydra job). It writes experiments/eval/<variant>/s<seed>/
atomically: either the whole folder appears, or (on any error) nothing changes.

Heavy imports (torch, pandas, the task modules) happen inside functions: `pipeline.config`
imports `pipeline.evaluate.config`, which imports this package, and must stay fast.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from pipeline import paths
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ACCURACY_TASKS = ("recall", "rare", "numeric", "dialogue")


def train_dir(cfg: Any, variant: str, seed: int) -> Path:
    return paths.run_dir(cfg, "train", variant, seed)


def eval_dir(cfg: Any, variant: str, seed: int) -> Path:
    return paths.run_dir(cfg, "eval", variant, seed)


def check_trained(run_dir: Path, variant: str, seed: int) -> None:
    """Fail with a message that says what to run, before any work is done: only a finished training
    run is scored (its best.ckpt, and a metrics.json that says it reached its max_steps). A run killed or
    diverged mid-way leaves a last.ckpt but no such metrics.json, and is refused."""
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
    if want is not None and int(m.get("steps") or 0) < int(want):
        raise DataError(f"{metrics}: training of {variant} seed {seed} stopped at step {m.get('steps')} of {want}; "
                        f"{hint}")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval.device is 'cuda' but no CUDA device is available; allowed: cpu, cuda, auto")
    return name


def _wandb_start(cfg: Any, variant: str, seed: int, run_dir: Path):
    """A wandb run through pipeline.tracking (it decides offline/disabled)."""
    from pipeline.tracking import start_wandb

    return start_wandb(cfg, job_type="evaluate", name=f"eval-{paths.run_name(variant, seed)}", run_dir=run_dir)


def _by(table: Any, key: str, value: str) -> dict[str, float]:
    return {str(int(k)): float(v) for k, v in zip(table[key], table[value])}


def headline(tables: dict[str, Any], overhead: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers `dvc metrics` and the report read first (accuracies are fractions in [0, 1])."""
    out: dict[str, Any] = {}
    if "recall" in tables:
        out["recall"] = _by(tables["recall"], "length", "accuracy")
        bt = tables["recall_by_type"]
        for qt in sorted(set(bt["query_type"])):
            out[f"recall_{qt}"] = _by(bt[bt["query_type"] == qt], "length", "accuracy")
    if "rare" in tables:
        out["rare"] = _by(tables["rare"], "bucket", "accuracy")
    if "numeric" in tables:
        out["numeric"] = _by(tables["numeric"], "length", "accuracy")
    if "dialogue" in tables:
        out["dialogue"] = _by(tables["dialogue"], "turns", "score")
    if overhead is not None:
        out["ms_per_token"] = dict(overhead["ms_per_token"])
        out["peak_bytes"] = dict(overhead.get("peak_bytes", {}))
        out["params"] = overhead["params"]
        out["train_tokens_per_s"] = overhead.get("train_tokens_per_s")
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{key}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[key] = v
    return flat


def evaluate(
    cfg: Any,
    variant: str,
    seed: int,
    *,
    model: Any = None,
    loader: Callable[[str, str, int | None], Any] | None = None,
    train_counts: dict | None = None,
) -> Path:
    """Run cfg.eval.tasks for one trained model; returns the output folder.

    model / loader / train_counts: injected by tests (default: load_trained, pipeline.data).
    """
    import pandas as pd
    import torch

    from pipeline.evaluate import dialogue, numeric, overhead as overhead_mod, rare, recall
    from pipeline.evaluate.predict import empty_predictions, load_split_docs
    from pipeline.io import atomic_dir, atomic_write_json

    t_start = time.perf_counter()
    if variant not in cfg.models:
        raise ConfigError(f"--variant '{variant}' is not configured; allowed: {', '.join(cfg.models.keys())}")
    ecfg = cfg.eval
    tasks = list(ecfg.tasks)
    data_dir = str(cfg.paths.data_dir)
    tdir = train_dir(cfg, variant, seed)
    if model is None:
        check_trained(tdir, variant, seed)
        from pipeline.models.checkpoint import load_trained

        model, hparams = load_trained(tdir)
        if getattr(model, "vocab_size", None) is None and hparams.get("vocab_size"):
            model.vocab_size = int(hparams["vocab_size"])
    device = resolve_device(ecfg.device)
    torch.set_num_threads(int(ecfg.threads))
    model = model.to(device) if hasattr(model, "to") else model
    model.eval()
    loader = loader or load_split_docs
    buckets = _buckets_or_none(cfg, required="rare" in tasks)
    if train_counts is None and any(t in ACCURACY_TASKS for t in tasks):
        from pipeline.data import load_train_counts

        train_counts = load_train_counts(data_dir)

    modules = {"recall": recall, "rare": rare, "numeric": numeric, "dialogue": dialogue}
    timing: dict[str, float] = {}
    out_dir = eval_dir(cfg, variant, seed)
    with atomic_dir(out_dir) as tmp:
        wb = _wandb_start(cfg, variant, seed, tmp)
        try:
            preds, tables = [], {}
            for task in [t for t in tasks if t in modules]:
                t0 = time.perf_counter()
                log.info("evaluate %s-s%s: %s", variant, seed, task)
                preds.append(modules[task].predict(model, cfg, variant=variant, seed=seed,
                                                   train_counts=train_counts, device=device, loader=loader))
                timing[task] = time.perf_counter() - t0
            pred = pd.concat(preds, ignore_index=True) if preds else empty_predictions()
            pred = rare.with_buckets(pred, buckets)  # + `bucket` (measured-count bucket; -1: none configured)
            if "recall" in tasks:
                tables["recall"] = recall.score(pred)
                tables["recall_by_type"] = recall.score_by_type(pred)
            if "rare" in tasks:
                tables["rare"] = rare.score(pred, buckets)
            if "numeric" in tasks:
                tables["numeric"] = numeric.score(pred)
            if "dialogue" in tasks:
                tables["dialogue"] = dialogue.score(pred)

            oh = None
            if "overhead" in tasks:
                t0 = time.perf_counter()
                ocfg = ecfg.overhead
                vocab = _vocab_size(data_dir, model)
                make = overhead_mod.input_maker(data_dir, vocab, seed=int(seed),
                                                loader=lambda d, n: loader(d, n, 1))
                oh = overhead_mod.measure(model, list(ocfg.lengths), make, warmup=int(ocfg.warmup),
                                          repeats=int(ocfg.repeats), batch_size=int(ocfg.batch_size),
                                          measure_memory=bool(ocfg.measure_memory), device=device)
                oh["inputs"] = dict(make.sources)
                oh["train_tokens_per_s"] = overhead_mod.train_throughput(tdir)
                oh["variant"], oh["seed"] = variant, int(seed)
                tables["overhead"] = overhead_mod.score(oh, variant, seed)
                atomic_write_json(tmp / "overhead.json", oh)
                timing["overhead"] = time.perf_counter() - t0

            pred.to_parquet(tmp / "predictions.parquet", index=False)
            for name, table in tables.items():
                table.to_csv(tmp / f"{name}.csv", index=False)
            metrics = {"variant": variant, "seed": int(seed), **headline(tables, oh),
                       "n_queries": {t: int((pred["task"] == t).sum()) for t in sorted(set(pred["task"]))},
                       "chance_recall": recall.chance_level(data_dir)}
            timing["wall_s"] = time.perf_counter() - t_start
            metrics["wall_s"] = timing["wall_s"]
            atomic_write_json(tmp / "metrics.json", metrics)
            atomic_write_json(tmp / "timing.json", timing)
            if wb is not None:
                _wandb_log(wb, metrics, tables)
        except BaseException:
            if wb is not None:
                wb.finish(exit_code=1)
            raise
        if wb is not None:
            wb.finish()
    log.info("wrote %s in %.1f s", out_dir, time.perf_counter() - t_start)
    return out_dir


def _buckets_or_none(cfg: Any, required: bool) -> list[int] | None:
    from pipeline.evaluate.config import rare_buckets

    try:
        return rare_buckets(cfg)
    except ConfigError:
        if required:
            raise
        return None


def _vocab_size(data_dir: str, model: Any) -> int | None:
    """For random overhead inputs only: the tokenizer's size, else the model's, else None."""
    try:
        from pipeline.data import load_tokenizer

        return int(load_tokenizer(data_dir).get_vocab_size())
    except (ImportError, DataError, OSError):
        return getattr(model, "vocab_size", None)


def _wandb_log(run: Any, metrics: dict[str, Any], tables: dict[str, Any]) -> None:
    import wandb

    run.log(_flatten(metrics))
    run.log({f"eval/{name}": wandb.Table(dataframe=table) for name, table in tables.items()})
    run.summary.update(_flatten(metrics))

