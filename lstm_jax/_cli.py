"""The ``lstm-jax`` command line (also ``python -m lstm_jax``).

Each subcommand is a :class:`Command` in :data:`COMMANDS`: a help line, a function adding its arguments to an
argparse parser, and a function running it. Adding one (``train``, say) is one more entry; its modules are
imported only when it runs, so ``lstm-jax --help`` stays fast and needs no optional dependency.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- bench ----------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    """``"16,64"`` → [16, 64]; with ``nargs="+"`` both ``--seq-lens 16 64`` and ``--seq-lens 16,64`` work."""
    return [_positive_int(part) for part in text.split(",") if part]


def _impl_list(text: str) -> list[str]:
    from .bench._impls import resolve

    names = [part for part in text.split(",") if part]
    try:
        resolve(names)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return names


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    sweep = parser.add_argument_group("sweep (defaults: the full sweep, or the --quick one)")
    sweep.add_argument("--quick", action="store_true", help="a small sweep, under a minute on 2 CPU cores")
    sweep.add_argument(
        "--seq-lens", nargs="+", type=_int_list, metavar="T", help="sequence lengths (default 16 64 256 1024 4096)"
    )
    sweep.add_argument("--batch", type=_positive_int, metavar="B", help="batch size of the throughput part")
    sweep.add_argument("--hidden", type=_positive_int, metavar="H", help="hidden size of the throughput part")
    sweep.add_argument("--input", type=_positive_int, metavar="I", help="input size of the throughput part")
    sweep.add_argument("--layers", type=_positive_int, metavar="L", help="stacked layers of the throughput part")
    sweep.add_argument(
        "--bidirectional",
        action="store_true",
        help="bidirectional LSTMs in the throughput part: two directions per layer, concatenated (default: one)",
    )
    sweep.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default float32")
    sweep.add_argument(
        "--impls",
        nargs="+",
        type=_impl_list,
        metavar="NAME",
        help="implementations to compare: lstm_jax:<path> (one per lstm_jax.Impl; 'lstm_jax' for all), flax, "
        "torch, cudnn (default: all that can run here)",
    )
    sweep.add_argument(
        "--cell",
        nargs="+",
        metavar="NAME",
        help="also run these cells / LSTM variants as cell:NAME, with their cost relative to cell:lstm: "
        "lstm, peephole, layernorm, projected, variational, zoneout, weightdrop, bf16, gru, rnn",
    )
    sweep.add_argument("--repeats", type=_positive_int, help="timed repeats per point; the median is reported")
    sweep.add_argument("--seeds", type=_positive_int, help="initialisations averaged in the gradient-norm part")
    parser.add_argument("--out", default="results", metavar="DIR", help="where results go (default: results/)")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN.json",
        help="print saved runs side by side (e.g. two machines) instead of running",
    )


def bench_config(args: argparse.Namespace):
    """The :class:`~lstm_jax.bench.BenchConfig` the arguments ask for: the chosen sweep, then each given flag."""
    from .bench._config import DEFAULT, QUICK

    base = QUICK if args.quick else DEFAULT
    flat = lambda lists: tuple(x for sub in lists for x in sub)  # noqa: E731
    impls = None if args.impls is None else tuple(dict.fromkeys(flat(args.impls)))
    if args.cell:
        from .bench._impls import CELLS, REGISTRY

        unknown = [name for name in args.cell if name not in CELLS]
        if unknown:
            raise SystemExit(f"lstm-jax bench: unknown --cell {unknown}; choose from {list(CELLS)}")
        chosen = impls if impls is not None else tuple(name for name, impl in REGISTRY.items() if impl.default)
        cells = tuple(f"cell:{name}" for name in ("lstm", *args.cell))
        impls = tuple(dict.fromkeys(chosen + cells))
    overrides = {
        "seq_lens": None if args.seq_lens is None else tuple(sorted(set(flat(args.seq_lens)))),
        "batch": args.batch,
        "hidden_size": args.hidden,
        "input_size": args.input,
        "num_layers": args.layers,
        "bidirectional": args.bidirectional or None,  # None keeps the sweep's own (unidirectional) setting
        "dtype": args.dtype,
        "impls": impls,
        "repeats": args.repeats,
        "seeds": args.seeds,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _console():
    from rich.console import Console

    console = Console()
    # Piped output gets rich's 80 columns by default, too narrow for the throughput table.
    return console if console.is_terminal else Console(width=200)


def _run_bench(args: argparse.Namespace) -> int:
    try:
        console = _console()
        from . import bench
    except ImportError as error:
        print(f"lstm-jax bench needs the bench extra ({error.name} is missing): pip install 'lstm_jax[bench]'")
        return 2
    if args.compare:
        try:
            bench.compare(args.compare, console)
        except (OSError, ValueError) as error:
            console.print(f"[red]{error}[/]")
            return 1
        return 0
    bench.run(bench_config(args), args.out, console)
    return 0


# --- dispatch -------------------------------------------------------------------------------------------------

# --- train ----------------------------------------------------------------------------------------------------


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import add_arguments

    add_arguments(parser)


def _run_train(args: argparse.Namespace) -> int:
    from .train import TrainError, run

    try:
        return run(args)
    except TrainError as error:  # configuration and checkpoint problems: the message names the flag
        print(f"error: {error}", file=sys.stderr)
        return 2


COMMANDS: dict[str, Command] = {
    "bench": Command(
        "throughput and gradient-norm benchmarks against PyTorch and Flax (JSON, CSV, PNGs)",
        _add_bench_arguments,
        _run_bench,
    ),
    "train": Command(
        "train an LSTM/GRU/RNN on a task (adding, digits, co2, charlm) with checkpoints and resume",
        _add_train_arguments,
        _run_train,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-jax", description="lstm_jax: a PyTorch-exact LSTM, GRU and Elman RNN for JAX."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subcommands.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lstm-jax`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
