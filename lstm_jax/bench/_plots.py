"""The PNG figures of a run: throughput and GFLOP/s against sequence length, and the gradient norms.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a headless machine and
``import lstm_jax`` never needs matplotlib.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from ._report import layers

# One colour per benchmark implementation (every lstm_jax path included: a fallback by position in the legend gave
# the kernel bptt's blue and remat torch's red) and per gradient-norm network.
COLORS = {
    "lstm_jax:kernel": "tab:purple",
    "lstm_jax:bptt": "tab:blue",
    "lstm_jax:scan": "tab:cyan",
    "lstm_jax:remat": "tab:gray",
    "lstm_jax:cudnn": "tab:olive",
    "flax": "tab:orange",
    "torch": "tab:red",
    "cudnn": "tab:green",
    "lstm": "tab:blue",
    "lstm_fb0": "tab:cyan",
    "lstm_fb3": "tab:purple",
    "lstm_peephole": "tab:olive",
    "lstm_layernorm": "tab:brown",
    "gru": "tab:green",
    "rnn": "tab:red",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# For the lines of a figure without a colour of their own in COLORS, or whose colour another line took.
SPARE_COLORS = (
    *(f"tab:{name}" for name in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")),
    *("gold", "navy", "teal", "magenta", "lime", "sienna", "slategray", "crimson", "darkkhaki", "indigo"),
)


def _palette(names: list[str]) -> dict[str, str]:
    """A colour per line of one figure: its own from COLORS where it has one, otherwise the first spare colour no
    other line of the figure has (names beyond the spares share dark grey; black is the peak line's)."""
    colors: dict[str, str] = {}
    for name in names:
        if name in COLORS and COLORS[name] not in colors.values():
            colors[name] = COLORS[name]
    spare = (color for color in SPARE_COLORS if color not in colors.values())
    for name in names:
        if name not in colors:
            colors[name] = next(spare, "darkgray")
    return colors


def _implementation_colors(doc: dict[str, Any]) -> dict[str, str]:
    """The colours of a run's implementations, the same in its throughput and GFLOP/s figures."""
    return _palette(list(dict.fromkeys(row["impl"] for row in doc["throughput"])))


def _subtitle(doc: dict[str, Any]) -> str:
    env, cfg = doc["environment"], doc["config"]
    return (
        f"{env['cpu_model'] if env['platform'] == 'cpu' else env['device_kind']} ({env['platform']}), "
        f"{cfg['dtype']}, B={cfg['batch']} I={cfg['input_size']} H={cfg['hidden_size']} L={layers(cfg)}; "
        f"jax {env['jax']}, {doc['created'][:10]}"
    )


def _seq_len_axis(ax, seq_lens) -> None:
    """Log₂ axis with the swept lengths as plain-number ticks."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(seq_lens), [str(t) for t in sorted(seq_lens)])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sequence length T")


def _plain_ticks(axis, si: bool = False) -> None:
    """Tick labels of a log axis as plain numbers (``250``, or ``250k`` with ``si``) rather than 2.5×10²."""
    from matplotlib.ticker import FuncFormatter

    def label(value, _):
        for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if si else ():
            if value >= factor:
                return f"{value / factor:g}{suffix}"
        return f"{value:g}"

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def _shared_legend(fig, ax) -> None:
    """One legend for both panels, below them, where it cannot hide a curve."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))


def _per_impl(doc: dict[str, Any], mode: str) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for row in doc["throughput"]:
        if row["mode"] == mode:
            series.setdefault(row["impl"], []).append(row)
    return {name: sorted(rows, key=lambda r: r["seq_len"]) for name, rows in series.items()}


def plot_throughput(doc: dict[str, Any], path: pathlib.Path) -> None:
    """Tokens/s against T per implementation, forward and training side by side; the band is the min–max of the
    timed runs."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=False)
    colors = _implementation_colors(doc)
    for ax, mode in zip(axes, ("forward", "training"), strict=True):
        for name, rows in _per_impl(doc, mode).items():
            seq_lens = np.array([r["seq_len"] for r in rows])
            tokens = np.array([r["seq_len"] * r["batch"] for r in rows])
            color = colors[name]
            ax.plot(seq_lens, [r["tokens_per_s"] for r in rows], "o-", color=color, label=name)
            ax.fill_between(
                seq_lens,
                tokens / (1e-3 * np.array([r["ms_max"] for r in rows])),
                tokens / (1e-3 * np.array([r["ms_min"] for r in rows])),
                color=color,
                alpha=0.2,
                linewidth=0,
            )
        _seq_len_axis(ax, doc["config"]["seq_lens"])
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis, si=True)
        ax.set_ylabel("tokens/s (B·T per second)")
        ax.set_title(f"{mode} ({'inference' if mode == 'forward' else 'value_and_grad over the whole sequence'})")
        ax.grid(True, which="both", alpha=0.3)
    _shared_legend(fig, axes[0])
    fig.suptitle(f"LSTM throughput — {_subtitle(doc)}", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gflops(doc: dict[str, Any], path: pathlib.Path) -> None:
    """Achieved GFLOP/s against T, with the measured peak matmul rate as a line and % of peak on the right axis."""
    plt = _pyplot()
    peak = doc["peak"]["gflops"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    colors = _implementation_colors(doc)
    for ax, mode in zip(axes, ("forward", "training"), strict=True):
        for name, rows in _per_impl(doc, mode).items():
            ax.plot([r["seq_len"] for r in rows], [r["gflops"] for r in rows], "o-", color=colors[name], label=name)
        ax.axhline(peak, color="black", linestyle="--", linewidth=1, label=f"peak matmul, measured: {peak:.0f} GFLOP/s")
        _seq_len_axis(ax, doc["config"]["seq_lens"])
        ax.set_yscale("log")
        ax.set_ylabel("achieved GFLOP/s (matmul flops)")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
        _plain_ticks(ax.yaxis)
        right = ax.secondary_yaxis("right", functions=(lambda g: 100 * g / peak, lambda p: p * peak / 100))
        _plain_ticks(right.yaxis)
        right.set_ylabel("% of peak")
    _shared_legend(fig, axes[0])
    fig.suptitle(f"Achieved matmul rate — {_subtitle(doc)}", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _positive(values: list[float]) -> np.ndarray:
    # Underflowed (0) values cannot sit on a log axis: NaN leaves a gap instead.
    array = np.asarray(values, dtype=float)
    return np.where(array > 0, array, np.nan)


FLOAT32_TINY = float(np.finfo(np.float32).tiny)

LINEAR_DISTANCE = 512
"""Distance range of the linear-axis panel: wide enough that every network but the near-plateau LSTM has
underflowed float32 well before it."""


def plot_gradnorm_distance(doc: dict[str, Any], path: pathlib.Path) -> None:
    """‖∂L/∂x_t‖ against T − t on a log scale: left, every network at the longest T on a linear distance axis
    (exponential decay is a straight line there) with the RNN's mean-field slope; right, every T of the sweep on
    log–log axes (the curves collapse: only the distance matters)."""
    plt = _pyplot()
    grad = doc["gradnorm"]
    seq_lens = sorted(grad["config"]["seq_lens"])
    longest = str(seq_lens[-1])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = _palette(list(grad["variants"]))
    for name, variant in grad["variants"].items():
        color = colors[name]
        curve = variant["input_grad_norm"][longest]
        distance = np.arange(len(curve["geomean"]))
        rate = variant["decay_per_step"]
        label = variant["label"] + ("" if rate is None else f": ×{rate:.3f}/step")
        left.plot(distance, _positive(curve["geomean"]), color=color, label=label)
        left.fill_between(distance, _positive(curve["min"]), _positive(curve["max"]), color=color, alpha=0.2, lw=0)
        for seq_len in seq_lens:
            c = variant["input_grad_norm"][str(seq_len)]
            alpha = 0.35 + 0.65 * (seq_len == seq_lens[-1])
            right.plot(
                np.arange(1, len(c["geomean"])),
                _positive(c["geomean"][1:]),
                color=color,
                alpha=alpha,
                label=variant["label"] if seq_len == seq_lens[-1] else None,
            )
    rnn = grad["variants"].get("rnn")
    start = grad["decay_window"][0]
    if rnn is not None and int(longest) > start:
        # The mean-field slope, anchored where the fit window starts (when the sequences reach it).
        anchor = rnn["input_grad_norm"][longest]["geomean"][start]
        rate = grad["rnn_mean_field"]["rate"]
        d = np.arange(start, min(LINEAR_DISTANCE, int(longest)))
        predicted = anchor * rate ** (d - start)
        keep = predicted >= FLOAT32_TINY  # where a float32 measurement could still follow it
        left.plot(d[keep], predicted[keep], "k--", lw=1, label=f"RNN mean-field prediction: ×{rate:.3f}/step")
    left.set_xlim(0, min(LINEAR_DISTANCE, int(longest) - 1))
    left.set_title(f"T = {longest}: geometric mean over {grad['config']['seeds']} seeds, band = min–max")
    right.set_xscale("log")
    right.set_title(f"every T in the sweep ({', '.join(map(str, seq_lens))}; the longest darkest)")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("distance T − t (steps between input x_t and the loss on h_T)")
        ax.set_ylabel("‖∂L/∂x_t‖")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.88))  # below the near-flat curve
    right.legend(fontsize=8, loc="lower left")
    cfg = grad["config"]
    fig.suptitle(
        f"Gradient reaching input x_t from L = u·h_T at initialisation (I={cfg['input_size']}, H={cfg['hidden_size']}, "
        f"B={cfg['batch']}; curves end where float32 underflows)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradnorm_params(doc: dict[str, Any], path: pathlib.Path) -> None:
    """‖∂L/∂θ‖ against T, log–log: it stops growing once the extra, more distant steps contribute nothing."""
    plt = _pyplot()
    grad = doc["gradnorm"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    colors = _palette(list(grad["variants"]))
    for name, variant in grad["variants"].items():
        norms = variant["param_grad_norm"]
        color = colors[name]
        ax.plot(norms["seq_len"], _positive(norms["geomean"]), "o-", color=color, label=variant["label"])
        ax.fill_between(
            norms["seq_len"], _positive(norms["min"]), _positive(norms["max"]), color=color, alpha=0.2, lw=0
        )
    _seq_len_axis(ax, grad["config"]["seq_lens"])
    ax.set_yscale("log")
    ax.set_ylabel("‖∂L/∂θ‖ (global norm, batch-mean loss)")
    ax.set_title("Parameter gradient norm at initialisation vs T\n(geometric mean over seeds, band = min–max)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTS = {
    "throughput": plot_throughput,
    "gflops": plot_gflops,
    "gradnorm-distance": plot_gradnorm_distance,
    "gradnorm-params": plot_gradnorm_params,
}
"""Suffix of ``<stem>-<suffix>.png`` → plotting function."""


def write_plots(doc: dict[str, Any], out: pathlib.Path, stem: str) -> list[pathlib.Path]:
    """Writes every figure whose data the run has; returns their paths."""
    paths = []
    for suffix, plot in PLOTS.items():
        needs = doc["gradnorm"]["variants"] if suffix.startswith("gradnorm") else doc["throughput"]
        if needs:
            path = out / f"{stem}-{suffix}.png"
            plot(doc, path)
            paths.append(path)
    return paths
