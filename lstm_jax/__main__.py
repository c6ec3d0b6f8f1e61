"""``python -m lstm_jax …``: the same command line as the ``lstm-jax`` console script."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
