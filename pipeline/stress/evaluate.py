"""Stage `stress --variant V`: each seed's best checkpoint on every stress split (data_stress/) ->
experiments/stress/<variant>/s<seed>/predictions.parquet (the study's prediction columns plus `prior`: the updated
entity's earlier value on an update query, the other qualifier's value on a qualified query, else -1; and
`asks_later`: 1 / 0 where a qualified query asks the later / earlier statement, else -1) and metrics.json. Written
atomically per run.

A memory that reads the document as one sequence (`full`: attention quadratic in N) is read up to
stress.full_max_length; longer splits are listed in metrics.json `skipped`, never silently dropped.

State size: a memory listed in stress.state_sizes also reads the largest load split once per listed value of its
setting, with the same weights in a model built at that size (task `state`, split `state_<key>_<value>`); every
row carries `state_floats`, the floats of state the model that answered it holds."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.stress import STRESS_DIR


def stress_dir(cfg: Any, variant: str, seed: int) -> Path:
    return paths.run_dir(cfg, "stress", variant, seed)


def evaluate_stress(cfg: Any, variant: str, seed: int, *, model: Any = None, root: str | Path = STRESS_DIR) -> Path:
    """Score one trained (variant, seed) on every stress split; returns its folder."""
    import pandas as pd
    import torch

    from pipeline.evaluate.predict import predict_split
    from pipeline.evaluate.trained import check_trained
    from pipeline.io import atomic_dir, atomic_write_json
    from pipeline.models.checkpoint import load_trained
    from pipeline.models.registry import memory_config
    from pipeline.stress.data import load_stress_split, read_manifest

    t0 = time.perf_counter()
    manifest = read_manifest(root)
    if model is None:
        tdir = paths.run_dir(cfg, "train", variant, seed)
        check_trained(tdir, variant, seed)
        model, _ = load_trained(tdir)
    torch.set_num_threads(int(cfg.eval.threads))
    model.eval()
    whole = memory_config(cfg.models[variant]).whole_sequence
    resized = resized_models(cfg, variant, model)  # checked before any split is read
    state_floats = int(model.memory_floats()) if hasattr(model, "memory_floats") else 0
    frames, skipped, timing = [], [], {}
    for name, s in manifest["splits"].items():
        if whole and s["tokens"] > int(cfg.stress.full_max_length):
            skipped.append(name)
            continue
        t = time.perf_counter()
        ds = load_stress_split(root, name)
        pred = predict_split(model, ds, variant=variant, seed=seed, split=name, task=s["kind"],
                             length=int(s["size"]), batch_size=int(cfg.stress.batch_size))
        for col in ("prior", "asks_later"):  # predictions come doc by doc, query by query
            vals = [p for doc in ds[col] for p in doc] if col in ds.column_names else [-1] * len(pred)
            pred[col] = pd.Series(vals, dtype="int64").values
        pred["state_floats"] = state_floats
        frames.append(pred)
        timing[name] = round(time.perf_counter() - t, 3)
    top_F, top_split = max((int(s["size"]), name) for name, s in manifest["splits"].items() if s["kind"] == "load")
    ds = load_stress_split(root, top_split) if resized else None  # the largest load, read once for every size
    for key, size, m in resized:
        name = f"state_{key}_{size}"
        t = time.perf_counter()
        pred = predict_split(m, ds, variant=variant, seed=seed, split=name, task="state", length=top_F,
                             batch_size=int(cfg.stress.batch_size))
        pred["prior"] = pred["asks_later"] = -1
        pred["state_floats"] = int(m.memory_floats())
        frames.append(pred)
        timing[name] = round(time.perf_counter() - t, 3)
    out = stress_dir(cfg, variant, seed)
    with atomic_dir(out) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp / "predictions.parquet", index=False)
        atomic_write_json(tmp / "metrics.json", {"variant": variant, "seed": int(seed), "skipped": skipped,
                                                 "split_s": timing, "wall_s": time.perf_counter() - t0})
    return out


def resized_models(cfg: Any, variant: str, model: Any) -> list[tuple[str, int, Any]]:
    """(key, value, model) for each value of stress.state_sizes[variant]: the trained model's weights in a model
    whose memory config has key = value. A ConfigError when the key is not a setting of the memory, or when the
    value changes a weight's shape (a size the model would have to be trained at)."""
    import dataclasses

    from pipeline.config.access import cfg_path
    from pipeline.errors import ConfigError
    from pipeline.models import build_model

    sizes = dict(dict(cfg_path(cfg, "stress.state_sizes") or {}).get(variant) or {})
    if not sizes:
        return []
    mem = model.memory_cfg
    names = {f.name for f in dataclasses.fields(mem)}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    out = []
    for key, values in sizes.items():
        if key not in names:
            raise ConfigError(f"stress.state_sizes.{variant}.{key}: not a setting of models.{variant} "
                              f"(its settings: {', '.join(sorted(names))})")
        for value in values:
            try:
                resized = build_model(model.backbone_cfg, dataclasses.replace(mem, **{key: int(value)}),
                                      model.vocab_size)
            except ConfigError as err:
                raise ConfigError(f"stress.state_sizes.{variant}.{key} = {value}: {err}") from None
            changed = sorted(k for k, v in resized.state_dict().items() if shapes.get(k) != v.shape)
            if changed:
                raise ConfigError(f"stress.state_sizes.{variant}.{key} = {value}: changes the shape of weights "
                                  f"{', '.join(changed[:3])}; a state size the model must be trained at")
            resized.load_state_dict(model.state_dict())
            out.append((key, int(value), resized.eval()))
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline import stage_cli
    from pipeline.io import write_stage_time
    from pipeline.parallel import map_seeds

    ap = stage_cli.parser("stress", __doc__.splitlines()[0], variant=True, seeds=True)
    args = stage_cli.parse(ap, argv)

    def body() -> None:
        cfg = stage_cli.load_config(args)
        seeds = [int(s) for s in (args.seeds or cfg.study.seeds)]
        t0 = time.perf_counter()
        map_seeds(evaluate_stress, cfg, args.variant, seeds, int(cfg.study.jobs))
        write_stage_time(paths.experiments_dir(cfg) / "stress" / args.variant, t0, runs=len(seeds))

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
