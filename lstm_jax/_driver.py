"""The recurrence driver: runs any cell over time, layers and directions.

Implementation choices live in one place, :func:`run_direction`, which every cell, layer and direction goes
through: it picks the path named by :class:`Impl` where that path applies and the reference
``jax.grad``-of-``lax.scan`` path (:func:`scan_direction`) otherwise, so every path is compared against the same
reference.

Variable lengths follow ``torch.nn.utils.rnn.pack_padded_sequence``: step t of sequence b is valid when
t < lengths[b]. Invalid steps leave the carry unchanged and output zeros. Because of that, a forward scan ends
holding each sequence's state at its own last valid step, and a *reverse* scan (t = T-1 … 0) starts each sequence
at its own last valid step from the initial state — no sequence reversal or gather needed. Lengths outside
[0, T] behave as if clipped to that range: > T runs all T steps, ≤ 0 runs none (outputs zero, final state = initial
state).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import _bptt, _cudnn, _kernel
from ._cells import lstm_cell
from ._regularizers import Regularizers, regularize
from ._typing import Array, PRNGKey

Step = Callable[[Any, Array], tuple[Any, Array]]


class Impl(enum.Enum):
    """How one direction of one layer is run and differentiated.

    * ``SCAN`` — ``lax.scan`` of the cell's step, differentiated by ``jax.grad``: the reference path; runs every
      cell, variant and regulariser.
    * ``BPTT`` — the LSTM (plain or projected, float32/64 or bf16 matmuls) with a hand-written backward pass
      (:mod:`lstm_jax._bptt`) whose weight gradients are whole-sequence GEMMs after the reverse scan. Where it
      does not apply (GRU, RNN, custom cells, peepholes, layer norm, recurrent dropout, zoneout) the driver runs
      ``SCAN`` instead. The two directions of a bidirectional layer run as one scan, with one batched matmul
      per step for both.
    * ``REMAT`` — gradient checkpointing for very long sequences, for any cell: the scan is split into segments of
      about √T steps, and only the carries at segment boundaries are kept for the backward pass; each segment's
      activations are recomputed when its gradient is needed. Memory for BPTT grows like √T instead of T, for one
      extra forward pass (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
    * ``KERNEL`` — the plain float32 LSTM as a fused C++ kernel on XLA:CPU (:mod:`lstm_jax._kernel`): the time
      loop, matmuls and gate maths of a layer in one FFI call, forward and backward, both directions of a
      bidirectional layer at once; weight gradients as whole-sequence GEMMs, as ``BPTT``. Built with the system's
      C++ compiler on first use. Where it does not apply (not on the CPU backend, no compiler, float64 or bf16,
      projections, the cells ``BPTT`` does not run) the driver takes the ``BPTT`` path, and from there ``SCAN``.
      So on a GPU ``KERNEL`` runs ``BPTT``, which outran cuDNN there (H100, the README's GPU table).
    * ``CUDNN`` — the plain float32 LSTM through cuDNN's fused RNN (``jax.experimental.rnn``) on a GPU backend
      (:mod:`lstm_jax._cudnn`): one cuDNN call per layer forward and one backward, both directions of a
      bidirectional layer in the same call. Elsewhere (not on a GPU, float64 or bf16, projections, the cells
      ``BPTT`` does not run, a reverse direction outside a bidirectional layer) the driver takes the ``BPTT``
      path, and from there ``SCAN``. Under ``jax.vmap`` each cuDNN call runs once per mapped element, in a loop.
    """

    SCAN = "scan"
    BPTT = "bptt"
    REMAT = "remat"
    KERNEL = "kernel"
    CUDNN = "cudnn"


def run_direction(
    cell_step, weights: Any, carry: Any, xs: Any, *, lengths: Array | None, reverse: bool, impl: Impl
) -> tuple[Any, Array]:
    """The seam: runs one direction of one layer with the path ``impl`` names, where it applies."""
    if impl is Impl.KERNEL and cell_step is lstm_cell and _kernel.supports(weights, carry, xs):
        return _kernel.lstm_direction(weights, carry, xs, lengths=lengths, reverse=reverse)
    if impl is Impl.CUDNN and cell_step is lstm_cell and not reverse and _cudnn.supports(weights, carry, xs):
        return _cudnn.lstm_direction(weights, carry, xs, lengths=lengths)
    if (
        impl in (Impl.BPTT, Impl.KERNEL, Impl.CUDNN)
        and cell_step is lstm_cell
        and _bptt.supports(weights)
        and isinstance(xs, jax.Array)
    ):
        return _bptt.lstm_direction(weights, carry, xs, lengths=lengths, reverse=reverse)

    def step(carry, x):
        return cell_step(weights, carry, x)

    if impl is Impl.REMAT:
        return remat_direction(step, carry, xs, lengths=lengths, reverse=reverse)
    return scan_direction(step, carry, xs, lengths=lengths, reverse=reverse)


def fused_directions(cell_step, layer_weights: Sequence[Any], layer_carries: Sequence[Any], xs: Any, impl: Impl):
    """The function that runs a layer's two directions together, or None where they run one after the other.

    ``Impl.KERNEL``: both in one kernel call (``_kernel.lstm_bidirectional``); ``Impl.CUDNN``: both in one cuDNN
    call (``_cudnn.lstm_bidirectional``); ``Impl.BPTT``, or those where they do not apply: both in one scan
    (``_bptt.lstm_bidirectional``).
    """
    if impl not in (Impl.BPTT, Impl.KERNEL, Impl.CUDNN) or cell_step is not lstm_cell or len(layer_weights) != 2:
        return None
    if not isinstance(xs, jax.Array):
        return None
    if impl is Impl.KERNEL and _kernel.supports_bidirectional(*layer_weights, layer_carries, xs):
        return _kernel.lstm_bidirectional
    if impl is Impl.CUDNN and _cudnn.supports_bidirectional(*layer_weights, layer_carries, xs):
        return _cudnn.lstm_bidirectional
    if _bptt.supports_bidirectional(*layer_weights):
        return _bptt.lstm_bidirectional
    return None


def remat_direction(
    step: Step, carry: Any, xs: Any, *, lengths: Array | None = None, reverse: bool = False, segment: int | None = None
) -> tuple[Any, Array]:
    """:func:`scan_direction` with segment-wise gradient checkpointing (``Impl.REMAT``).

    The T steps run as an outer scan over ⌊T/K⌋ segments of K = ``segment`` (default ⌈√T⌉) steps, then the
    T mod K remaining steps (first instead of last when running in reverse). Each segment — an inner
    :func:`scan_direction` — is wrapped in ``jax.checkpoint``, so the backward pass keeps only the carries between
    segments and recomputes one segment at a time.
    """
    steps = jax.tree.leaves(xs)[0].shape[0]
    segment = segment or max(1, math.isqrt(steps - 1) + 1)
    num_full = steps // segment
    main = num_full * segment

    @jax.checkpoint
    def run_segment(carry, segment_inputs):
        x, start = segment_inputs
        # The lengths mask needs absolute time steps: shift them by the segment's start.
        shifted = None if lengths is None else lengths - start
        return scan_direction(step, carry, x, lengths=shifted, reverse=reverse)

    def outer(carry):
        head = jax.tree.map(lambda a: a[:main].reshape(num_full, segment, *a.shape[1:]), xs)
        starts = jnp.arange(num_full, dtype=jnp.int32) * segment
        carry, ys = jax.lax.scan(run_segment, carry, (head, starts), reverse=reverse)
        return carry, ys.reshape(main, *ys.shape[2:])

    def remainder(carry):
        return run_segment(carry, (jax.tree.map(lambda a: a[main:], xs), jnp.asarray(main, jnp.int32)))

    if main == steps:
        return outer(carry)
    if reverse:
        carry, ys_tail = remainder(carry)
        carry, ys_head = outer(carry) if num_full else (carry, None)
    else:
        carry, ys_head = outer(carry) if num_full else (carry, None)
        carry, ys_tail = remainder(carry)
    return carry, ys_tail if ys_head is None else jnp.concatenate([ys_head, ys_tail], axis=0)


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
    impl: Impl = Impl.SCAN,
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
      impl: the implementation path (:class:`Impl`).

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
        first = layer * num_directions
        layer_carries = carries[first : first + num_directions]
        both = None if regularized else fused_directions(cell_step, layer_weights, layer_carries, xs, impl)
        if both is not None:
            layer_finals, outputs = both(tuple(layer_weights), tuple(layer_carries), xs, lengths=lengths)
            finals.extend(layer_finals)
        else:
            outputs = []
            for direction, (weights, carry) in enumerate(zip(layer_weights, layer_carries, strict=True)):
                if regularized:
                    key = regularizer_keys[first + direction]
                    step, inputs = regularize(regularizers, key, weights, cell_step, carry, xs)
                    scan = remat_direction if impl is Impl.REMAT else scan_direction
                    carry, ys = scan(step, carry, inputs, lengths=lengths, reverse=direction == 1)
                else:
                    carry, ys = run_direction(
                        cell_step, weights, carry, xs, lengths=lengths, reverse=direction == 1, impl=impl
                    )
                finals.append(carry)
                outputs.append(ys)
        xs = outputs[0] if num_directions == 1 else jnp.concatenate(outputs, axis=-1)
        if training and dropout > 0.0 and layer < num_layers - 1:
            xs = _dropout(dropout_keys[layer], dropout, xs)
    return xs, finals
