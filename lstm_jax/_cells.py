"""Cells: single steps with the ``lax.scan`` signature, and the cell protocol the driver runs.

A step is ``(carry, x_t) -> (carry, y_t)`` once its weights are bound (``functools.partial(lstm_cell, weights)``),
so it is a scan body as it is, or a step of a Python generation loop. Each step does one fused input matmul and one
fused recurrent matmul (all G gates at once) and leaves the element-wise gate math to XLA to fuse.

Equations (PyTorch's, ⊙ element-wise, σ the logistic sigmoid):

LSTM, gates i, f, g, o::

    [i f g o] = x W_ih + b_ih + h W_hh + b_hh
    c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
    h' = σ(o) ⊙ tanh(c')            (LSTMP: h' = (σ(o) ⊙ tanh(c')) W_hr)

  with peepholes (Gers & Schmidhuber 2000), the gates also see the cell state, diagonally::

    i += p_i ⊙ c,   f += p_f ⊙ c,   o += p_o ⊙ c'

  with layer normalisation (Ba, Kiros & Hinton 2016, eqs. 20-22; LN over the whole 4H gate vector)::

    [i f g o] = LN(x W_ih; γ_ih) + LN(h W_hh; γ_hh) + b_ih + b_hh
    h' = σ(o) ⊙ tanh(LN(c'; γ_c, β_c))

GRU, gates r, z, n::

    r = σ(x W_ir + b_ir + h W_hr + b_hr)
    z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
    h' = (1 - z) ⊙ n + z ⊙ h

Elman RNN::

    h' = act(x W_ih + b_ih + h W_hh + b_hh),   act = tanh or relu

Mixed precision: when a kernel is stored in a low-precision float (bfloat16/float16, see ``matmul_dtype`` of
:func:`lstm_jax.lstm`), its matmul casts the other operand to that dtype and accumulates in float32, so the gate
math and the cell state stay float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from ._params import (
    NONLINEARITIES,
    GRUWeights,
    Initializer,
    LSTMWeights,
    RNNWeights,
    check_positive_int,
    draw,
    init_layer_norm,
    lecun_normal,
    orthogonal,
    peephole_normal,
    per_gate,
)
from ._typing import Array, DType, PRNGKey

LAYER_NORM_EPSILON = 1e-5


class LSTMState(NamedTuple):
    """LSTM carry: ``h`` (…, P) the output/hidden state and ``c`` (…, H) the cell state.

    Being a NamedTuple it unpacks as ``h, c = state`` (PyTorch's ``(h_n, c_n)`` order).
    """

    h: Array
    c: Array


def _row(bias: Array) -> Array:
    # (N,) -> (1, N): explicit broadcasting keeps the library valid under jax_numpy_rank_promotion="raise".
    return bias[None, :]


def matmul(x: Array, kernel: Array) -> Array:
    """``x @ kernel``; with a low-precision kernel, x is cast to its dtype and the product accumulated in float32."""
    if jnp.finfo(kernel.dtype).bits >= 32:
        return x @ kernel
    return jnp.matmul(x.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32)


def _layer_norm(z: Array, gamma: Array, beta: Array | None = None) -> Array:
    mean = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
    out = (z - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPSILON) * _row(gamma)
    return out if beta is None else out + _row(beta)


def lstm_cell(weights: LSTMWeights, state: LSTMState, x: Array) -> tuple[LSTMState, Array]:
    """One LSTM step (with the projection, peephole and layer-norm variants its weights hold).

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
    ln = weights.layer_norm
    if ln is None:
        z = matmul(x, weights.w_ih) + matmul(h, weights.w_hh) + _row(weights.b_ih + weights.b_hh)
    else:
        z = (
            _layer_norm(matmul(x, weights.w_ih), ln.gamma_ih)
            + _layer_norm(matmul(h, weights.w_hh), ln.gamma_hh)
            + _row(weights.b_ih + weights.b_hh)
        )
    i, f, g, o = jnp.split(z, 4, axis=-1)
    if weights.peephole is not None:
        p_i, p_f, p_o = weights.peephole
        i = i + _row(p_i) * c
        f = f + _row(p_f) * c
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    if weights.peephole is not None:
        o = o + _row(p_o) * c
    c_out = c if ln is None else _layer_norm(c, ln.gamma_c, ln.beta_c)
    h = jax.nn.sigmoid(o) * jnp.tanh(c_out)
    if weights.w_hr is not None:
        h = matmul(h, weights.w_hr)
    return LSTMState(h, c), h


def gru_cell(weights: GRUWeights, h: Array, x: Array) -> tuple[Array, Array]:
    """One GRU step with PyTorch's equations (module docstring): ``(h (B, H), x (B, I)) -> (h', h')``.

    >>> import jax, jax.numpy as jnp, lstm_jax
    >>> w = lstm_jax.init_gru(jax.random.key(0), 3, 5)[0][0]
    >>> h, y = lstm_jax.gru_cell(w, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
    """
    gi = matmul(x, weights.w_ih) + _row(weights.b_ih)
    gh = matmul(h, weights.w_hh) + _row(weights.b_hh)
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
    pre = matmul(x, weights.w_ih) + matmul(h, weights.w_hh) + _row(weights.b_ih + weights.b_hh)
    h = jnp.tanh(pre) if weights.nonlinearity == "tanh" else jax.nn.relu(pre)
    return h, h


class Cell(Protocol):
    """The cell protocol: what the driver needs to run a recurrence over layers, directions and time.

    A cell is any object with these three methods (a frozen dataclass holding its sizes is the usual shape). The
    weights of one direction of one layer are any pytree; the carry is any pytree of (B, ·) arrays. Given a cell,
    :func:`lstm_jax.init_cell` builds ``params[layer][direction]`` and :func:`lstm_jax.scan_cell` runs it with
    ``num_layers``, ``bidirectional``, ``seq_lengths``, initial states, inter-layer dropout, the regularisers and
    mixed precision — the LSTM, GRU and Elman RNN of this library are :class:`LSTMCell`, :class:`GRUCell` and
    :class:`RNNCell` run exactly that way.

    Only ``init`` may depend on the cell's own fields; ``initial_carry`` and ``step`` must read everything they need
    from the weights, so that params alone (say, imported from PyTorch) determine the computation.
    """

    def init(self, key: PRNGKey, input_size: int, dtype: DType) -> Any:
        """Weights of one direction of one layer reading inputs of width ``input_size``."""
        ...

    def initial_carry(self, weights: Any, batch: int, dtype: DType) -> Any:
        """The zero state: a pytree of (batch, ·) arrays."""
        ...

    def step(self, weights: Any, carry: Any, x: Array) -> tuple[Any, Array]:
        """``(carry, x_t (B, I)) -> (carry, y_t (B, O))``, the ``lax.scan`` step with the weights bound first."""
        ...


@dataclasses.dataclass(frozen=True)
class LSTMCell:
    """The LSTM (and its projection, peephole and layer-norm variants) as a :class:`Cell`.

    Fields configure initialisation only; see :func:`lstm_jax.init_lstm` for their meaning.
    """

    hidden_size: int
    proj_size: int = 0
    peephole: bool = False
    layer_norm: bool = False
    forget_bias: float = 1.0
    input_init: Initializer = lecun_normal
    recurrent_init: Initializer = orthogonal
    projection_init: Initializer = lecun_normal
    peephole_init: Initializer = peephole_normal

    def __post_init__(self):
        check_positive_int("hidden_size", self.hidden_size)
        proj = self.proj_size
        if isinstance(proj, bool) or not isinstance(proj, int) or not 0 <= proj < self.hidden_size:
            raise ValueError(f"proj_size must be an int in [0, hidden_size={self.hidden_size}), got {proj!r}")

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def init(self, key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> LSTMWeights:
        H, P = self.hidden_size, self.output_size
        k_ih, k_hh, k_hr, k_peep = jax.random.split(key, 4)
        forget = slice(H, 2 * H)
        return LSTMWeights(
            w_ih=per_gate(self.input_init, k_ih, input_size, H, 4, dtype),
            w_hh=per_gate(self.recurrent_init, k_hh, P, H, 4, dtype),
            b_ih=jnp.zeros((4 * H,), dtype).at[forget].set(self.forget_bias),
            b_hh=jnp.zeros((4 * H,), dtype),
            w_hr=draw(self.projection_init, k_hr, (H, P), dtype) if self.proj_size else None,
            peephole=draw(self.peephole_init, k_peep, (3, H), dtype) if self.peephole else None,
            layer_norm=init_layer_norm(H, dtype) if self.layer_norm else None,
        )

    def initial_carry(self, weights: LSTMWeights, batch: int, dtype: DType) -> LSTMState:
        return LSTMState(jnp.zeros((batch, weights.output_size), dtype), jnp.zeros((batch, weights.hidden_size), dtype))

    def step(self, weights: LSTMWeights, carry: LSTMState, x: Array) -> tuple[LSTMState, Array]:
        return lstm_cell(weights, carry, x)


@dataclasses.dataclass(frozen=True)
class GRUCell:
    """PyTorch's GRU as a :class:`Cell` (see :func:`lstm_jax.init_gru`)."""

    hidden_size: int
    input_init: Initializer = lecun_normal
    recurrent_init: Initializer = orthogonal

    def __post_init__(self):
        check_positive_int("hidden_size", self.hidden_size)

    output_size = property(lambda self: self.hidden_size)

    def init(self, key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> GRUWeights:
        H = self.hidden_size
        k_ih, k_hh = jax.random.split(key)
        return GRUWeights(
            w_ih=per_gate(self.input_init, k_ih, input_size, H, 3, dtype),
            w_hh=per_gate(self.recurrent_init, k_hh, H, H, 3, dtype),
            b_ih=jnp.zeros((3 * H,), dtype),
            b_hh=jnp.zeros((3 * H,), dtype),
        )

    def initial_carry(self, weights: GRUWeights, batch: int, dtype: DType) -> Array:
        return jnp.zeros((batch, weights.hidden_size), dtype)

    def step(self, weights: GRUWeights, carry: Array, x: Array) -> tuple[Array, Array]:
        return gru_cell(weights, carry, x)


@dataclasses.dataclass(frozen=True)
class RNNCell:
    """PyTorch's Elman RNN as a :class:`Cell` (see :func:`lstm_jax.init_rnn`)."""

    hidden_size: int
    nonlinearity: Literal["tanh", "relu"] = "tanh"
    input_init: Initializer = lecun_normal
    recurrent_init: Initializer = orthogonal

    def __post_init__(self):
        check_positive_int("hidden_size", self.hidden_size)
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {self.nonlinearity!r}")

    output_size = property(lambda self: self.hidden_size)

    def init(self, key: PRNGKey, input_size: int, dtype: DType = jnp.float32) -> RNNWeights:
        H = self.hidden_size
        k_ih, k_hh = jax.random.split(key)
        return RNNWeights(
            w_ih=draw(self.input_init, k_ih, (input_size, H), dtype),
            w_hh=draw(self.recurrent_init, k_hh, (H, H), dtype),
            b_ih=jnp.zeros((H,), dtype),
            b_hh=jnp.zeros((H,), dtype),
            nonlinearity=self.nonlinearity,
        )

    def initial_carry(self, weights: RNNWeights, batch: int, dtype: DType) -> Array:
        return jnp.zeros((batch, weights.hidden_size), dtype)

    def step(self, weights: RNNWeights, carry: Array, x: Array) -> tuple[Array, Array]:
        return rnn_cell(weights, carry, x)
