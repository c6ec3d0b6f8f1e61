"""The recurrence driver: runs any cell over time, layers and directions.

The one seam where implementation choices live is :func:`scan_direction`: every cell, layer and direction goes
through it, so a faster path (custom BPTT, hoisted input projection, cuDNN) can be swapped in there and compared
against the plain ``jax.grad``-of-``lax.scan`` path that it is today.

Variable lengths follow ``torch.nn.utils.rnn.pack_padded_sequence``: step t of sequence b is valid when
t < lengths[b]. Invalid steps leave the carry unchanged and output zeros. Because of that, a forward scan ends
holding each sequence's state at its own last valid step, and a *reverse* scan (t = T-1 … 0) starts each sequence
at its own last valid step from the initial state — no sequence reversal or gather needed. Lengths outside
[0, T] behave as if clipped to that range: > T runs all T steps, ≤ 0 runs none (outputs zero, final state = initial
state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._regularizers import Regularizers, regularize
from ._typing import Array, PRNGKey

Step = Callable[[Any, Array], tuple[Any, Array]]


def scan_direction(
    step: Step, carry: Any, xs: Array, *, lengths: Array | None = None, reverse: bool = False
) -> tuple[Any, Array]:
    """Runs ``step`` over xs (T, B, I) in one direction: ``(final_carry, ys (T, B, O))``.

    Args:
      step: scan body ``(carry, x_t (B, I)) -> (carry, y_t (B, O))`` with weights already bound.
      carry: initial carry, a pytree of (B, ·) arrays.
      xs: (T, B, I) inputs, or a pytree of (T, …) arrays that ``step`` takes apart.
      lengths: optional (B,) int valid lengths; see the module docstring.
      reverse: scan from t = T-1 down to 0.
    """
    if lengths is None:
        return jax.lax.scan(step, carry, xs, reverse=reverse)

    def masked_step(carry, inputs):
        x, t = inputs
        new_carry, y = step(carry, x)
        valid = (t < lengths)[:, None]  # (B, 1)
        new_carry = jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)
        return new_carry, jnp.where(valid, y, jnp.zeros_like(y))

    steps = jnp.arange(jax.tree.leaves(xs)[0].shape[0], dtype=lengths.dtype)
    return jax.lax.scan(masked_step, carry, (xs, steps), reverse=reverse)


def _dropout(key: PRNGKey, rate: float, ys: Array) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, ys.shape)
    return jnp.where(keep, ys / (1.0 - rate), jnp.zeros_like(ys))


def run_stack(
    cell_step: Callable[[Any, Any, Array], tuple[Any, Array]],
    params: Sequence[Sequence[Any]],
    xs: Array,
    carries: Sequence[Any],
    *,
    lengths: Array | None = None,
    dropout: float = 0.0,
    key: PRNGKey | None = None,
    regularizers: Regularizers | None = None,
) -> tuple[Array, list[Any]]:
    """Runs a stacked, optionally bidirectional recurrence, PyTorch style.

    Args:
      cell_step: ``cell_step(weights, carry, x_t) -> (carry, y_t)``.
      params: ``params[layer][direction]`` weights.
      xs: (T, B, I) time-major inputs.
      carries: initial carries indexed ``layer * D + direction`` (PyTorch's h_0 order).
      lengths: optional (B,) valid lengths.
      dropout: rate applied to the outputs of every layer but the last (only with ``key``).
      key: PRNG key for dropout and the regularisers; without it both are off.
      regularizers: variational dropout, zoneout, weight dropout (see :mod:`lstm_jax._regularizers`).

    Returns:
      ``(ys, final_carries)``: ys (T, B, D·O) the last layer's outputs with directions concatenated
      [forward, backward]; final carries in the same order as ``carries``.
    """
    num_layers, num_directions = len(params), len(params[0])
    training = key is not None
    regularized = training and regularizers is not None and regularizers.active
    if training:
        dropout_keys, regularizer_keys = jax.random.split(key)
        dropout_keys = jax.random.split(dropout_keys, num_layers)
        regularizer_keys = jax.random.split(regularizer_keys, num_layers * num_directions)
    finals = []
    for layer, layer_weights in enumerate(params):
        outputs = []
        for direction, weights in enumerate(layer_weights):
            index = layer * num_directions + direction
            carry = carries[index]
            if regularized:
                step, inputs = regularize(regularizers, regularizer_keys[index], weights, cell_step, carry, xs)
            else:

                def step(carry, x, weights=weights):
                    return cell_step(weights, carry, x)

                inputs = xs
            carry, ys = scan_direction(step, carry, inputs, lengths=lengths, reverse=direction == 1)
            finals.append(carry)
            outputs.append(ys)
        xs = outputs[0] if num_directions == 1 else jnp.concatenate(outputs, axis=-1)
        if training and dropout > 0.0 and layer < num_layers - 1:
            xs = _dropout(dropout_keys[layer], dropout, xs)
    return xs, finals
