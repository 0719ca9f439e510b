"""``python -m vlp.export``: the same as ``vlp-export``."""

import sys

from vlp.export.cli import main

sys.exit(main())
