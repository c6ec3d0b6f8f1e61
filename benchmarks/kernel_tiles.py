"""The CPU kernel's matmul loops timed alone: the most each of its phases could reach on this machine.

`kernel_tiles.cc` includes the kernel's source (``lstm_jax/_kernel/lstm_cpu.cc``) and runs its matmul loops as
the kernel's phases call them, one thread per core, each on its own data (reused from run to run, so it stays in
the core's caches wherever it fits), all busy at once: the forward's x_t W_ih part (one step's B rows, or a block
of 4 steps' rows, against each unit block's (I, 4·units) panel, 128 panel rows at a time), the backward's
weight-gradient update over one step's rows and over a block of 4 steps', and the backward's dz_t W_hhᵀ part (B
rows, all 4H columns, four unit blocks per register tile); and, for scale, multiply-adds on registers alone (the
core's peak). Each thread reports its best timing (a core in its best moment: on a VM whose clock varies, above
its usual rate) and its sustained rate, all its runs over the whole time, every thread busy; the sustained rates
added up are what the cores deliver together. A unit block is 16 hidden units with AVX-512 and 8 without
(``units`` and ``tile_rows`` in every row say which tiles the kernel was compiled with). Each loop's result is
first checked against a double-precision loop. The gap between these rates and the kernel's own phases timed
inside a training step is what memory traffic, the other threads' writes and the fixed costs of a call take
(README, "What limits it now"). Run::

    .venv/bin/python benchmarks/kernel_tiles.py                     # B = 32, I = H = 256, one thread per core
    .venv/bin/python benchmarks/kernel_tiles.py --hidden 512 --input 512 --json out.json

It needs the C++ compiler the kernel is built with (``$CXX``, else ``c++``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "kernel_tiles.cc"
KERNEL_DIR = HERE.parent / "lstm_jax" / "_kernel"


def build() -> Path:
    """Compiles kernel_tiles.cc with the kernel's flags, once per source version (cached in the temp directory)."""
    compiler = os.environ.get("CXX") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler: set $CXX or install c++")
    flags = ["-O3", "-march=native", "-std=c++17", "-pthread", f"-I{KERNEL_DIR}", f"-I{jax.ffi.include_dir()}"]
    sources = SOURCE.read_bytes() + (KERNEL_DIR / "lstm_cpu.cc").read_bytes()
    digest = hashlib.sha256(sources + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"lstm_jax-kernel_tiles-{digest}"
    if not binary.exists():
        partial = binary.with_suffix(".partial")
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(partial)], check=True, capture_output=True)
        partial.rename(binary)
    return binary


def measure(batch: int, input_size: int, hidden: int, threads: int, seconds: float) -> list[dict[str, object]]:
    """One row per loop: its name, shape, flops per run, checked error, GFLOP/s per thread (each thread's best
    timing) and sustained (each thread's runs over the whole time, all threads busy); ``gflops`` and
    ``of_fma_peak`` from the threads' median best, ``sustained_gflops`` the threads' sustained rates added up, what
    the cores deliver together, and ``sustained_of_fma_peak`` that against the register-only loop's."""
    output = subprocess.run(
        [str(build()), str(batch), str(input_size), str(hidden), str(threads), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.strip()]
    fma = next(row for row in rows if row["key"] == "fma")
    peak, sustained_peak = statistics.median(fma["gflops_per_thread"]), sum(fma["sustained_gflops_per_thread"])
    for row in rows:
        row["gflops"] = statistics.median(row["gflops_per_thread"])
        row["of_fma_peak"] = row["gflops"] / peak
        row["sustained_gflops"] = sum(row["sustained_gflops_per_thread"])
        row["sustained_of_fma_peak"] = row["sustained_gflops"] / sustained_peak
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="default: one per core")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per loop and thread")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = measure(args.batch, args.input, args.hidden, args.threads, args.seconds)

    from rich.console import Console
    from rich.table import Table

    title = f"lstm_jax CPU kernel loops alone, B={args.batch} I={args.input} H={args.hidden}, {args.threads} threads"
    table = Table(title=title)
    columns = ["loop", "per unit block", "GFLOP/s per thread (best)", "of FMA peak", "sustained, all threads"]
    for column in [*columns, "of FMA peak", "max rel. error"]:
        table.add_column(column)
    for row in rows:
        checked = "–" if row["key"] == "fma" else f"{row['max_rel_error']:.1e}"
        best, sustained = f"{row['gflops']:.0f}", f"{row['sustained_gflops']:.0f}"
        fractions = f"{row['of_fma_peak']:.0%}", f"{row['sustained_of_fma_peak']:.0%}"
        table.add_row(row["name"], row["shape"], best, fractions[0], sustained, fractions[1], checked)
    Console(width=max(120, Console().width)).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
