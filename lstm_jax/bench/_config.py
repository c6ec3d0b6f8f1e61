"""The benchmark configuration: one frozen value, and the two sweeps the command line starts from."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Everything a run depends on; recorded verbatim in the results JSON.

    Attributes:
      seq_lens: sequence lengths T of both parts.
      batch: B of the throughput part.
      input_size: I of the throughput part.
      hidden_size: H of the throughput part.
      num_layers: L of the throughput part.
      bidirectional: whether the throughput part's LSTMs have two directions per layer (D = 2; each layer above
        the first reads both directions' outputs, 2·H features).
      dtype: parameters, inputs and the peak matmul (``float32``, ``bfloat16``, ``float16``).
      impls: implementation names to run (``lstm_jax.bench._impls.REGISTRY``); None for all of them.
      repeats: timed repeats per point, interleaved across implementations; the median is reported.
      point_budget_s: a point (T and mode) whose warm-up calls, summed over implementations, say that
        ``repeats`` rounds would take longer than this gets fewer rounds, but never fewer than 3.
      min_time_s: each timed repeat runs enough calls to last at least this long.
      settle_s: untimed calls of the same implementation before each timed repeat, for at least this long (at
        least one call), so that threads the previously timed implementation left spinning (torch's OpenMP
        workers, for tens of milliseconds) do not slow this one down (``lstm_jax.bench._timing.settle``).
      peak_size: N of the (N, N) @ (N, N) matmul whose best rate is the peak every row's ``peak_fraction`` divides
        by; None for the platform's default (2048 on a CPU, 8192 on a GPU: large enough to reach the plateau).
      seeds: initialisations averaged by the gradient-norm part.
      grad_batch: sequences per seed in the gradient-norm part (whose I = 32 and H = 64 are fixed: see
        ``lstm_jax.bench._gradnorm.GradNormConfig``).
      quick: whether this is the ``--quick`` sweep (recorded, changes nothing by itself).
    """

    seq_lens: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    batch: int = 32
    input_size: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    impls: tuple[str, ...] | None = None
    repeats: int = 5
    point_budget_s: float = 40.0
    min_time_s: float = 0.2
    settle_s: float = 0.08
    peak_size: int | None = None
    seeds: int = 5
    grad_batch: int = 16
    quick: bool = False


DEFAULT = BenchConfig()
"""``make bench``: T = 16 … 4096, 7–14 minutes on 2 CPU cores (the Xeon and the EPYC of the README)."""

QUICK = BenchConfig(
    seq_lens=(16, 128),
    batch=8,
    input_size=32,
    hidden_size=64,
    repeats=3,
    point_budget_s=5.0,
    min_time_s=0.02,
    settle_s=0.0,
    peak_size=512,
    seeds=3,
    grad_batch=8,
    quick=True,
)
"""``--quick``: a small sweep, well under a minute on 2 CPU cores (the tests run it). Its peak is measured on a
512² matmul, a sixty-fourth of the default's work and below the plateau on a CPU: a rough scale for its small shapes,
not a figure to quote."""
