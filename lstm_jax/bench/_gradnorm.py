"""Gradient norms at initialisation: how much of a loss's gradient reaches inputs far in the past.

For a loss on the final hidden state, L = u · h_T with a fixed unit vector u (so ‖∂L/∂h_T‖ = 1), backprop through
time gives the gradient at input x_t as a product of one Jacobian per step between t and T (Pascanu, Mikolov &
Bengio 2013, eq. 5)::

    ∂L/∂x_t = uᵀ (∂h_T/∂h_{T-1}) ⋯ (∂h_{t+1}/∂h_t) (∂h_t/∂x_t)

* Elman RNN: ∂h_k/∂h_{k-1} = diag(tanh'(a_k)) W_hhᵀ. With orthogonal W_hh the product keeps norms except for the
  tanh' < 1 factors, so ‖∂L/∂x_t‖ decays like ρ^(T-t): exponentially. Mean-field theory gives ρ (see
  :func:`rnn_mean_field_rate`).
* LSTM: the cell state adds a path c_k = σ(f_k) ⊙ c_{k-1} + … whose Jacobian is diag(σ(f_k)) plus smaller
  terms — the constant error carousel of Hochreiter & Schmidhuber (1997) when σ(f) = 1. The gradient decays at
  the rate the forget gates allow: slowly with the usual forget bias 1, hardly at all with a larger one.

:func:`run_gradnorm` measures, for each cell and sequence length, ‖∂L/∂x_t‖ against the distance T − t (0 for the
last input) and the global parameter gradient norm ‖∂L/∂θ‖ (L averaged over the batch) against T, over several
seeds (each a fresh initialisation and fresh N(0, 1) inputs), and summarises each curve across seeds by its
geometric mean, minimum and maximum. Values below float32's range (about 1e-38) underflow to 0; plots leave them
out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax

VARIANTS: dict[str, dict[str, Any]] = {
    "lstm": {"cell": "lstm", "forget_bias": 1.0, "label": "LSTM, forget bias 1 (default)"},
    "lstm_fb0": {"cell": "lstm", "forget_bias": 0.0, "label": "LSTM, forget bias 0"},
    "lstm_fb3": {"cell": "lstm", "forget_bias": 3.0, "label": "LSTM, forget bias 3"},
    "lstm_peephole": {"cell": "lstm", "forget_bias": 1.0, "peephole": True, "label": "peephole LSTM"},
    "lstm_layernorm": {"cell": "lstm", "forget_bias": 1.0, "layer_norm": True, "label": "layer-norm LSTM"},
    "gru": {"cell": "gru", "label": "GRU"},
    "rnn": {"cell": "rnn", "label": "Elman RNN (tanh)"},
}
"""The networks compared, all with lstm_jax's default initialisation (LeCun-normal input kernels, orthogonal
recurrent kernels, zero biases except the LSTM forget gate's)."""

DECAY_WINDOW = (16, 64)
"""Distances between which the per-step decay factor is fitted: past the first steps' transient, and short enough
that even the fastest-decaying network stays far above float32 underflow."""


@dataclasses.dataclass(frozen=True)
class GradNormConfig:
    """Sizes of the gradient-norm experiment. The maths does not depend on them much; they are kept small so the
    longest sequences cost seconds."""

    seq_lens: tuple[int, ...]
    seeds: int = 5
    batch: int = 16
    input_size: int = 32
    hidden_size: int = 64


def _init_and_apply(variant: str, key, input_size: int, hidden_size: int) -> tuple[Any, Callable]:
    spec = VARIANTS[variant]
    if spec["cell"] == "lstm":
        params = lstm_jax.init_lstm(
            key,
            input_size,
            hidden_size,
            forget_bias=spec["forget_bias"],
            peephole=spec.get("peephole", False),
            layer_norm=spec.get("layer_norm", False),
        )
        return params, lambda p, xs: lstm_jax.lstm(p, xs)[1].h[-1]
    if spec["cell"] == "gru":
        return lstm_jax.init_gru(key, input_size, hidden_size), lambda p, xs: lstm_jax.gru(p, xs)[1][-1]
    return lstm_jax.init_rnn(key, input_size, hidden_size), lambda p, xs: lstm_jax.rnn(p, xs)[1][-1]


def _norm(v: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis, scaled by the largest entry first (as BLAS nrm2 does): squaring
    entries below 1e-19 would underflow float32 and cut every curve off at 1e-19 instead of 1e-38."""
    scale = jnp.max(jnp.abs(v), axis=-1, keepdims=True)
    safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    return (safe * jnp.sqrt(jnp.sum(jnp.square(v / safe), axis=-1, keepdims=True)))[..., 0]


def gradient_norms(
    variant: str, seq_len: int, *, seeds: int, batch: int, input_size: int, hidden_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed gradient norms of L = u · h_T for one network (see the module docstring).

    Args:
      variant: a key of :data:`VARIANTS`.
      seq_len: T.
      seeds: number of independent initialisations (and inputs, and u); seed s uses ``jax.random.key(s)``.
      batch: sequences per seed; the per-distance norm is their mean.
      input_size: I.
      hidden_size: H.

    Returns:
      ``(input_norms, param_norms)``: input_norms (seeds, T) with ``input_norms[s, d]`` the batch mean of
      ‖∂L_b/∂x_{T-d}‖ at distance d = 0 … T-1 (x_T the last input), and param_norms (seeds,) the global norm of
      the parameter gradient of the batch-mean loss.
    """

    inits, final_h = [], None
    for seed in range(seeds):
        k_params, k_xs, k_u = jax.random.split(jax.random.key(seed), 3)
        params, final_h = _init_and_apply(variant, k_params, input_size, hidden_size)
        u = jax.random.normal(k_u, (hidden_size,))
        inits.append((params, jax.random.normal(k_xs, (seq_len, batch, input_size)), u / jnp.linalg.norm(u)))
    params, xs, u = jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)  # a leading seed axis

    def one_seed(params, xs, u):
        def loss(p, x):
            # Summed over the batch, so ∂loss/∂x[:, b] is sequence b's own gradient.
            return jnp.sum(final_h(p, x) @ u)

        param_grads, input_grads = jax.grad(loss, argnums=(0, 1))(params, xs)
        input_norms = jnp.mean(_norm(input_grads), axis=1)[::-1]  # (T,) by distance T − t
        param_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(param_grads))) / batch
        return input_norms, param_norm

    input_norms, param_norms = jax.jit(jax.vmap(one_seed))(params, xs, u)
    return np.asarray(input_norms, np.float64), np.asarray(param_norms, np.float64)


