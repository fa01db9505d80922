"""Run one variant's seeds side by side in worker processes.

Seeds are independent runs with one torch thread each, so on a 2-core machine two or three at
once give ~1.6x the throughput of one (measured: two 300-step cmr trainings took 60 s together
against 47 s for one). Workers are spawned (a fresh interpreter: no forked torch thread pools)
and get the config as a plain dict; a worker's PipelineError reaches the caller unchanged.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf


def _call(fn: Callable, cfg_dict: dict, variant: str, seed: int) -> Any:
    return fn(OmegaConf.create(cfg_dict), variant, seed)


def map_seeds(fn: Callable[[DictConfig, str, int], Any], cfg: DictConfig, variant: str,
              seeds: list[int], jobs: int) -> list[Any]:
    """[fn(cfg, variant, s) for s in seeds], `jobs` processes at a time (1: in this process).

    fn must be a module-level function (workers import it by name).
    """
    jobs = max(1, min(int(jobs), len(seeds)))
    if jobs == 1:
        return [fn(cfg, variant, int(s)) for s in seeds]
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_call, fn, cfg_dict, variant, int(s)) for s in seeds]
        return [f.result() for f in futures]
