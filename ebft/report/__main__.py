"""``python -m ebft.report --results ... --tables DIR --figures DIR --meta JSON`` (the aggregate rule)."""

import sys

from ebft.report.aggregate import main

sys.exit(main())