def summarise(samples: np.ndarray) -> dict[str, list[float | None]]:
    """Geometric mean, min and max of (seeds, N) samples over seeds; the geometric mean is 0 where any seed
    underflowed to 0, and all three are None (JSON null) where any seed overflowed float32 (inf, or the NaN an
    overflowing backward pass turns into) — a growing gradient, as the layer-norm LSTM's at long distances.

    The geometric mean is the mean on the log scale the curves are read on.
    """
    overflow = ~np.all(np.isfinite(samples), axis=0)
    samples = np.where(np.isfinite(samples), samples, 1.0)
    with np.errstate(divide="ignore"):
        logs = np.log(samples)
    geomean = np.where(np.all(samples > 0, axis=0), np.exp(np.mean(np.where(samples > 0, logs, 0.0), axis=0)), 0.0)
    return {
        "geomean": _rounded(geomean, overflow),
        "min": _rounded(samples.min(axis=0), overflow),
        "max": _rounded(samples.max(axis=0), overflow),
    }


def _rounded(values: np.ndarray, overflow: np.ndarray) -> list[float | None]:
    # Five significant figures: plenty for quantities that span tens of decades, and a JSON a fraction the size.
    return [
        None if bad else float(f"{v:.5g}")
        for v, bad in zip(np.atleast_1d(values), np.atleast_1d(overflow), strict=True)
    ]


def decay_per_step(geomean: list[float], window: tuple[int, int] = DECAY_WINDOW) -> float | None:
    """Per-step factor ρ of an exponential fit ‖∂L/∂x‖ ∝ ρ^d over distances ``window``; None if the curve is too
    short or underflows inside the window."""
    start, stop = window
    if len(geomean) <= stop:
        return None
    values = np.asarray(geomean[start : stop + 1], dtype=float)  # None (overflow) becomes NaN
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        return None
    slope = np.polyfit(np.arange(start, stop + 1), np.log(values), 1)[0]
    return float(math.exp(slope))


def rnn_mean_field_rate(input_variance: float = 1.0, points: int = 101) -> dict[str, float]:
    """Mean-field prediction of the Elman tanh RNN's per-step gradient decay at lstm_jax's initialisation.

    With orthogonal W_hh (norm-preserving) and LeCun-normal W_ih on N(0, 1) inputs (so x W_ih has variance
    ``input_variance`` = 1 per unit), each pre-activation a = h W_hh + x W_ih is approximately N(0, q) with the
    fixed point q* = E[tanh(a)²] + input_variance. A backward step multiplies the gradient by W_hh (norm kept) and
    diag(tanh'(a)), which scales its squared norm by χ = E[tanh'(a)²] = E[(1 − tanh(a)²)²], so the norm decays by
    ρ = √χ per step (Poole et al. 2016; Chen, Pennington & Schoenholz 2018). Expectations use Gauss–Hermite
    quadrature.

    Returns:
      ``{"q": q*, "rate": ρ}``.

    >>> round(rnn_mean_field_rate()["rate"], 3)
    0.632
    """
    z, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / w.sum()
    q = input_variance
    for _ in range(200):
        q = float(np.sum(w * np.tanh(math.sqrt(q) * z) ** 2)) + input_variance
    chi = float(np.sum(w * (1.0 - np.tanh(math.sqrt(q) * z) ** 2) ** 2))
    return {"q": q, "rate": math.sqrt(chi)}


def run_gradnorm(config: GradNormConfig, tick: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Runs every variant at every sequence length.

    Returns:
      The ``gradnorm`` section of the results JSON (documented in :mod:`lstm_jax.bench._report`).
    """
    variants = {}
    for name, spec in VARIANTS.items():
        by_seq_len, param_samples = {}, []
        for seq_len in config.seq_lens:
            tick(f"gradient norms: {spec['label']}, T={seq_len}")
            input_norms, param_norms = gradient_norms(
                name,
                seq_len,
                seeds=config.seeds,
                batch=config.batch,
                input_size=config.input_size,
                hidden_size=config.hidden_size,
            )
            by_seq_len[str(seq_len)] = summarise(input_norms)
            param_samples.append(param_norms)
        longest = by_seq_len[str(max(config.seq_lens))]
        variants[name] = {
            **{k: v for k, v in spec.items() if k != "label"},
            "label": spec["label"],
            "input_grad_norm": by_seq_len,
            "param_grad_norm": {"seq_len": list(config.seq_lens), **summarise(np.stack(param_samples, axis=1))},
            "decay_per_step": decay_per_step(longest["geomean"]),
        }
    return {
        "config": dataclasses.asdict(config) | {"seq_lens": list(config.seq_lens)},
        "loss": "L = u · h_T, u a random unit vector per seed; ‖∂L/∂θ‖ of the batch-mean loss",
        "decay_window": list(DECAY_WINDOW),
        "rnn_mean_field": rnn_mean_field_rate(),
        "variants": variants,
    }
