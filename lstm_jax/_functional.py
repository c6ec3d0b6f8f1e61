"""The functional API: any :class:`~lstm_jax._cells.Cell` through :func:`init_cell` / :func:`scan_cell`, and the
LSTM, GRU and Elman RNN with ``torch.nn.LSTM/GRU/RNN`` call semantics on top of them.

Each entry point validates its input, arranges the initial carries in PyTorch's ``layer * D + direction`` order
and hands over to :func:`lstm_jax._driver.run_stack`. Backprop through time is ``jax.grad`` of the resulting
``lax.scan``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import jax
import jax.numpy as jnp

from . import _validate
from ._cells import Cell, GRUCell, LSTMCell, LSTMState, RNNCell, gru_cell, lstm_cell, rnn_cell
from ._driver import Impl, run_stack
from ._params import (
    GRUParams,
    GRUWeights,
    Initializer,
    LSTMParams,
    LSTMWeights,
    RNNParams,
    RNNWeights,
    init_stack,
    lecun_normal,
    orthogonal,
    peephole_normal,
)
from ._regularizers import Regularizers
from ._typing import Array, ArrayLike, DType, PRNGKey

# ---------------------------------------------------------------------------------------------------------------
# Any cell


def init_cell(
    cell: Cell,
    key: PRNGKey,
    input_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: DType = jnp.float32,
) -> tuple[tuple[Any, ...], ...]:
    """Initialises ``params[layer][direction]`` of a stack of ``cell``.

    Layer l > 0 reads the concatenated outputs of layer l-1; their width is found by tracing one ``cell.step``
    abstractly (``jax.eval_shape``), so a cell need not declare it.

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_cell(lstm_jax.GRUCell(8), jax.random.key(0), 3, num_layers=2, bidirectional=True)
    >>> params[1][0].w_ih.shape
    (16, 24)
    """

    def output_width():
        weights = cell.init(jax.random.key(0), 1, dtype)
        carry = cell.initial_carry(weights, 1, dtype)
        return cell.step(weights, carry, jnp.zeros((1, 1), dtype))[1]

    # Traced abstractly: nothing is initialised or computed to learn the width.
    output_size = jax.eval_shape(output_width).shape[-1]
    return init_stack(lambda k, n: cell.init(k, n, dtype), key, input_size, output_size, num_layers, bidirectional)


def _cast_kernels(params, matmul_dtype):
    """Casts every kernel (a leaf whose field or key name starts with ``w_``) to ``matmul_dtype``."""

    def cast(path, leaf):
        name = getattr(path[-1], "name", getattr(path[-1], "key", ""))
        return leaf.astype(matmul_dtype) if str(name).startswith("w_") else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def _prepare(name, params, weights_type, xs, batch_first, seq_lengths, dropout, key, regularizers):
    num_layers, num_directions = _validate.check_params(name, params, weights_type)
    first = params[0][0]
    input_size = first.w_ih.shape[0] if hasattr(first, "w_ih") else None
    xs = _validate.as_time_major(xs, batch_first, input_size)
    steps, batch, _ = xs.shape
    lengths = _validate.check_lengths(seq_lengths, batch, steps)
    _validate.check_dropout(dropout, key)
    if regularizers.active and key is None:
        raise ValueError(f"regularisers {regularizers} need a PRNG key: pass key=jax.random.key(...)")
    if dropout > 0.0 and num_layers == 1:
        warnings.warn(
            "dropout acts between stacked layers (as in PyTorch), so it has no effect with num_layers=1",
            stacklevel=3,
        )
    # The carry (cell state included) is kept in at least float32: low-precision kernels accumulate in float32
    # (lstm_jax.matmul), so a bfloat16 carry would not even keep the scan's carry type fixed.
    dtype = jnp.promote_types(jnp.result_type(xs.dtype, *jax.tree.leaves(params)), jnp.float32)
    return xs, lengths, num_layers * num_directions, batch, dtype


def _run(cell_step, params, xs, carries, lengths, batch_first, dropout, key, regularizers, matmul_dtype, impl="scan"):
    if matmul_dtype is not None:
        params = _cast_kernels(params, matmul_dtype)
    try:
        impl = Impl(impl)
    except ValueError:
        raise ValueError(f"impl must be one of {[i.value for i in Impl]}, got {impl!r}") from None
    ys, finals = run_stack(
        cell_step,
        params,
        xs,
        carries,
        lengths=lengths,
        dropout=dropout,
        key=key,
        regularizers=regularizers,
        impl=impl,
    )
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *finals)
    return (jnp.swapaxes(ys, 0, 1) if batch_first else ys), stacked


def scan_cell(
    cell: Cell,
    params,
    xs: ArrayLike,
    initial_carry: Any = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout: float | tuple[float, float] = 0.0,
    weight_dropout: float = 0.0,
    matmul_dtype: DType | None = None,
    impl: str | Impl = "scan",
) -> tuple[Array, Any]:
    """Runs a stack of any :class:`~lstm_jax.Cell` with PyTorch's semantics (see :func:`lstm`).

    Args:
      cell: the cell (its ``step`` and ``initial_carry``; ``init`` is not used here).
      params: ``params[layer][direction]`` from :func:`init_cell`.
      xs: (T, B, I), or (B, T, I) when ``batch_first``.
      initial_carry: the cell's carry pytree with every leaf stacked on a leading L·D axis
        (index ``layer * D + direction``); zeros (``cell.initial_carry``) when None.
      seq_lengths, batch_first, dropout, key: as in :func:`lstm`.
      input_dropout, recurrent_dropout, zoneout, weight_dropout: the stochastic regularisers of
        :mod:`lstm_jax._regularizers`, active only with ``key``.
      matmul_dtype: e.g. ``jnp.bfloat16``: kernels (``w_*`` leaves) are cast to it and their matmuls accumulate in
        float32 (:func:`lstm_jax.matmul`); the carry is kept in at least float32.
      impl: ``"scan"`` or ``"remat"`` (gradient checkpointing for long sequences); see :class:`lstm_jax.Impl`.

    Returns:
      ``(ys, final_carry)``: ys (T, B, D·O); the final carry stacked like ``initial_carry``.

    >>> import jax, lstm_jax
    >>> cell = lstm_jax.LSTMCell(8, peephole=True)
    >>> params = lstm_jax.init_cell(cell, jax.random.key(0), 3, num_layers=2)
    >>> ys, state = lstm_jax.scan_cell(cell, params, jax.random.normal(jax.random.key(1), (5, 4, 3)))
    >>> ys.shape, state.c.shape
    ((5, 4, 8), (2, 4, 8))
    """
    regularizers = Regularizers.make(
        input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, zoneout=zoneout, weight_dropout=weight_dropout
    )
    xs, lengths, num_states, batch, dtype = _prepare(
        "cell", params, None, xs, batch_first, seq_lengths, dropout, key, regularizers
    )
    zero = [
        cell.initial_carry(params[k // len(params[0])][k % len(params[0])], batch, dtype) for k in range(num_states)
    ]
    if initial_carry is None:
        carries = zero
    else:
        expected = jax.tree.map(lambda *leaves: jnp.stack(leaves), *zero)
        _validate.check_carry("initial_carry", initial_carry, expected)
        carries = [jax.tree.map(lambda leaf, k=k: leaf[k], initial_carry) for k in range(num_states)]
    return _run(cell.step, params, xs, carries, lengths, batch_first, dropout, key, regularizers, matmul_dtype, impl)


# ---------------------------------------------------------------------------------------------------------------
# LSTM, GRU, Elman RNN


def init_lstm(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
    dtype: DType = jnp.float32,
    input_init: Initializer = lecun_normal,
    recurrent_init: Initializer = orthogonal,
    projection_init: Initializer = lecun_normal,
    forget_bias: float = 1.0,
    peephole: bool = False,
    layer_norm: bool = False,
    peephole_init: Initializer = peephole_normal,
) -> LSTMParams:
    """Initialises the parameters of a (stacked, bidirectional, projected, peephole, layer-normalised) LSTM.

    Args:
      key: PRNG key.
      input_size: I, features of the input sequence.
      hidden_size: H, width of the cell state.
      num_layers: L, stacked layers.
      bidirectional: two directions per layer (D = 2) when True.
      proj_size: P > 0 adds an LSTMP projection h = (o ⊙ tanh(c)) W_hr of width P < H (Sak et al. 2014).
      dtype: parameter dtype.
      input_init: initialiser of each (I, H) gate block of ``w_ih``; default LeCun normal (variance 1/I).
      recurrent_init: initialiser of each (P, H) gate block of ``w_hh``; default orthogonal.
      projection_init: initialiser of ``w_hr`` (H, P); default LeCun normal.
      forget_bias: value of the forget gate's ``b_ih`` block; default 1.0 (Jozefowicz et al. 2015).
      peephole: add diagonal peephole weights (3, H) so the gates see the cell state (Gers & Schmidhuber 2000).
      layer_norm: layer-normalise the gate pre-activations and the cell state (Ba et al. 2016); gains start at 1,
        the cell-state bias at 0.
      peephole_init: initialiser of the (3, H) peephole weights; default normal with standard deviation 1/√H.

    Returns:
      ``params[layer][direction]`` of :class:`LSTMWeights` (layout: :mod:`lstm_jax._params`).

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_lstm(jax.random.key(0), 3, 8, num_layers=2, bidirectional=True)
    >>> len(params), len(params[0]), params[1][0].w_ih.shape
    (2, 2, (16, 32))
    """
    cell = LSTMCell(
        hidden_size,
        proj_size=proj_size,
        peephole=peephole,
        layer_norm=layer_norm,
        forget_bias=forget_bias,
        input_init=input_init,
        recurrent_init=recurrent_init,
        projection_init=projection_init,
        peephole_init=peephole_init,
    )
    return init_stack(lambda k, n: cell.init(k, n, dtype), key, input_size, cell.output_size, num_layers, bidirectional)


def init_gru(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: DType = jnp.float32,
    input_init: Initializer = lecun_normal,
    recurrent_init: Initializer = orthogonal,
) -> GRUParams:
    """Initialises the parameters of a GRU (gate blocks r, z, n); arguments as :func:`init_lstm`, biases zero.

    >>> import jax, lstm_jax
    >>> lstm_jax.init_gru(jax.random.key(0), 3, 8)[0][0].w_hh.shape
    (8, 24)
    """
    cell = GRUCell(hidden_size, input_init=input_init, recurrent_init=recurrent_init)
    return init_stack(lambda k, n: cell.init(k, n, dtype), key, input_size, hidden_size, num_layers, bidirectional)


def init_rnn(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    nonlinearity: Literal["tanh", "relu"] = "tanh",
    dtype: DType = jnp.float32,
    input_init: Initializer = lecun_normal,
    recurrent_init: Initializer = orthogonal,
) -> RNNParams:
    """Initialises an Elman RNN, h' = nonlinearity(x W_ih + b_ih + h W_hh + b_hh); biases zero.

    The nonlinearity is stored in the params (as static pytree metadata), so :func:`lstm_jax.rnn` needs no flag.

    >>> import jax, lstm_jax
    >>> lstm_jax.init_rnn(jax.random.key(0), 3, 8, nonlinearity="relu")[0][0].nonlinearity
    'relu'
    """
    cell = RNNCell(hidden_size, nonlinearity=nonlinearity, input_init=input_init, recurrent_init=recurrent_init)
    return init_stack(lambda k, n: cell.init(k, n, dtype), key, input_size, hidden_size, num_layers, bidirectional)


def lstm(
    params: LSTMParams,
    xs: ArrayLike,
    initial_state: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout: float | tuple[float, float] = 0.0,
    weight_dropout: float = 0.0,
    matmul_dtype: DType | None = None,
    impl: str | Impl = "kernel",
) -> tuple[Array, LSTMState]:
    """Runs a (stacked, bidirectional, projected) LSTM over a batch of sequences, as ``torch.nn.LSTM`` does.

    Equations, per layer and direction (gate order i, f, g, o; variants in :mod:`lstm_jax._cells`)::

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
      key: PRNG key for dropout and the regularisers; required when any of them is on.
      input_dropout: variational dropout (Gal & Ghahramani 2016) on each layer's input, one mask per sequence.
      recurrent_dropout: variational dropout on h entering the recurrence, one mask per sequence.
      zoneout: probability of keeping each unit's previous h and c at a step (Krueger et al. 2017); a rate or a
        pair (z_h, z_c).
      weight_dropout: DropConnect on ``w_hh`` (Merity et al. 2018, AWD-LSTM), one mask per call.
      matmul_dtype: ``jnp.bfloat16`` for bf16 matmuls with float32 accumulation and a float32 cell state.
      impl: implementation path: ``"kernel"`` (default; on XLA:CPU the plain float32 LSTM runs as a fused C++
        kernel; elsewhere — GPU/TPU, float64, bf16, projections, peepholes, layer norm — it falls back to
        ``"bptt"``), ``"cudnn"`` (cuDNN's LSTM on a GPU, where it was slower than ``"bptt"``; else ``"bptt"``),
        ``"bptt"`` (a hand-written backward pass with whole-sequence weight-gradient GEMMs, falling back to
        ``"scan"`` where it does not apply), ``"scan"`` (``jax.grad`` of ``lax.scan``, the reference; also the one
        that supports forward-mode autodiff, ``jax.jvp``/``jacfwd``) or ``"remat"`` (gradient checkpointing of
        √T-step segments: BPTT memory grows like √T, for one extra forward pass).
        See :class:`lstm_jax.Impl`. Results agree to float rounding.

    Returns:
      ``(ys, LSTMState(h_n, c_n))``: ys (T, B, D·P) (or (B, T, D·P)); h_n (L·D, B, P); c_n (L·D, B, H).

    Raises:
      ValueError: for a wrong rank or input size of xs, a wrong initial-state shape, bad seq_lengths, a rate
        outside [0, 1), or dropout/regularisers without a key.

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_lstm(jax.random.key(0), input_size=3, hidden_size=8, num_layers=2)
    >>> xs = jax.random.normal(jax.random.key(1), (5, 4, 3))  # (T, B, I)
    >>> ys, (h_n, c_n) = lstm_jax.lstm(params, xs)
    >>> ys.shape, h_n.shape, c_n.shape
    ((5, 4, 8), (2, 4, 8), (2, 4, 8))
    """
    regularizers = Regularizers.make(
        input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, zoneout=zoneout, weight_dropout=weight_dropout
    )
    xs, lengths, num_states, batch, dtype = _prepare(
        "lstm", params, LSTMWeights, xs, batch_first, seq_lengths, dropout, key, regularizers
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
    return _run(lstm_cell, params, xs, carries, lengths, batch_first, dropout, key, regularizers, matmul_dtype, impl)


def _single_state(name, cell_step, weights_type, params, xs, h0, seq_lengths, batch_first, dropout, key, matmul_dtype):
    regularizers = Regularizers()
    xs, lengths, num_states, batch, dtype = _prepare(
        name, params, weights_type, xs, batch_first, seq_lengths, dropout, key, regularizers
    )
    hidden = params[0][0].hidden_size
    if h0 is None:
        h0 = jnp.zeros((num_states, batch, hidden), dtype)
    else:
        h0 = _validate.check_state("h0", h0, (num_states, batch, hidden))
    carries = [h0[k] for k in range(num_states)]
    return _run(cell_step, params, xs, carries, lengths, batch_first, dropout, key, regularizers, matmul_dtype)


def gru(
    params: GRUParams,
    xs: ArrayLike,
    h0: ArrayLike | None = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
    matmul_dtype: DType | None = None,
) -> tuple[Array, Array]:
    """Runs a (stacked, bidirectional) GRU, as ``torch.nn.GRU`` does.

    Equations (gate order r, z, n)::

        r = σ(x W_ir + b_ir + h W_hr + b_hr),  z = σ(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h

    Args and semantics as :func:`lstm`, with a single state ``h0`` (L·D, B, H). For regularisers on a GRU, use
    :func:`scan_cell` with :class:`GRUCell`.

    Returns:
      ``(ys, h_n)``: ys (T, B, D·H) (or (B, T, D·H)); h_n (L·D, B, H).

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_gru(jax.random.key(0), 3, 8, bidirectional=True)
    >>> ys, h_n = lstm_jax.gru(params, jax.random.normal(jax.random.key(1), (5, 4, 3)))
    >>> ys.shape, h_n.shape
    ((5, 4, 16), (2, 4, 8))
    """
    return _single_state(
        "gru", gru_cell, GRUWeights, params, xs, h0, seq_lengths, batch_first, dropout, key, matmul_dtype
    )


def rnn(
    params: RNNParams,
    xs: ArrayLike,
    h0: ArrayLike | None = None,
    *,
    seq_lengths: ArrayLike | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
    matmul_dtype: DType | None = None,
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
    return _single_state(
        "rnn", rnn_cell, RNNWeights, params, xs, h0, seq_lengths, batch_first, dropout, key, matmul_dtype
    )
