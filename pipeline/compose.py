"""`python -m pipeline.compose [OVERRIDE ...]`: compose conf/ into params.yaml, validated.

It writes the same text DVC's Hydra integration writes for `dvc exp run -S OVERRIDE`, so
`python -m pipeline.compose profile=ci && dvc repro` and `dvc exp run -S profile=ci` agree.
`--check` exits non-zero when params.yaml differs from what conf/ composes (kept in sync by a test).
"""

from __future__ import annotations

import sys

from pipeline import stage_cli
from pipeline.config import PARAMS_FILE, compose, to_params_yaml, typed
from pipeline.io import write_or_check
from pipeline.models.registry import typed_models


def composed_text(overrides: list[str]) -> str:
    """params.yaml's text for these overrides, after every check a stage runs on it (each memory's included)."""
    cfg = compose(overrides)
    typed_models(typed(cfg))
    return to_params_yaml(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = stage_cli.parser("compose", __doc__.splitlines()[0], params=False, overrides=False)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=ci models.cmr.k=4")
    parser.add_argument("-o", "--output", default=PARAMS_FILE, help="where to write (default: params.yaml)")
    parser.add_argument("--check", action="store_true", help="only compare with the existing file")
    args = stage_cli.parse(parser, argv)
    return stage_cli.run(lambda: write_or_check(
        args.output, composed_text(args.overrides), check=args.check,
        fix_hint=f"run python -m pipeline.compose {' '.join(args.overrides)}".strip()))


if __name__ == "__main__":
    sys.exit(main())
