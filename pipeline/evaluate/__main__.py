"""`cmr-repro evaluate --variant cmr [--seeds 0 1 2] [--params params.yaml] [key=value ...]` (the DVC stage)."""

from __future__ import annotations

import logging
import sys
import time

from pipeline import stage_cli


def main(argv: list[str] | None = None) -> int:
    ap = stage_cli.parser("evaluate", "Evaluate a variant's trained models (seeds in parallel unless timing).",
                          variant=True, seeds=True)
    args = stage_cli.parse(ap, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    def body() -> None:
        from pipeline.evaluate import evaluate
        from pipeline.io import write_stage_time
        from pipeline.parallel import map_seeds
        from pipeline.paths import variant_dir

        cfg = stage_cli.load_config(args)
        seeds = stage_cli.seeds_of(args, cfg)
        # The overhead task times inference, which a second process would disturb: with it, one at a time
        # (the study times inference in its own `overhead` stage instead).
        jobs = 1 if "overhead" in cfg.eval.tasks else int(cfg.study.jobs)
        t0 = time.perf_counter()
        for out in map_seeds(evaluate, cfg, args.variant, seeds, jobs):
            print(f"wrote {out}")
        write_stage_time(variant_dir(cfg, "eval", args.variant), t0, seeds=seeds, jobs=jobs)

    return stage_cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
