"""One benchmark run from start to finish: measure, then write the JSON, CSV and PNGs and print the tables."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import sys
import time
from typing import Any

import jax

from . import _gradnorm, _impls, _plots, _report, _throughput
from ._config import BenchConfig
from ._env import environment, load_average
from ._timing import measure_peak


def _config_json(config: BenchConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


class _Progress:
    """A rich progress bar with one task whose description says what is running. Where the console is not a
    terminal (a log file, CI), the bar cannot redraw, so the start of each stage is printed as a line instead."""

    def __init__(self, console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("starting", total=total)

    def tick(self, description: str, advance: int = 1) -> None:
        if description:
            self.progress.update(self.task, description=description)
            if not self.console.is_terminal and "repeat" not in description:
                self.console.print(f"[{time.perf_counter() - self.started:6.0f} s] {description}", highlight=False)
        if advance:
            self.progress.advance(self.task, advance)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.update(self.task, description="done")
        self.progress.stop()


def cautions(env: dict[str, Any]) -> list[str]:
    """What makes this run's timings unrepresentative, from its ``environment`` section and jax's options.

    A busy machine (1-minute load average above 3/4 of the cores) inflates the absolute times, torch's threads most
    of all; XLA compiling with its optimisations off (``JAX_DISABLE_MOST_OPTIMIZATIONS``, the test suite's setting)
    slows every XLA implementation.
    """
    found = []
    load = env["load_average"]["start"]
    if load is not None and load[0] > 0.75 * env["cpu_count"]:
        found.append(
            f"the machine may be busy (load average {load[0]:.1f} on {env['cpu_count']} cores): other work inflates "
            "absolute times (torch's threads most of all); the interleaved ratios hold up better"
        )
    if jax.config.values.get("jax_disable_most_optimizations", False):
        found.append(
            "XLA compiles with its optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS, the test suite's setting): "
            "the XLA implementations' timings do not represent them"
        )
    return found


def run(config: BenchConfig, out: str | pathlib.Path, console) -> tuple[dict[str, Any], list[pathlib.Path]]:
    """Runs the suite and writes ``<stem>.json``, ``<stem>.csv`` and ``<stem>-*.png`` into ``out``.

    Args:
      config: the sweep.
      out: output directory (created if needed).
      console: a ``rich.console.Console`` for the progress bar and the tables.

    Returns:
      ``(results document, written paths)``.

    Raises:
      ValueError: for an unknown implementation name in ``config.impls``.
    """
    started = time.perf_counter()
    impls, skipped = _impls.resolve(config.impls)
    env = environment()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}-{env['platform']}{'-quick' if config.quick else ''}"

    console.print(f"[bold]lstm_jax benchmark[/] → {out / stem}.*")
    console.print(
        f"{env['platform']} ({env['device_kind']} × {env['device_count']}), {env['cpu_model']}, "
        f"{env['cpu_count']} cores; jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
        f"torch {env['torch'] or 'not installed'}; {config.dtype}"
    )
    console.print(f"implementations: {', '.join(impl.name for impl in impls) or 'none'}")
    if env["tuning_env"]:
        console.print("tuning environment: " + " ".join(f"{name}={value}" for name, value in env["tuning_env"].items()))
    for name, reason in skipped.items():
        console.print(f"[yellow]skipping {name}[/]: {reason}")
    for caution in cautions(env):
        console.print(f"[yellow]{caution}[/]")

    gradnorm_config = _gradnorm.GradNormConfig(seq_lens=config.seq_lens, seeds=config.seeds, batch=config.grad_batch)
    points = len(config.seq_lens) * len(_impls.MODES) * len(impls) * _throughput.steps_per_point(config)
    total = 2 + len(config.seq_lens) + points + len(_gradnorm.VARIANTS) * len(config.seq_lens)
    with _Progress(console, total) as progress:
        peaks = []

        def measure(when: str) -> None:
            progress.tick(f"peak matmul rate ({when})", 0)
            peaks.append({"when": when, **measure_peak(config.dtype, env["platform"], size=config.peak_size)})
            progress.tick("", 1)

        measure("start")
        rows, failures = _throughput.run_throughput(
            config, impls, progress.tick, after_seq_len=lambda seq_len: measure(f"after T={seq_len}")
        )
        gradnorm = _gradnorm.run_gradnorm(gradnorm_config, progress.tick)
        measure("end")

    env["load_average"]["end"] = load_average()
    # The best of several measurements spread over the run: other load only ever slows a measurement down.
    peak = max(p["gflops"] for p in peaks)
    for row in rows:
        row["peak_fraction"] = row["gflops"] / peak
    doc = {
        "schema": _report.SCHEMA_VERSION,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "elapsed_s": 0.0,
        "command": list(sys.argv),
        "config": _config_json(config),
        "environment": env,
        "peak": {"gflops": peak, "measurements": peaks},
        "flops": {
            "function": "lstm_jax.bench._flops.recurrent_flops",
            "convention": (
                "matmul flops only, 2 per multiply-add; training = forward + weight gradients + gradients "
                "with respect to h and to every layer's input but the data"
            ),
        },
        "implementations": [{"name": i.name, "description": i.description, "peer": i.peer} for i in impls],
        "skipped": skipped,
        "failures": failures,
        "throughput": rows,
        "gradnorm": gradnorm,
    }
    paths = [out / f"{stem}.json", out / f"{stem}.csv"]
    doc["elapsed_s"] = time.perf_counter() - started  # the measurements; reporting comes after
    _report.write_json(doc, paths[0])
    _report.write_csv(doc, paths[1])
    _report.print_report(doc, console)
    paths += _plots.write_plots(doc, out, stem)
    console.print(f"{doc['elapsed_s']:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return doc, paths
