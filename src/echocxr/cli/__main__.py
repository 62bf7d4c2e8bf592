import sys

from echocxr.cli import main

sys.exit(main())
