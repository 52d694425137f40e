"""``python -m bench``: the whole benchmark suite (``--help`` for the options)."""

import sys

from bench.suite.cli import main

if __name__ == "__main__":
    sys.exit(main())
