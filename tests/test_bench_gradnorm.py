"""The gradient-norm maths: at initialisation the tanh RNN's input gradient decays at the mean-field rate, and the
LSTM's forget gate keeps it orders of magnitude larger at distance 64.

Why the thresholds (all at lstm_jax's default initialisation, N(0, 1) inputs, loss L = u · h_T):

* Elman RNN. A backward step multiplies ∂L/∂h by W_hhᵀ (orthogonal: norm kept) and by diag(tanh'(a)), so the
  squared norm shrinks by χ = E[tanh'(a)²] per step, a ~ N(0, q*) with q* = E[tanh(a)²] + 1 (the 1 is
  Var(x W_ih) under LeCun init). Quadrature gives ρ_RNN = √χ ≈ 0.632 (``rnn_mean_field_rate``); the measured
  slope must agree within 5 % (finite H = 64 and 3 seeds).
* LSTM. The cell path alone contributes diag(σ(f)) per step, f ~ N(b_f, q) with q = 1 + mean(h²) ∈ [1, 2], so
  the gradient decays no faster than ρ_LSTM ≥ min_q √E[σ(f)²] ≈ 0.716 for b_f = 1 (the other paths add variance,
  they do not cancel it). Over 64 steps that is (0.716 / 0.632)^64 ≈ 3·10³; a factor 10 of slack for the two
  networks' different gradient at distance 0 and for sampling leaves a threshold of ≈ 3·10² — "orders of
  magnitude". (Measured: ≈ 10⁶.)
"""

import math

import numpy as np
import pytest

from lstm_jax.bench._gradnorm import (
    VARIANTS,
    decay_per_step,
    gradient_norms,
    rnn_mean_field_rate,
    summarise,
)

T = 96  # distance 64 stays clear of the first steps, where h_0 = 0 is not yet in the stationary regime
DISTANCE = 64


@pytest.fixture(scope="module")
def curves():
    """Geometric-mean ‖∂L/∂x_t‖ by distance T − t, per network."""
    return {
        name: summarise(gradient_norms(name, T, seeds=3, batch=8, input_size=32, hidden_size=64)[0])["geomean"]
        for name in ("rnn", "lstm", "lstm_fb0", "lstm_fb3")
    }


def cell_path_rate_floor(forget_bias: float) -> float:
    """min over q ∈ [1, 2] of √E[σ(f)²], f ~ N(forget_bias, q) (Gauss–Hermite quadrature)."""
    z, w = np.polynomial.hermite_e.hermegauss(101)
    w = w / w.sum()

    def rate(q):
        return math.sqrt(float(np.sum(w / (1.0 + np.exp(-(forget_bias + math.sqrt(q) * z))) ** 2)))

    return min(rate(q) for q in np.linspace(1.0, 2.0, 11))


def test_mean_field_prediction():
    prediction = rnn_mean_field_rate()
    assert prediction["q"] == pytest.approx(1.464, abs=1e-3)
    assert prediction["rate"] == pytest.approx(0.632, abs=1e-3)


def test_rnn_decays_at_the_mean_field_rate(curves):
    assert decay_per_step(curves["rnn"]) == pytest.approx(rnn_mean_field_rate()["rate"], rel=0.05)


def test_lstm_gradient_at_distance_64_is_orders_of_magnitude_above_the_rnn(curves):
    rnn_rate, lstm_floor = rnn_mean_field_rate()["rate"], cell_path_rate_floor(1.0)
    assert lstm_floor == pytest.approx(0.716, abs=2e-3)
    assert decay_per_step(curves["lstm"]) > lstm_floor
    threshold = (lstm_floor / rnn_rate) ** DISTANCE / 10
    assert threshold > 100
    assert curves["lstm"][DISTANCE] / curves["rnn"][DISTANCE] > threshold


def test_forget_bias_sets_the_lstm_decay(curves):
    rates = {name: decay_per_step(curves[name]) for name in ("lstm_fb0", "lstm", "lstm_fb3")}
    assert rates["lstm_fb0"] < rates["lstm"] < rates["lstm_fb3"] <= 1.0 + 1e-2
    for name, bias in (("lstm_fb0", 0.0), ("lstm", 1.0), ("lstm_fb3", 3.0)):
        assert rates[name] > cell_path_rate_floor(bias), name
    assert VARIANTS["lstm"]["forget_bias"] == 1.0  # the library default is what the README's headline curve shows


def test_summaries_handle_underflow():
    samples = np.array([[1.0, 1e-3, 0.0], [4.0, 1e-1, 1e-40]])
    summary = summarise(samples)
    assert summary["geomean"] == pytest.approx([2.0, 1e-2, 0.0])
    assert summary["min"] == [1.0, 1e-3, 0.0]
    assert decay_per_step([0.5**d for d in range(70)]) == pytest.approx(0.5)
    assert decay_per_step([0.5**d for d in range(40)]) is None  # too short for the fit window
    assert decay_per_step([0.5**d if d < 30 else 0.0 for d in range(70)]) is None  # underflowed inside it


def test_overflowing_gradients_are_recorded_as_null():
    """A growing gradient (the layer-norm LSTM's over thousands of steps) overflows float32 to inf, and its
    backward pass to NaN: the summary records null there instead of writing invalid JSON, and the decay fit
    refuses a window that holds one."""
    import json

    from lstm_jax.bench._gradnorm import summarise

    samples = np.array([[1.0, 2.0, np.inf, 0.0], [1.0, 8.0, 3.0, np.nan]])
    summary = summarise(samples)
    assert summary["geomean"] == [1.0, 4.0, None, None]
    assert summary["min"][:2] == [1.0, 2.0] and summary["max"][2] is None
    json.dumps(summary, allow_nan=False)
    assert decay_per_step([1.0, 0.5, None, 0.125], window=(0, 3)) is None
