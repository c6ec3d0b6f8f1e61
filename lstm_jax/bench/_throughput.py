"""The throughput part: every implementation at every sequence length, forward and training, interleaved.

For each T and mode, every implementation is built and compiled first (compile time recorded apart), then
called once untimed (warm-up; its time sizes the timings, and the number of rounds where a point would
otherwise outlast its time budget). The timed repeats then go round the implementations in
turn, starting each round one implementation further along, so slow drifts of a shared machine (other load,
thermal limits) fall on all implementations alike rather than on whichever happens to run last; each timing
follows ``settle_s`` of untimed calls of the same implementation, so none pays for the threads the previous one
left spinning. The ratios
between implementations are therefore more trustworthy than any absolute time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from ._config import BenchConfig
from ._flops import recurrent_flops
from ._impls import MODES, Implementation, Problem
from ._timing import calls_per_timing, seconds_per_call, settle, summarise


def steps_per_point(config: BenchConfig) -> int:
    """Progress units per (T, mode, implementation): one for build and warm-up, one per timed repeat."""
    return 1 + config.repeats


def rounds_within_budget(config: BenchConfig, seconds_per_timing: list[float]) -> int:
    """Timed rounds for one point: ``config.repeats``, or fewer (at least 3) when one round of every
    implementation would make the point outlast ``config.point_budget_s``.

    >>> from lstm_jax.bench._config import DEFAULT
    >>> [rounds_within_budget(DEFAULT, per_impl) for per_impl in ([0.5, 1.0], [6.0, 4.0], [60.0])]
    [5, 4, 3]
    """
    per_round = sum(seconds_per_timing)
    if per_round * config.repeats <= config.point_budget_s:
        return config.repeats
    return min(config.repeats, max(3, int(config.point_budget_s // max(per_round, 1e-9))))


def run_throughput(
    config: BenchConfig,
    impls: list[Implementation],
    tick: Callable[[str, int], None] = lambda _, __: None,
    after_seq_len: Callable[[int], None] = lambda _: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Times every implementation at every point of the sweep.

    Args:
      config: the sweep.
      impls: implementations to compare (already filtered to those available here).
      tick: progress callback ``(description, units done)``.
      after_seq_len: called with T once both modes of T are done (the suite re-measures the peak there).

    Returns:
      ``(rows, failures)``: the ``throughput`` rows of the results JSON without ``peak_fraction`` (the peak is
      only known at the end of the run), and ``{impl, mode, seq_len, error}`` for points that raised.
    """
    rows, failures = [], []
    for seq_len in config.seq_lens:
        problem = Problem(
            seq_len,
            config.batch,
            config.input_size,
            config.hidden_size,
            config.num_layers,
            config.dtype,
            bidirectional=config.bidirectional,
        )
        for mode in MODES:
            ready, first_call, compile_s, memory, calls = [], {}, {}, {}, {}
            for impl in impls:
                tick(f"T={seq_len} {mode}: compile and warm up {impl.name}", 0)
                try:
                    step = impl.build(problem, mode)
                    start = time.perf_counter()
                    step.call()
                    first_call[impl.name] = time.perf_counter() - start
                except Exception as error:  # one failing point (out of memory, say) must not lose the run
                    failures.append({"impl": impl.name, "mode": mode, "seq_len": seq_len, "error": repr(error)})
                    tick("", steps_per_point(config))
                    continue
                compile_s[impl.name], memory[impl.name] = step.compile_s, step.memory
                calls[impl.name] = calls_per_timing(first_call[impl.name], config.min_time_s)
                ready.append((impl, step))
                tick("", 1)
            timings: dict[str, list[float]] = {impl.name: [] for impl, _ in ready}
            rounds = rounds_within_budget(config, [first_call[impl.name] * calls[impl.name] for impl, _ in ready])
            for repeat in range(rounds):
                shift = repeat % max(len(ready), 1)
                for impl, step in ready[shift:] + ready[:shift]:
                    tick(f"T={seq_len} {mode}: {impl.name}, repeat {repeat + 1}/{rounds}", 0)
                    settle(step.call, config.settle_s)
                    timings[impl.name].append(seconds_per_call(step.call, calls[impl.name]))
                    tick("", 1)
            tick("", (config.repeats - rounds) * len(ready))
            point = []
            for impl, _ in ready:
                stats = summarise(timings[impl.name])
                seconds = 1e-3 * stats["ms_median"]
                flop = recurrent_flops(
                    seq_len,
                    config.batch,
                    config.input_size,
                    config.hidden_size,
                    config.num_layers,
                    training=mode == "training",
                    bidirectional=config.bidirectional,
                )
                point.append(
                    {
                        "impl": impl.name,
                        "mode": mode,
                        "seq_len": seq_len,
                        "batch": config.batch,
                        "input_size": config.input_size,
                        "hidden_size": config.hidden_size,
                        "num_layers": config.num_layers,
                        "bidirectional": config.bidirectional,
                        "dtype": config.dtype,
                        "calls_per_timing": calls[impl.name],
                        "timings_ms": [1e3 * s for s in timings[impl.name]],
                        **stats,
                        "tokens_per_s": config.batch * seq_len / seconds,
                        "sequences_per_s": config.batch / seconds,
                        "gflop": flop / 1e9,
                        "gflops": flop / seconds / 1e9,
                        "compile_s": compile_s[impl.name],
                        "first_call_s": first_call[impl.name],
                        "memory": memory[impl.name],
                    }
                )
            for row in point:
                row["speedup_vs"] = {
                    other["impl"]: other["ms_median"] / row["ms_median"] for other in point if other is not row
                }
            rows += point
            ready = step = None
            gc.collect()  # free the last point's inputs and buffers before building the next
        after_seq_len(seq_len)
    return rows, failures
