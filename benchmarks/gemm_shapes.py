"""The matmuls an LSTM is made of, timed in XLA and in PyTorch in the same run: where the CPU gap comes from.

An LSTM layer's flops are three kinds of matmul (B batch, I input, H hidden, T steps, PyTorch gate order):

* ``recurrent``: h_{t-1} W_hh, (B, H) @ (H, 4H), once per step inside the time loop — it cannot be batched
  over time. XLA runs it inside a ``lax.scan`` (as the library does); PyTorch as a Python loop of ``torch.mm``
  into a preallocated output (the closest eager equivalent of its fused RNN kernel).
* ``input``: X W_ih over the whole sequence, (T·B, I) @ (I, 4H): the projection cuDNN/oneDNN hoist out of the loop.
* ``weight-grad``: the backward pass's ∂W_hh = Hᵀ dZ, (H, T·B) @ (T·B, 4H), one GEMM over all steps.

Each is timed interleaved (XLA, PyTorch, XLA, …), median of ``--repeats``, and reported as GFLOP/s and the
ratio XLA / PyTorch. Run::

    .venv/bin/python benchmarks/gemm_shapes.py                    # B=32, I=H=256, T=256 (the bench's shape)
    .venv/bin/python benchmarks/gemm_shapes.py --hidden 512 --input 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _xla_calls(batch: int, input_size: int, hidden: int, steps: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    w_hh = jnp.asarray(rng.standard_normal((hidden, 4 * hidden), dtype=np.float32) * 0.05)
    w_ih = jnp.asarray(rng.standard_normal((input_size, 4 * hidden), dtype=np.float32) * 0.05)
    h0 = jnp.asarray(rng.standard_normal((batch, hidden), dtype=np.float32))
    xs = jnp.asarray(rng.standard_normal((steps * batch, input_size), dtype=np.float32))
    hs = jnp.asarray(rng.standard_normal((hidden, steps * batch), dtype=np.float32))
    dz = jnp.asarray(rng.standard_normal((steps * batch, 4 * hidden), dtype=np.float32))

    @jax.jit
    def recurrent(h0, w_hh):
        # Each step's output feeds the next step (one gate block of it), as in the LSTM: no step can be skipped.
        def step(h, _):
            return jnp.tanh((h @ w_hh)[:, :hidden]), None

        return jax.lax.scan(step, h0, None, length=steps)[0]

    matmul = jax.jit(jnp.matmul)
    return {
        "recurrent": lambda: jax.block_until_ready(recurrent(h0, w_hh)),
        "input": lambda: jax.block_until_ready(matmul(xs, w_ih)),
        "weight-grad": lambda: jax.block_until_ready(matmul(hs, dz)),
    }


def _torch_calls(batch: int, input_size: int, hidden: int, steps: int) -> dict[str, Callable[[], object]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    w_hh = torch.randn(hidden, 4 * hidden, generator=gen) * 0.05
    w_ih = torch.randn(input_size, 4 * hidden, generator=gen) * 0.05
    h0 = torch.randn(batch, hidden, generator=gen)
    xs = torch.randn(steps * batch, input_size, generator=gen)
    hs = torch.randn(hidden, steps * batch, generator=gen)
    dz = torch.randn(steps * batch, 4 * hidden, generator=gen)
    z = torch.empty(batch, 4 * hidden)

    def recurrent():
        with torch.inference_mode():
            h = h0
            for _ in range(steps):
                torch.mm(h, w_hh, out=z)
                h = torch.tanh(z[:, :hidden])
        return h

    def matmul(a, b):
        def call():
            with torch.inference_mode():
                return a @ b

        return call

    return {"recurrent": recurrent, "input": matmul(xs, w_ih), "weight-grad": matmul(hs, dz)}


def measure(batch: int, input_size: int, hidden: int, steps: int, repeats: int = 7) -> list[dict[str, object]]:
    """One row per matmul kind: its shape, flops, and median GFLOP/s in XLA and PyTorch (None without torch)."""
    shapes = {
        "recurrent": (batch, hidden, 4 * hidden, steps),
        "input": (steps * batch, input_size, 4 * hidden, 1),
        "weight-grad": (hidden, steps * batch, 4 * hidden, 1),
    }
    xla = _xla_calls(batch, input_size, hidden, steps)
    try:
        peer = _torch_calls(batch, input_size, hidden, steps)
    except ImportError:
        peer = None
    rows = []
    for kind, (m, k, n, count) in shapes.items():
        flops = 2 * m * k * n * count
        calls = {"xla": xla[kind]} | ({"torch": peer[kind]} if peer else {})
        for call in calls.values():  # compile and warm up
            call()
        times = {name: [] for name in calls}
        for _ in range(repeats):  # interleaved, so both see the same machine
            for name, call in calls.items():
                times[name].append(_seconds(call))
        rate = {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}
        rows.append(
            {
                "kind": kind,
                "shape": f"({m}, {k}) @ ({k}, {n})" + (f" × {count} steps" if count > 1 else ""),
                "gflop": flops / 1e9,
                "xla_gflops": rate["xla"],
                "torch_gflops": rate.get("torch"),
                "xla_over_torch": rate["xla"] / rate["torch"] if "torch" in rate else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = measure(args.batch, args.input, args.hidden, args.steps, args.repeats)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LSTM matmuls, B={args.batch} I={args.input} H={args.hidden} T={args.steps}, float32")
    for column in ("matmul", "shape", "XLA GFLOP/s", "torch GFLOP/s", "XLA / torch"):
        table.add_column(column)
    for row in rows:
        torch_rate, ratio = row["torch_gflops"], row["xla_over_torch"]
        table.add_row(
            row["kind"],
            row["shape"],
            f"{row['xla_gflops']:.0f}",
            "–" if torch_rate is None else f"{torch_rate:.0f}",
            "–" if ratio is None else f"{ratio:.2f}×",
        )
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
