"""Evaluation stage: score one trained (variant, seed) on every evaluation split and measure its cost.

`evaluate(cfg, variant, seed)` is the one function both entry points call (`python -m
pipeline.evaluate` for DVC, or a Hydra job). It writes experiments/eval/<variant>/s<seed>/
atomically: either the whole folder appears, or (on any error) nothing changes.

Heavy imports (torch, pandas, the task modules) happen inside functions: importing
`pipeline.config.evaluate` (which `pipeline.config` does) runs this package's import, which must stay fast.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from pipeline import paths
from pipeline.errors import ConfigError
from pipeline.evaluate.trained import check_trained, resolve_device

log = logging.getLogger(__name__)

ACCURACY_TASKS = ("recall", "rare", "numeric", "dialogue")


def train_dir(cfg: Any, variant: str, seed: int) -> Path:
    return paths.run_dir(cfg, "train", variant, seed)


def eval_dir(cfg: Any, variant: str, seed: int) -> Path:
    return paths.run_dir(cfg, "eval", variant, seed)


def _wandb_start(cfg: Any, variant: str, seed: int, run_dir: Path):
    """A wandb run through pipeline.tracking (it decides offline/disabled)."""
    from pipeline.config import as_plain
    from pipeline.tracking import start_wandb

    plain = as_plain(cfg)  # the run's config: what it evaluated and with which model, so runs group by any key
    config = {"eval": plain.get("eval"), "backbone": plain.get("backbone"),
              "model": (plain.get("models") or {}).get(variant)}
    return start_wandb(cfg, job_type="evaluate", name=f"eval-{paths.run_name(variant, seed)}", run_dir=run_dir,
                       extra_config=config, variant=variant, seed=seed)


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
    from pipeline.evaluate import overhead as overhead_mod
    from pipeline.evaluate.predict import load_split_docs
    from pipeline.io import atomic_dir, atomic_write_json

    t_start = time.perf_counter()
    if variant not in cfg.models:
        raise ConfigError(f"--variant '{variant}' is not configured; allowed: {', '.join(cfg.models.keys())}")
    ecfg = cfg.eval
    tasks = list(ecfg.tasks)
    data_dir = str(cfg.paths.data_dir)
    model, device = _ready_model(cfg, variant, seed, model)
    loader = loader or load_split_docs
    buckets = _buckets_or_none(cfg, required="rare" in tasks)
    if train_counts is None and any(t in ACCURACY_TASKS for t in tasks):
        from pipeline.data import load_train_counts

        train_counts = load_train_counts(data_dir)
    timing: dict[str, float] = {}
    out_dir = eval_dir(cfg, variant, seed)
    with atomic_dir(out_dir) as tmp:
        wb = _wandb_start(cfg, variant, seed, tmp)
        try:
            pred = predict_tasks(model, cfg, variant, seed, tasks, buckets, train_counts, device, loader, timing)
            tables = score_tables(pred, tasks, buckets)
            oh = None
            if "overhead" in tasks:
                t0 = time.perf_counter()
                oh = _measure_overhead(cfg, variant, seed, model, device, loader)
                tables["overhead"] = overhead_mod.score(oh, variant, seed)
                atomic_write_json(tmp / "overhead.json", oh)
                timing["overhead"] = time.perf_counter() - t0
            metrics = _write_run(tmp, pred, tables, oh, variant, seed, data_dir, timing, t_start)
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


def _write_run(tmp: Path, pred: Any, tables: dict, oh: Any, variant: str, seed: int, data_dir: str, timing: dict,
               t_start: float) -> dict:
    """Predictions, tables, metrics.json (the headline numbers) and timing.json into the run's folder."""
    from pipeline.evaluate import recall
    from pipeline.io import atomic_write_json

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
    return metrics


