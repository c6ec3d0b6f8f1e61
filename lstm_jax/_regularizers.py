"""Stochastic regularisers of recurrent networks, applied per layer and direction by the driver.

All of them act only when a PRNG key is given (training); without a key the network is the plain, deterministic
one, which is what evaluation uses ("identity at eval"). Rates are probabilities in [0, 1).

* Variational dropout (Gal & Ghahramani 2016, "A Theoretically Grounded Application of Dropout in Recurrent
  Neural Networks"): one Bernoulli mask per sequence, reused at every time step, on

  - the input of each layer (``input_dropout``): x_t ← x_t ⊙ m_x / (1 − p), m_x of shape (B, I);
  - the hidden state entering the recurrence (``recurrent_dropout``): h_{t−1} W_hh becomes
    (h_{t−1} ⊙ m_h / (1 − p)) W_hh, m_h of shape (B, P). Only the recurrent input is masked; the carried state is
    not, so c and the outputs are computed from the masked h only through the gates. Needs an LSTM-style carry
    (:class:`lstm_jax.LSTMState`): in a GRU, h also enters the output interpolation, which this mask must not touch.

* Zoneout (Krueger et al. 2017, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations"): at every
  step each unit keeps its previous value with probability z::

      h_t = d_h ⊙ h_{t−1} + (1 − d_h) ⊙ h̃_t,   c_t = d_c ⊙ c_{t−1} + (1 − d_c) ⊙ c̃_t,   d ~ Bernoulli(z)

  and the output is the zoned h_t. ``zoneout=(z_h, z_c)``; a single-array carry (GRU, RNN) takes z_h only. At
  evaluation (no key) this library runs the plain cell; Krueger et al. instead use the expectation
  z ⊙ h_{t−1} + (1 − z) ⊙ h̃_t, which differs from the plain cell by O(z).

* Weight dropout / DropConnect on the recurrent kernel (Wan et al. 2013; Merity, Keskar & Socher 2018,
  AWD-LSTM): one mask on ``w_hh`` per call, W_hh ← W_hh ⊙ M / (1 − p), shared by the whole batch and all steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._cells import LSTMState
from ._typing import Array, PRNGKey
from ._validate import check_rate


@dataclasses.dataclass(frozen=True)
class Regularizers:
    """Rates of the stochastic regularisers (module docstring); all zero means none.

    Attributes:
      input_dropout: variational dropout on each layer's input, one mask per sequence.
      recurrent_dropout: variational dropout on h entering the recurrence, one mask per sequence.
      zoneout: (z_h, z_c) probabilities of keeping the previous h and c at each step.
      weight_dropout: DropConnect rate on ``w_hh``.
    """

    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: tuple[float, float] = (0.0, 0.0)
    weight_dropout: float = 0.0

    def __post_init__(self):
        check_rate("input_dropout", self.input_dropout)
        check_rate("recurrent_dropout", self.recurrent_dropout)
        check_rate("weight_dropout", self.weight_dropout)
        if not isinstance(self.zoneout, tuple) or len(self.zoneout) != 2:
            raise ValueError(f"zoneout must be a rate or a pair (z_h, z_c) of rates, got {self.zoneout!r}")
        check_rate("zoneout z_h", self.zoneout[0])
        check_rate("zoneout z_c", self.zoneout[1])

    @classmethod
    def make(cls, *, input_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0, weight_dropout=0.0) -> Regularizers:
        """Builds from call arguments; a single zoneout rate applies to both h and c."""
        if isinstance(zoneout, (int, float)) and not isinstance(zoneout, bool):
            zoneout = (zoneout, zoneout)
        elif isinstance(zoneout, list):
            zoneout = tuple(zoneout)
        return cls(input_dropout, recurrent_dropout, zoneout, weight_dropout)

    @property
    def active(self) -> bool:
        return any((self.input_dropout, self.recurrent_dropout, *self.zoneout, self.weight_dropout))


def _scaled_mask(key: PRNGKey, rate: float, shape: tuple[int, ...], dtype) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


def _drop_recurrent_kernel(weights: Any, key: PRNGKey, rate: float) -> Any:
    if not hasattr(weights, "w_hh"):
        raise ValueError(f"weight_dropout needs weights with a w_hh kernel, got {type(weights).__name__}")
    w_hh = weights.w_hh
    return dataclasses.replace(weights, w_hh=w_hh * _scaled_mask(key, rate, w_hh.shape, w_hh.dtype))


def _zone(keep_previous: Array, old: Array, new: Array) -> Array:
    return jnp.where(keep_previous, old, new)


def regularize(
    regularizers: Regularizers,
    key: PRNGKey,
    weights: Any,
    cell_step: Callable[[Any, Any, Array], tuple[Any, Array]],
    carry: Any,
    xs: Array,
) -> tuple[Callable[[Any, Any], tuple[Any, Array]], Any]:
    """Applies the regularisers to one direction of one layer.

    Returns:
      ``(step, scan_inputs)``: a scan body ``(carry, inputs_t) -> (carry, y_t)`` and the (T, …) pytree it scans
      over — xs, masked, and with per-step keys alongside when zoneout is on.
    """
    k_weights, k_input, k_recurrent, k_zoneout = jax.random.split(key, 4)
    if regularizers.weight_dropout:
        weights = _drop_recurrent_kernel(weights, k_weights, regularizers.weight_dropout)
    if regularizers.input_dropout:
        mask = _scaled_mask(k_input, regularizers.input_dropout, xs.shape[1:], xs.dtype)
        xs = xs * mask[None]

    def step(carry, x):
        return cell_step(weights, carry, x)

    if regularizers.recurrent_dropout:
        if not isinstance(carry, LSTMState):
            raise ValueError("recurrent_dropout needs an LSTM-style carry (LSTMState); use input_dropout or zoneout")
        h_mask = _scaled_mask(k_recurrent, regularizers.recurrent_dropout, carry.h.shape, carry.h.dtype)
        unmasked_step = step

        def step(carry, x):
            return unmasked_step(carry._replace(h=carry.h * h_mask), x)

    z_h, z_c = regularizers.zoneout
    if z_h or z_c:
        if not isinstance(carry, (LSTMState, jax.Array)):
            raise ValueError(f"zoneout needs an LSTMState or single-array carry, got {type(carry).__name__}")
        if z_c and not isinstance(carry, LSTMState):
            raise ValueError("zoneout on the cell state (z_c > 0) needs an LSTM cell; pass zoneout=(z_h, 0.0)")
        plain_step = step

        def step(carry, inputs):
            x, step_key = inputs
            new_carry, _ = plain_step(carry, x)
            k_h, k_c = jax.random.split(step_key)
            if isinstance(carry, LSTMState):
                h = _zone(jax.random.bernoulli(k_h, z_h, carry.h.shape), carry.h, new_carry.h)
                c = _zone(jax.random.bernoulli(k_c, z_c, carry.c.shape), carry.c, new_carry.c)
                return LSTMState(h, c), h
            h = _zone(jax.random.bernoulli(k_h, z_h, carry.shape), carry, new_carry)
            return h, h

        xs = (xs, jax.random.split(k_zoneout, xs.shape[0]))
    return step, xs
