"""``python -m codetransfer``: the same command line as ``codetransfer``."""

import sys

from codetransfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
