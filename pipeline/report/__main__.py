"""`python -m pipeline.report`: the report stage (see pipeline/report/__init__.py)."""

import sys

from pipeline.report import main

sys.exit(main())
