"""``python -m pyspec``: the command line."""

import sys

from pyspec.cli import main

sys.exit(main())
