"""``python -m benchmarks {list,run,report}``: see :mod:`benchmarks`."""

from __future__ import annotations

import sys

from .harness import cli

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
