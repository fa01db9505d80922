"""`cmr-repro <stage> [args]`: one command for every stage of the study (dvc.yaml calls it).

Every stage parses its flags with pipeline/stage_cli.py (`--params F`, `key=value` overrides validated like
the file, `--variant` / `--seeds` where it runs per run; `cmr-repro <stage> --help`) and stays runnable as
`python -m <module>`; this front door lists them, runs one, and turns a pipeline, config or OS error that
escapes a stage into one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from pipeline import stage_cli

# stage -> module whose main(argv) runs it (in the study's order, then the studies beside it)
STAGES = {
    "compose": "pipeline.compose",
    "prepare": "pipeline.data.prepare",
    "datasets": "pipeline.datasets_table",
    "train": "pipeline.train",
    "evaluate": "pipeline.evaluate.__main__",
    "overhead": "pipeline.evaluate.overhead",
    "attention": "pipeline.evaluate.attention",
    "stress-data": "pipeline.stress.data",
    "stress": "pipeline.stress.evaluate",
    "report": "pipeline.report.cli",
    "readme-results": "pipeline.report.readme",
    "hf-pretrain": "pipeline.studies.hf_pretrain",
    "sanity": "pipeline.studies.sanity",
    "ablations": "pipeline.studies.ablations",
    "hparams-search": "pipeline.studies.hparams_search",
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: cmr-repro <stage> [--help | stage arguments]", "", "stages:"]
    lines += [f"  {name:<{width}}  python -m {mod.removesuffix('.__main__')}" for name, mod in STAGES.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    stage, rest = args[0], args[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    # sys.argv stays as it is: Lightning's DDP launcher starts the other ranks by rerunning it
    return stage_cli.run(lambda: importlib.import_module(STAGES[stage]).main(rest))


if __name__ == "__main__":
    sys.exit(main())
