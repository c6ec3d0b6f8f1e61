"""Parameter pytrees for LSTM, GRU and Elman RNN, and their initialisers.

Layout (pinned by ``tests/test_params.py``; other code and users rely on it):

* A model's params are ``tuple[tuple[Weights, ...], ...]`` indexed ``params[layer][direction]``, direction 0 the
  forward and 1 the backward pass. ``len(params)`` is L, ``len(params[0])`` is D. This is PyTorch's order: its
  ``weight_ih_l{k}`` / ``weight_ih_l{k}_reverse`` become ``params[k][0]`` / ``params[k][1]``.
* Kernels are stored input-major, ``x @ w_ih`` (JAX's convention), so ``w_ih`` is PyTorch's ``weight_ih`` transposed.
  The G gate blocks sit side by side on the last axis in PyTorch's gate order (:data:`LSTM_GATES`,
  :data:`GRU_GATES`), so a single matmul computes every gate's pre-activation.
* Both biases are kept, as in PyTorch, so that ``from_torch``/``to_torch`` round-trip exactly and GRU's ``b_hn``
  can sit inside ``r ⊙ (W_hn h + b_hn)``.

Default initialisation (each part overridable through the ``init_*`` keyword arguments):

* input kernels ``w_ih``: LeCun normal, i.e. truncated normal with variance 1/fan_in, fan_in = the layer's input
  width, drawn per gate block (``jax.nn.initializers.lecun_normal``);
* recurrent kernels ``w_hh``: orthogonal, one orthogonal (H_in, H) block per gate (``jax.nn.initializers.orthogonal``),
  so each gate's recurrence starts norm-preserving (Saxe et al. 2014);
* LSTM projection ``w_hr``: LeCun normal with fan_in = H;
* biases zero, except the LSTM forget gate's ``b_ih`` slice, which is ``forget_bias`` = 1.0 so that the cell starts
  out remembering (Gers et al. 2000; Jozefowicz, Zaremba & Sutskever 2015).

PyTorch's own scheme (every weight and bias uniform in ±1/√H) differs; import a torch module with
:func:`lstm_jax.from_torch` to get its exact values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp

from ._typing import Array, DType, PRNGKey

LSTM_GATES = ("i", "f", "g", "o")
"""LSTM gate order along the kernels' last axis: input, forget, cell candidate, output (PyTorch, cuDNN, Flax)."""
GRU_GATES = ("r", "z", "n")
"""GRU gate order along the kernels' last axis: reset, update, new (PyTorch, cuDNN)."""
NONLINEARITIES = ("tanh", "relu")

Initializer: TypeAlias = Callable[[PRNGKey, tuple[int, ...], DType], Array]

# The default initialisers, as module-level values so the defaults of every init_* are one object each.
lecun_normal: Initializer = jax.nn.initializers.lecun_normal()
orthogonal: Initializer = jax.nn.initializers.orthogonal()


def peephole_normal(key: PRNGKey, shape: tuple[int, ...], dtype: DType = jnp.float32) -> Array:
    """Normal with standard deviation 1/√H for (3, H) peephole weights."""
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(shape[-1], dtype))


def init_layer_norm(hidden_size: int, dtype: DType) -> LayerNormWeights:
    return LayerNormWeights(
        gamma_ih=jnp.ones((4 * hidden_size,), dtype),
        gamma_hh=jnp.ones((4 * hidden_size,), dtype),
        gamma_c=jnp.ones((hidden_size,), dtype),
        beta_c=jnp.zeros((hidden_size,), dtype),
    )


def _register(cls, meta_fields=()):
    data_fields = [f.name for f in dataclasses.fields(cls) if f.name not in meta_fields]
    return jax.tree_util.register_dataclass(cls, data_fields=data_fields, meta_fields=list(meta_fields))


@dataclasses.dataclass(frozen=True)
class LayerNormWeights:
    """Gains and bias of a layer-normalised LSTM (Ba, Kiros & Hinton 2016, eqs. 20-22).

    Attributes:
      gamma_ih: (4H,) gain of LN(x W_ih).
      gamma_hh: (4H,) gain of LN(h W_hh).
      gamma_c: (H,) gain of LN(c).
      beta_c: (H,) bias of LN(c). (The biases of the two gate normalisations would duplicate ``b_ih``/``b_hh``.)
    """

    gamma_ih: Array
    gamma_hh: Array
    gamma_c: Array
    beta_c: Array


