"""``python -m lstm_jax.train TASK [options]``: the ``train`` command on its own (``lstm-jax train`` is the same)."""

from __future__ import annotations

import argparse
import sys

from . import TrainError, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` and trains; a :class:`~lstm_jax.train.TrainError` is printed as ``error: ...``, status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m lstm_jax.train", description="Train a recurrent model on one of lstm_jax's tasks."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except TrainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
