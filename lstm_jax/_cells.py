"""Single-step cells with the ``lax.scan`` step signature ``(carry, x_t) -> (carry, y_t)``.

Bind the weights with ``functools.partial(lstm_cell, weights)`` and the result is a scan body, or call it in a
Python loop for generation. Each step does one fused input matmul and one fused recurrent matmul (all G gates at
once) and leaves the element-wise gate math to XLA to fuse.

Equations (PyTorch's, ⊙ element-wise, σ the logistic sigmoid):

LSTM, gates i, f, g, o::

    [i f g o] = x W_ih + b_ih + h W_hh + b_hh
    c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
    h' = σ(o) ⊙ tanh(c')            (LSTMP: h' = (σ(o) ⊙ tanh(c')) W_hr)

GRU, gates r, z, n::

    r = σ(x W_ir + b_ir + h W_hr + b_hr)
    z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
    h' = (1 - z) ⊙ n + z ⊙ h

Elman RNN::

    h' = act(x W_ih + b_ih + h W_hh + b_hh),   act = tanh or relu
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._params import GRUWeights, LSTMWeights, RNNWeights
from ._typing import Array


class LSTMState(NamedTuple):
    """LSTM carry: ``h`` (…, P) the output/hidden state and ``c`` (…, H) the cell state.

    Being a NamedTuple it unpacks as ``h, c = state`` (PyTorch's ``(h_n, c_n)`` order).
    """

    h: Array
    c: Array


def _row(bias: Array) -> Array:
    # (N,) -> (1, N): explicit broadcasting keeps the library valid under jax_numpy_rank_promotion="raise".
    return bias[None, :]


def lstm_cell(weights: LSTMWeights, state: LSTMState, x: Array) -> tuple[LSTMState, Array]:
    """One LSTM step.

    Args:
      weights: one direction of one layer (``params[layer][direction]``).
      state: :class:`LSTMState` with h (B, P) and c (B, H).
      x: (B, I) input at this step.

    Returns:
      ``(new_state, h)`` with h (B, P): the new state, and the output, which is the new h.

    >>> import functools, jax, jax.numpy as jnp, lstm_jax
    >>> w = lstm_jax.init_lstm(jax.random.key(0), 3, 5)[0][0]
    >>> state = lstm_jax.LSTMState(jnp.zeros((2, 5)), jnp.zeros((2, 5)))
    >>> state, ys = jax.lax.scan(functools.partial(lstm_jax.lstm_cell, w), state, jnp.ones((7, 2, 3)))
    >>> ys.shape
    (7, 2, 5)
    """
    h, c = state
    z = x @ weights.w_ih + h @ weights.w_hh + _row(weights.b_ih + weights.b_hh)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if weights.w_hr is not None:
        h = h @ weights.w_hr
    return LSTMState(h, c), h


def gru_cell(weights: GRUWeights, h: Array, x: Array) -> tuple[Array, Array]:
    """One GRU step with PyTorch's equations (module docstring): ``(h (B, H), x (B, I)) -> (h', h')``.

    >>> import jax, jax.numpy as jnp, lstm_jax
    >>> w = lstm_jax.init_gru(jax.random.key(0), 3, 5)[0][0]
    >>> h, y = lstm_jax.gru_cell(w, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    gi = x @ weights.w_ih + _row(weights.b_ih)
    gh = h @ weights.w_hh + _row(weights.b_hh)
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(i_r + h_r)
    z = jax.nn.sigmoid(i_z + h_z)
    n = jnp.tanh(i_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


def rnn_cell(weights: RNNWeights, h: Array, x: Array) -> tuple[Array, Array]:
    """One Elman RNN step, ``(h (B, H), x (B, I)) -> (h', h')``; the nonlinearity comes from ``weights``.

    >>> import jax, jax.numpy as jnp, lstm_jax
    >>> w = lstm_jax.init_rnn(jax.random.key(0), 3, 5)[0][0]
    >>> h, y = lstm_jax.rnn_cell(w, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    pre = x @ weights.w_ih + h @ weights.w_hh + _row(weights.b_ih + weights.b_hh)
    h = jnp.tanh(pre) if weights.nonlinearity == "tanh" else jax.nn.relu(pre)
    return h, h
