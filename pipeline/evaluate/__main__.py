"""`python -m pipeline.evaluate --variant cmr [--seed 0 1 2] [--params params.yaml]` (the DVC stage)."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate",
                                     description="Evaluate a variant's trained models (seeds in parallel unless timing).")
    parser.add_argument("--variant", required=True, help="window | xl | full | cmr")
    parser.add_argument("--seed", type=int, nargs="+", default=None, dest="seeds",
                        help="seed(s) to evaluate (default: study.seeds)")
    parser.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from pipeline.errors import PipelineError

    try:
        from pipeline.config import load_params
        from pipeline.evaluate import evaluate

        from pipeline.io import write_stage_time
        from pipeline.parallel import map_seeds
        from pipeline.paths import variant_dir

        cfg = load_params(args.params)
        seeds = [int(s) for s in (args.seeds if args.seeds is not None else cfg.study.seeds)]
        # The overhead task times inference, which a second process would disturb: with it, one at a time
        # (the study times inference in its own `overhead` stage instead).
        jobs = 1 if "overhead" in cfg.eval.tasks else int(cfg.study.get("jobs", 1))
        t0 = time.perf_counter()
        for out in map_seeds(evaluate, cfg, args.variant, seeds, jobs):
            print(f"wrote {out}")
        write_stage_time(variant_dir(cfg, "eval", args.variant), t0, seeds=seeds, jobs=jobs)
    except (PipelineError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
