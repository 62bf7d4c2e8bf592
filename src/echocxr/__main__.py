"""`python -m echocxr ...`: the same as the `echocxr` command."""

import sys

from echocxr.cli import main

sys.exit(main())
