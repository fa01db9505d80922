"""`python -m pipeline.report`: the report stage (pipeline/report/cli.py)."""

import sys

from pipeline.report.cli import main

sys.exit(main())
