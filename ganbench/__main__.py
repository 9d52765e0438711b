"""`python -m ganbench <command> ...`, the same as the `ganbench` console script (what torchrun and cluster wrappers
launch)."""

import sys

from ganbench.cli import main

sys.exit(main())
