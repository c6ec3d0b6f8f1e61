"""Timing primitives: steady-state seconds per call, and the machine's peak matmul rate.

The rules (jax ``docs/benchmarking.md``): compile before timing and report compile time separately, warm up,
block on every result, repeat and take the median. Each timed call here is a closure that already blocks on its
own result (``jax.block_until_ready``, or a CUDA synchronise for torch), so a timing never measures dispatch alone.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from ._flops import matmul_flops


def seconds_per_call(call: Callable[[], Any], calls: int) -> float:
    """Mean wall time of ``calls`` back-to-back blocking calls, in seconds."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def settle(call: Callable[[], Any], seconds: float) -> int:
    """Untimed calls, back to back, for at least ``seconds`` (at least one call); returns how many ran.

    Run before each timing so that what the implementation timed before left behind is not billed to this one:
    torch's OpenMP workers keep spinning for tens of milliseconds after a call, and on a 2-core machine the next
    call of another library ran 1.6–2.9× its steady time for up to ~60 ms (measured with lstm_jax's kernel after
    torch's training step).
    """
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    return calls


def calls_per_timing(first_call_s: float, min_time_s: float) -> int:
    """How many calls one timing repeats so that it lasts about ``min_time_s``: short calls are timed in batches,
    whose mean is far less disturbed by timer resolution and scheduler noise than a single sub-millisecond call.

    >>> calls_per_timing(0.001, 0.1), calls_per_timing(2.0, 0.1)
    (100, 1)
    """
    return max(1, math.ceil(min_time_s / max(first_call_s, 1e-9)))


def summarise(seconds: list[float]) -> dict[str, float]:
    """Median, min and max of repeated timings, in milliseconds."""
    ms = [1e3 * s for s in seconds]
    return {"ms_median": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms)}


def _peak_size(platform: str) -> int:
    # Large enough to reach the BLAS/XLA plateau on each platform, small enough to take well under a second.
    return 2048 if platform == "cpu" else 8192


def measure_peak(dtype: str, platform: str, *, repeats: int = 3, size: int | None = None) -> dict[str, Any]:
    """Best achieved rate of a square (N, N) @ (N, N) matmul, with XLA (``jnp.dot``) and, when installed, torch; N is
    ``size``, or by default 2048 on a CPU and 8192 on a GPU.

    The best of ``repeats`` timings after a warm-up call: a peak is what the hardware can do, so the fastest run
    is the estimate least disturbed by other load. ``gflops`` is the higher of the two libraries.

    Returns:
      ``{"size": N, "dtype", "jax_gflops", "torch_gflops" (None without torch), "gflops"}``.
    """
    import jax
    import jax.numpy as jnp

    size = size or _peak_size(platform)
    flop = matmul_flops(size, size, size)
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (size, size), jnp.dtype(dtype)) for k in keys)
    matmul = jax.jit(jnp.dot).lower(a, b).compile()

    def jax_call():
        return jax.block_until_ready(matmul(a, b))

    jax_call()
    jax_best = min(seconds_per_call(jax_call, 1) for _ in range(repeats))
    torch_best = _torch_peak_seconds(size, dtype, repeats)
    jax_gflops = flop / jax_best / 1e9
    torch_gflops = None if torch_best is None else flop / torch_best / 1e9
    return {
        "size": size,
        "dtype": dtype,
        "jax_gflops": jax_gflops,
        "torch_gflops": torch_gflops,
        "gflops": max(jax_gflops, torch_gflops or 0.0),
    }


def _torch_peak_seconds(size: int, dtype: str, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    a = torch.randn(size, size, device=device).to(torch_dtype)
    b = torch.randn(size, size, device=device).to(torch_dtype)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        out = a @ b
        synchronize()
        return out

    call()
    return min(seconds_per_call(call, 1) for _ in range(repeats))