@dataclasses.dataclass(frozen=True)
class LSTMWeights:
    """One direction of one LSTM layer.

    Attributes:
      w_ih: (I, 4H) input kernel, gate blocks i, f, g, o.
      w_hh: (P, 4H) recurrent kernel (P = H without projection).
      b_ih: (4H,) input bias.
      b_hh: (4H,) recurrent bias.
      w_hr: (H, P) projection kernel of LSTMP (Sak et al. 2014), or None.
      peephole: (3, H) diagonal peephole weights p_i, p_f, p_o (Gers & Schmidhuber 2000), or None.
      layer_norm: :class:`LayerNormWeights` of a layer-normalised LSTM (Ba et al. 2016), or None.
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array
    b_hh: Array
    w_hr: Array | None = None
    peephole: Array | None = None
    layer_norm: LayerNormWeights | None = None

    @property
    def hidden_size(self) -> int:
        return self.w_ih.shape[-1] // 4

    @property
    def output_size(self) -> int:
        """Width of h: P with a projection, else H."""
        return self.hidden_size if self.w_hr is None else self.w_hr.shape[-1]


def is_plain_float32_lstm(weights, carry, xs) -> bool:
    """Whether a direction is what the fused paths run (the CPU kernel, cuDNN): an LSTM without projection,
    peepholes or layer norm, with float32 weights, state and (array) inputs."""
    return (
        isinstance(weights, LSTMWeights)
        and weights.peephole is None
        and weights.layer_norm is None
        and weights.w_hr is None
        and isinstance(xs, jax.Array)
        and all(a.dtype == jnp.float32 for a in (*jax.tree.leaves(weights), *jax.tree.leaves(carry), xs))
    )


def same_shapes(a, b) -> bool:
    """Whether two weight pytrees have leaves of the same shapes (a layer's two directions, run in one call)."""
    return all(x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@dataclasses.dataclass(frozen=True)
class GRUWeights:
    """One direction of one GRU layer.

    Attributes:
      w_ih: (I, 3H) input kernel, gate blocks r, z, n.
      w_hh: (H, 3H) recurrent kernel.
      b_ih: (3H,) input bias.
      b_hh: (3H,) recurrent bias (its n block is PyTorch's ``b_hn``, applied inside ``r ⊙ (·)``).
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array
    b_hh: Array

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[0]

    output_size = hidden_size


@dataclasses.dataclass(frozen=True)
class RNNWeights:
    """One direction of one Elman RNN layer.

    Attributes:
      w_ih: (I, H) input kernel.
      w_hh: (H, H) recurrent kernel.
      b_ih: (H,) input bias.
      b_hh: (H,) recurrent bias.
      nonlinearity: ``"tanh"`` or ``"relu"``; static (pytree metadata), so it survives ``jit`` and ``tree.map``.
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array
    b_hh: Array
    nonlinearity: Literal["tanh", "relu"] = "tanh"

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[0]

    output_size = hidden_size


_register(LayerNormWeights)
_register(LSTMWeights)
_register(GRUWeights)
_register(RNNWeights, meta_fields=("nonlinearity",))

Weights: TypeAlias = LSTMWeights | GRUWeights | RNNWeights
LSTMParams: TypeAlias = tuple[tuple[LSTMWeights, ...], ...]
GRUParams: TypeAlias = tuple[tuple[GRUWeights, ...], ...]
RNNParams: TypeAlias = tuple[tuple[RNNWeights, ...], ...]


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def per_gate(init: Initializer, key: PRNGKey, rows: int, hidden: int, gates: int, dtype: DType) -> Array:
    """(rows, gates·hidden) kernel whose gate blocks are drawn independently, so each block gets the scheme's
    statistics (an orthogonal (rows, 4H) matrix would not have orthogonal (rows, H) blocks)."""
    keys = jax.random.split(key, gates)
    return jnp.concatenate([draw(init, k, (rows, hidden), dtype) for k in keys], axis=-1)


def draw(init: Initializer, key: PRNGKey, shape: tuple[int, ...], dtype: DType) -> Array:
    """Draws in at least float32 and casts: the orthogonal initialiser's QR has no bfloat16/float16 kernel, and a
    low-precision draw would round the distribution before the cast anyway."""
    return init(key, shape, jnp.promote_types(dtype, jnp.float32)).astype(dtype)


def init_stack(init_direction, key, input_size, output_size, num_layers, bidirectional):
    """Builds ``params[layer][direction]`` from ``init_direction(key, layer_input_size)``.

    Layer l > 0 reads the D·output_size concatenated outputs of layer l-1. Keys are split once into L·D, in
    PyTorch's ``layer * D + direction`` order, so a given key gives the same params whichever entry point built them.
    """
    check_positive_int("input_size", input_size)
    check_positive_int("num_layers", num_layers)
    num_directions = 2 if bidirectional else 1
    keys = jax.random.split(key, num_layers * num_directions)
    params = []
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else num_directions * output_size
        params.append(
            tuple(init_direction(keys[layer * num_directions + d], layer_input) for d in range(num_directions))
        )
    return tuple(params)
