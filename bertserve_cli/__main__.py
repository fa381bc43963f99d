"""`python -m bertserve_cli`: the same as the `bertserve` command."""

import sys

from bertserve_cli import main

sys.exit(main())