def _ready_model(cfg: Any, variant: str, seed: int, model: Any = None) -> tuple[Any, str]:
    """(the model in eval mode on its device, the device): the run's best.ckpt unless a test injects one."""
    import torch

    if model is None:
        tdir = train_dir(cfg, variant, seed)
        check_trained(tdir, variant, seed)
        from pipeline.models.checkpoint import load_trained

        model, hparams = load_trained(tdir)
        if getattr(model, "vocab_size", None) is None and hparams.get("vocab_size"):
            model.vocab_size = int(hparams["vocab_size"])
    device = resolve_device(cfg.eval.device)
    torch.set_num_threads(int(cfg.eval.threads))
    model = model.to(device) if hasattr(model, "to") else model
    model.eval()
    return model, device


def predict_tasks(model: Any, cfg: Any, variant: str, seed: int, tasks: list[str], buckets: list[int] | None,
                  train_counts: dict | None, device: str, loader: Callable, timing: dict[str, float]) -> Any:
    """One predictions frame over every accuracy task (each task's seconds into `timing`), with the `bucket`
    of each answer's measured training count (-1: no buckets configured)."""
    import pandas as pd

    from pipeline.evaluate import dialogue, numeric, rare, recall
    from pipeline.evaluate.predict import empty_predictions

    modules = {"recall": recall, "rare": rare, "numeric": numeric, "dialogue": dialogue}
    preds = []
    for task in [t for t in tasks if t in modules]:
        t0 = time.perf_counter()
        log.info("evaluate %s-s%s: %s", variant, seed, task)
        preds.append(modules[task].predict(model, cfg, variant=variant, seed=seed,
                                           train_counts=train_counts, device=device, loader=loader))
        timing[task] = time.perf_counter() - t0
    pred = pd.concat(preds, ignore_index=True) if preds else empty_predictions()
    return rare.with_buckets(pred, buckets)


def score_tables(pred: Any, tasks: list[str], buckets: list[int] | None) -> dict[str, Any]:
    """Each accuracy task's table from the predictions (recall also by query type)."""
    from pipeline.evaluate import dialogue, numeric, rare, recall

    tables = {}
    if "recall" in tasks:
        tables["recall"] = recall.score(pred)
        tables["recall_by_type"] = recall.score_by_type(pred)
    if "rare" in tasks:
        tables["rare"] = rare.score(pred, buckets)
    if "numeric" in tasks:
        tables["numeric"] = numeric.score(pred)
    if "dialogue" in tasks:
        tables["dialogue"] = dialogue.score(pred)
    return tables


def _measure_overhead(cfg: Any, variant: str, seed: int, model: Any, device: str, loader: Callable) -> dict:
    """ms/token by N on the run's own inputs (the overhead stage times every variant in turns instead)."""
    from pipeline.evaluate import overhead as overhead_mod

    data_dir, ocfg = str(cfg.paths.data_dir), cfg.eval.overhead
    make = overhead_mod.input_maker(data_dir, overhead_mod.vocab_size_of(data_dir, model), seed=int(seed),
                                    loader=lambda d, n: loader(d, n, 1))
    oh = overhead_mod.measure(model, list(ocfg.lengths), make, warmup=int(ocfg.warmup),
                              repeats=int(ocfg.repeats), batch_size=int(ocfg.batch_size),
                              measure_memory=bool(ocfg.measure_memory), device=device)
    oh["inputs"] = dict(make.sources)
    oh["train_tokens_per_s"] = overhead_mod.train_throughput(train_dir(cfg, variant, seed))
    oh["variant"], oh["seed"] = variant, int(seed)
    return oh


def _buckets_or_none(cfg: Any, required: bool) -> list[int] | None:
    from pipeline.config.evaluate import rare_buckets

    try:
        return rare_buckets(cfg)
    except ConfigError:
        if required:
            raise
        return None


def _wandb_log(run: Any, metrics: dict[str, Any], tables: dict[str, Any]) -> None:
    import wandb

    run.log(_flatten(metrics))
    run.log({f"eval/{name}": wandb.Table(dataframe=table) for name, table in tables.items()})
    run.summary.update(_flatten(metrics))

