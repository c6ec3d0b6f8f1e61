"""Figures of a run: the loss curve (every run with ``--out``) and the CO₂ forecast. Matplotlib, headless (Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none touched
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: Path, title: str) -> None:
    """Title, grid and legend, then write the figure to ``path`` and free it."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def smooth(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard draws it).

    >>> from lstm_jax.train._plots import smooth
    >>> smooth([1.0, 1.0, 1.0]).tolist()
    [1.0, 1.0, 1.0]
    """
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1.0 - weight) * value
        out.append(average / (1.0 - weight**i))
    return np.asarray(out)


def plot_loss(
    path: Path,
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str,
    baseline: float | None = None,
    log_scale: bool = False,
) -> None:
    """Training loss (raw, faint, and smoothed) and held-out loss against steps, one colour per run.

    Args:
      path: PNG to write.
      curves: run label → the run's metrics records (``{"kind": "train"|"eval", "step", "loss", ...}``).
      title: figure title.
      baseline: the trivial predictor's loss, drawn dashed.
      log_scale: logarithmic loss axis (for losses that fall by orders of magnitude).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for index, (label, records) in enumerate(curves.items()):
        colour = f"C{index}"
        train = [r for r in records if r["kind"] == "train"]
        held_out = [r for r in records if r["kind"] == "eval"]
        if train:
            steps = [r["step"] for r in train]
            losses = [r["loss"] for r in train]
            ax.plot(steps, losses, color=colour, alpha=0.2, linewidth=0.8)
            ax.plot(steps, smooth(losses), color=colour, label=f"{label} train")
        if held_out:
            ax.plot(
                [r["step"] for r in held_out], [r["loss"] for r in held_out], "o--", color=colour, markersize=3,
                label=f"{label} held-out",
            )  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle=":", label="baseline")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    _finish(plt, fig, ax, path, title)


def plot_forecast(
    path: Path,
    months: np.ndarray,
    actual: np.ndarray,
    split: int,
    forecasts: Mapping[str, np.ndarray],
    *,
    title: str,
    context: int = 96,
) -> None:
    """Actual series (the last ``context`` months before ``split`` and everything after) against forecasts that
    start at ``split``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    dates = months.astype("datetime64[D]")
    start = max(0, split - context)
    ax.plot(dates[start:], actual[start:], color="black", linewidth=1.2, label="actual")
    for index, (label, values) in enumerate(forecasts.items()):
        ax.plot(dates[split : split + len(values)], values, color=f"C{index}", linewidth=1.2, label=label)
    ax.axvline(dates[split], color="gray", linestyle=":")
    ax.set_ylabel("CO₂ (ppm)")
    _finish(plt, fig, ax, path, title)
