"""`python -m supercharge` is the `supercharge` command."""

import sys

from supercharge.cli import main

sys.exit(main())
