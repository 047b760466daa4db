"""``python -m refcam``: the same command line as the ``refcam`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
