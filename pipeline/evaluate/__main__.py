"""`python -m pipeline.evaluate --variant cmr --seed 0 [--params params.yaml]` (the DVC stage)."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate",
                                     description="Evaluate one trained model (variant, seed).")
    parser.add_argument("--variant", required=True, help="window | xl | full | cmr")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from pipeline.errors import PipelineError

    try:
        from pipeline.config import load_params
        from pipeline.evaluate import evaluate

        out = evaluate(load_params(args.params), args.variant, args.seed)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
