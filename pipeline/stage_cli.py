"""What every stage's command line shares, so the flags mean the same everywhere: `--params F` (the composed
config), `key=value` overrides validated like the file, `--variant` and `--seeds` (or `--seed`) where a stage
runs per variant and seed, and one error handler: a PipelineError or OSError prints one line `error: ...` and
exits 2, with no traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

from pipeline.errors import PipelineError


def parser(stage: str, description: str, *, params: bool = True, variant: bool = False, seeds: bool = False,
           overrides: bool = True) -> argparse.ArgumentParser:
    """An ArgumentParser for `cmr-repro <stage>` with the shared flags the stage takes."""
    ap = argparse.ArgumentParser(prog=f"cmr-repro {stage}", description=description)
    if params:
        ap.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    if variant:
        from pipeline.models.registry import NAMES

        ap.add_argument("--variant", required=True, help=f"a key of `models` ({', '.join(NAMES)})")
    if seeds:
        ap.add_argument("--seeds", "--seed", type=int, nargs="+", default=None, dest="seeds",
                        help="seed(s) to run (default: study.seeds)")
    if overrides:
        ap.add_argument("overrides", nargs="*", help="key=value overrides of the params file, validated like it "
                                                     "(e.g. train.max_steps=100)")
    return ap


def parse(ap: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse argv; key=value words are overrides wherever they stand (`--seeds 0 1 a=b` must not eat `a=b`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    over = [a for a in argv if "=" in a and not a.startswith("-")]
    if not over:
        return ap.parse_args(argv)
    args = ap.parse_args([a for a in argv if a not in over])
    if not hasattr(args, "overrides"):
        ap.error(f"this stage takes no key=value overrides: {' '.join(over)}")
    rest = set(args.overrides or [])  # positional words without '=' (e.g. Hydra's `~key`): kept, in argv order
    args.overrides = [a for a in argv if a in over or a in rest]
    return args


def is_group_choice(override: str) -> bool:
    """`profile=ci`, `data=hf`, `model@models.cmr=cmr`: a choice of a conf/ group, not a key of params.yaml."""
    from pipeline.config import CONF_DIR

    key = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
    return "=" in override and (CONF_DIR / key).is_dir()


def load_config(args: argparse.Namespace) -> Any:
    """The params file with the overrides applied, validated (pipeline.config.load_params); with a conf/ group
    choice among them (`profile=ci`), conf/ composed with all of them instead, as the sweep entry point and
    `dvc exp run -S` do: one override grammar everywhere. The `--variant`'s memory config typed and checked by its
    memory (pipeline.models.registry.typed_models), the others left as mappings, so a stage imports no memory but
    its own."""
    from pipeline.config import compose, load_params, typed
    from pipeline.models.registry import typed_models

    overrides = list(getattr(args, "overrides", None) or ())
    cfg = typed(compose(overrides)) if any(map(is_group_choice, overrides)) else load_params(args.params, overrides)
    variant = getattr(args, "variant", None)
    return typed_models(cfg, [variant]) if variant is not None else cfg


def seeds_of(args: argparse.Namespace, cfg: Any) -> list[int]:
    return [int(s) for s in (args.seeds if args.seeds is not None else cfg.study.seeds)]


def run(body: Callable[[], Optional[int]]) -> int:
    """The stage's exit code: body's (0 if None), 2 with one line on stderr for a pipeline or OS error, 143 for a
    run that Lightning stopped on SIGTERM (so DVC does not record an unfinished stage as done), 130 for Ctrl-C."""
    try:
        return int(body() or 0)
    except (PipelineError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the run was not finished (rerun the stage to resume it)", file=sys.stderr)
        return 128 + 2
    except SystemExit as err:  # Lightning's SIGTERMException is a SystemExit with no code, i.e. exit status 0
        if type(err).__name__ != "SIGTERMException":
            raise
        print("error: terminated by SIGTERM; the run was not finished (rerun the stage to resume it)", file=sys.stderr)
        return 128 + 15
