"""Functional LSTM, GRU and Elman RNN with ``torch.nn.LSTM/GRU/RNN`` call semantics.

All three validate their input, arrange the initial carries in PyTorch's ``layer * D + direction`` order and hand
over to :func:`lstm_jax._driver.run_stack`. Backprop through time is ``jax.grad`` of the resulting ``lax.scan``.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp

from . import _validate
from ._cells import LSTMState, gru_cell, lstm_cell, rnn_cell
from ._driver import run_stack
from ._params import GRUParams, GRUWeights, LSTMParams, LSTMWeights, RNNParams, RNNWeights
from ._typing import Array, ArrayLike, PRNGKey


def _prepare(name, params, weights_type, xs, batch_first, seq_lengths, dropout, key):
    num_layers, num_directions = _validate.check_params(name, params, weights_type)
    xs = _validate.as_time_major(xs, batch_first, params[0][0].w_ih.shape[0])
    steps, batch, _ = xs.shape
    lengths = _validate.check_lengths(seq_lengths, batch, steps)
    _validate.check_dropout(dropout, key)
    if dropout > 0.0 and num_layers == 1:
        warnings.warn(
            "dropout acts between stacked layers (as in PyTorch), so it has no effect with num_layers=1",
            stacklevel=3,
        )
    dtype = jnp.result_type(xs.dtype, params[0][0].w_hh.dtype)
    return xs, lengths, num_layers * num_directions, batch, dtype


def _finish(ys: Array, batch_first: bool) -> Array:
    return jnp.swapaxes(ys, 0, 1) if batch_first else ys


def lstm(
    params: LSTMParams,
    xs: ArrayLike,
    initial_state: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
) -> tuple[Array, LSTMState]:
    """Runs a (stacked, bidirectional, projected) LSTM over a batch of sequences, as ``torch.nn.LSTM`` does.

    Equations, per layer and direction (gate order i, f, g, o; see :mod:`lstm_jax._cells`)::

        [i f g o] = x_t W_ih + b_ih + h_{t-1} W_hh + b_hh
        c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
        h_t = σ(o) ⊙ tanh(c_t)          (with proj_size: h_t = (σ(o) ⊙ tanh(c_t)) W_hr)

    Layer l > 0 reads the outputs of layer l-1, with dropout applied between layers when ``dropout > 0``.
    Bidirectional layers concatenate [forward, backward] outputs on the last axis.

    Args:
      params: from :func:`init_lstm` or :func:`from_torch`.
      xs: (T, B, I), or (B, T, I) when ``batch_first``.
      initial_state: ``(h_0, c_0)`` with h_0 (L·D, B, P) and c_0 (L·D, B, H), index ``layer * D + direction``;
        zeros when None.
      seq_lengths: optional (B,) ints in [1, T]. Steps t ≥ length output exactly zero, the final state is each
        sequence's state at its last valid step, and the backward direction starts at the last valid step
        (``pack_padded_sequence`` semantics). Traced lengths outside [1, T] behave as if clipped to [0, T].
      batch_first: layout of xs and ys (never of the states, as in PyTorch).
      dropout: rate in [0, 1) on the outputs of every layer but the last.
      key: PRNG key for dropout; required when ``dropout > 0``.

    Returns:
      ``(ys, LSTMState(h_n, c_n))``: ys (T, B, D·P) (or (B, T, D·P)); h_n (L·D, B, P); c_n (L·D, B, H).

    Raises:
      ValueError: for a wrong rank or input size of xs, a wrong initial-state shape, bad seq_lengths, or
        dropout outside [0, 1) or without a key.

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_lstm(jax.random.key(0), input_size=3, hidden_size=8, num_layers=2)
    >>> xs = jax.random.normal(jax.random.key(1), (5, 4, 3))  # (T, B, I)
    >>> ys, (h_n, c_n) = lstm_jax.lstm(params, xs)
    >>> ys.shape, h_n.shape, c_n.shape
    ((5, 4, 8), (2, 4, 8), (2, 4, 8))
    """
    xs, lengths, num_states, batch, dtype = _prepare(
        "lstm", params, LSTMWeights, xs, batch_first, seq_lengths, dropout, key
    )
    hidden, output = params[0][0].hidden_size, params[0][0].output_size
    if initial_state is None:
        h0 = jnp.zeros((num_states, batch, output), dtype)
        c0 = jnp.zeros((num_states, batch, hidden), dtype)
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise ValueError("initial_state must be a pair (h_0, c_0) (or an LSTMState)")
        h0 = _validate.check_state("initial_state h_0", initial_state[0], (num_states, batch, output))
        c0 = _validate.check_state("initial_state c_0", initial_state[1], (num_states, batch, hidden))
    carries = [LSTMState(h0[k], c0[k]) for k in range(num_states)]
    ys, finals = run_stack(lstm_cell, params, xs, carries, lengths=lengths, dropout=dropout, key=key)
    h_n = jnp.stack([state.h for state in finals])
    c_n = jnp.stack([state.c for state in finals])
    return _finish(ys, batch_first), LSTMState(h_n, c_n)


def _single_state(name, cell, weights_type, params, xs, h0, seq_lengths, batch_first, dropout, key):
    xs, lengths, num_states, batch, dtype = _prepare(
        name, params, weights_type, xs, batch_first, seq_lengths, dropout, key
    )
    hidden = params[0][0].hidden_size
    if h0 is None:
        h0 = jnp.zeros((num_states, batch, hidden), dtype)
    else:
        h0 = _validate.check_state("h0", h0, (num_states, batch, hidden))
    carries = [h0[k] for k in range(num_states)]
    ys, finals = run_stack(cell, params, xs, carries, lengths=lengths, dropout=dropout, key=key)
    return _finish(ys, batch_first), jnp.stack(finals)


def gru(
    params: GRUParams,
    xs: ArrayLike,
    h0: ArrayLike | None = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
) -> tuple[Array, Array]:
    """Runs a (stacked, bidirectional) GRU, as ``torch.nn.GRU`` does.

    Equations (gate order r, z, n)::

        r = σ(x W_ir + b_ir + h W_hr + b_hr),  z = σ(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h

    Args and semantics as :func:`lstm`, with a single state ``h0`` (L·D, B, H).

    Returns:
      ``(ys, h_n)``: ys (T, B, D·H) (or (B, T, D·H)); h_n (L·D, B, H).

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_gru(jax.random.key(0), 3, 8, bidirectional=True)
    >>> ys, h_n = lstm_jax.gru(params, jax.random.normal(jax.random.key(1), (5, 4, 3)))
    >>> ys.shape, h_n.shape
    ((5, 4, 16), (2, 4, 8))
    """
    return _single_state("gru", gru_cell, GRUWeights, params, xs, h0, seq_lengths, batch_first, dropout, key)


def rnn(
    params: RNNParams,
    xs: ArrayLike,
    h0: ArrayLike | None = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
) -> tuple[Array, Array]:
    """Runs a (stacked, bidirectional) Elman RNN, h' = act(x W_ih + b_ih + h W_hh + b_hh), as ``torch.nn.RNN``.

    The nonlinearity (tanh or relu) is part of the params (see :func:`init_rnn`). Args, semantics and returns as
    :func:`gru`.

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_rnn(jax.random.key(0), 3, 8, num_layers=2, nonlinearity="relu")
    >>> ys, h_n = lstm_jax.rnn(params, jax.random.normal(jax.random.key(1), (5, 4, 3)))
    >>> ys.shape, h_n.shape
    ((5, 4, 8), (2, 4, 8))
    """
    return _single_state("rnn", rnn_cell, RNNWeights, params, xs, h0, seq_lengths, batch_first, dropout, key)
