"""A deliberately naive reference LSTM, GRU and Elman RNN: the oracle that ``test_reference.py`` holds the library to.

Nothing here shares the library's tricks, so that a bug in one is not silently repeated in the other:

* every gate has its own matmuls, on the blocks (W_ii, W_if, …) sliced out of the fused kernels by gate order;
* time is a Python loop, one step per valid time step;
* each sequence of the batch runs on its own over exactly its valid prefix ``xs[:length, b]``; padded outputs are
  written as zeros and the final state is simply the state after the last step run;
* the backward direction reverses each sequence's valid prefix, runs forward over that, and reverses the outputs
  back (the library instead scans t = T-1 … 0 and masks invalid steps).

Lengths are clipped to [0, T], which is what the library documents for traced out-of-range lengths (see
``lstm_jax._driver``), so the reference also specifies that behaviour. Dropout is not modelled.

Everything is ``jax.numpy`` run eagerly, so ``jax.grad`` differentiates through it, except that each cell step is
one jitted function: eager differentiation costs ~0.5 ms per primitive (the value and gradient of a bidirectional
two-layer stack, T = 17, B = 3, once compiled: 5.5 s with eager steps, 0.6 s with jitted ones). The step's maths is
the same either way. It is still slow, so keep sizes tiny.

:data:`MODELS` names each model family with its initialiser, library function and reference, for the tests to
parametrize over.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax
from lstm_jax import LSTMState, LSTMWeights


def _blocks(kernel_or_bias, num_gates):
    """Splits a fused (…, G·H) kernel or bias into its G per-gate (…, H) blocks, in the library's gate order."""
    hidden = kernel_or_bias.shape[-1] // num_gates
    return [kernel_or_bias[..., k * hidden : (k + 1) * hidden] for k in range(num_gates)]


@jax.jit
def _lstm_step(weights, state, x):
    if getattr(weights, "peephole", None) is not None or getattr(weights, "layer_norm", None) is not None:
        raise NotImplementedError("the reference models the plain and projected LSTM only, not its variants")
    W_ii, W_if, W_ig, W_io = _blocks(weights.w_ih, 4)
    W_hi, W_hf, W_hg, W_ho = _blocks(weights.w_hh, 4)
    b_ii, b_if, b_ig, b_io = _blocks(weights.b_ih, 4)
    b_hi, b_hf, b_hg, b_ho = _blocks(weights.b_hh, 4)
    h, c = state
    i = jax.nn.sigmoid(x @ W_ii + b_ii + h @ W_hi + b_hi)
    f = jax.nn.sigmoid(x @ W_if + b_if + h @ W_hf + b_hf)
    g = jnp.tanh(x @ W_ig + b_ig + h @ W_hg + b_hg)
    o = jax.nn.sigmoid(x @ W_io + b_io + h @ W_ho + b_ho)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    if weights.w_hr is not None:
        h = h @ weights.w_hr
    return (h, c), h


@jax.jit
def _gru_step(weights, h, x):
    W_ir, W_iz, W_in = _blocks(weights.w_ih, 3)
    W_hr, W_hz, W_hn = _blocks(weights.w_hh, 3)
    b_ir, b_iz, b_in = _blocks(weights.b_ih, 3)
    b_hr, b_hz, b_hn = _blocks(weights.b_hh, 3)
    r = jax.nn.sigmoid(x @ W_ir + b_ir + h @ W_hr + b_hr)
    z = jax.nn.sigmoid(x @ W_iz + b_iz + h @ W_hz + b_hz)
    n = jnp.tanh(x @ W_in + b_in + r * (h @ W_hn + b_hn))
    h = (1 - z) * n + z * h
    return h, h


@jax.jit
def _rnn_step(weights, h, x):
    act = {"tanh": jnp.tanh, "relu": jax.nn.relu}[weights.nonlinearity]
    h = act(x @ weights.w_ih + weights.b_ih + h @ weights.w_hh + weights.b_hh)
    return h, h


def _clipped_lengths(seq_lengths, steps, batch):
    if seq_lengths is None:
        return [steps] * batch
    return [min(max(int(n), 0), steps) for n in np.asarray(seq_lengths)]


def _run_sequence(step, carry, rows, reverse):
    """One sequence's valid rows [(I,)] through one layer and direction: (final carry, [(O,)] outputs)."""
    if reverse:
        rows = rows[::-1]
    outputs = []
    for x in rows:
        carry, y = step(carry, x)
        outputs.append(y)
    if reverse:
        outputs = outputs[::-1]
    return carry, outputs


def _run(step_fn, params, xs, carries, seq_lengths, batch_first):
    """Layers, directions and sequences one at a time.

    ``carries[layer * D + direction]`` is a pytree of (B, ·) initial states. Returns (ys (T, B, D·O), finals) with
    finals in the same order as carries.
    """
    xs = jnp.asarray(xs)
    if batch_first:
        xs = jnp.swapaxes(xs, 0, 1)
    steps, batch, _ = xs.shape
    lengths = _clipped_lengths(seq_lengths, steps, batch)
    num_directions = len(params[0])
    # sequences[b][t] is one (I,) row. Python lists, split with unstack rather than indexed one row at a time:
    # the VJP of each distinct static index would be a distinct pad to compile.
    sequences = [jnp.unstack(sequence) for sequence in jnp.unstack(xs, axis=1)]
    finals = []
    for layer, layer_weights in enumerate(params):
        direction_outputs = []
        for direction, weights in enumerate(layer_weights):
            step = functools.partial(step_fn, weights)
            initial = _unstack_tree(carries[layer * num_directions + direction])
            # w_hh has one row per component of h: P for a projected LSTM, H otherwise.
            padding = jnp.zeros((weights.w_hh.shape[0],), jnp.result_type(xs.dtype, weights.w_hh.dtype))
            outputs, sequence_finals = [], []
            for b, rows in enumerate(sequences):
                carry, valid_outputs = _run_sequence(step, initial[b], rows[: lengths[b]], reverse=direction == 1)
                outputs.append(valid_outputs + [padding] * (steps - lengths[b]))
                sequence_finals.append(carry)
            direction_outputs.append(outputs)
            finals.append(jax.tree.map(lambda *per_sequence: jnp.stack(per_sequence), *sequence_finals))
        sequences = [
            [jnp.concatenate([outputs[b][t] for outputs in direction_outputs]) for t in range(steps)]
            for b in range(batch)
        ]
    ys = jnp.stack([jnp.stack(rows) for rows in sequences], axis=1)
    if batch_first:
        ys = jnp.swapaxes(ys, 0, 1)
    return ys, finals


def _unstack_tree(tree):
    """A pytree of (B, ·) arrays as a list of B pytrees of (·) arrays."""
    leaves, treedef = jax.tree.flatten(tree)
    return [jax.tree.unflatten(treedef, parts) for parts in zip(*map(jnp.unstack, leaves), strict=True)]


def _batch_size(xs, batch_first):
    return jnp.shape(xs)[0 if batch_first else 1]


def reference_lstm(params, xs, initial_state=None, *, seq_lengths=None, batch_first=False):
    """Naive :func:`lstm_jax.lstm`: same arguments (no dropout), returns ``(ys, LSTMState(h_n, c_n))``."""
    num_states, batch = len(params) * len(params[0]), _batch_size(xs, batch_first)
    if initial_state is None:
        weights = params[0][0]
        initial_state = (
            jnp.zeros((num_states, batch, weights.w_hh.shape[0]), weights.w_hh.dtype),
            jnp.zeros((num_states, batch, weights.w_ih.shape[1] // 4), weights.w_hh.dtype),
        )
    h0, c0 = initial_state
    carries = list(zip(jnp.unstack(h0), jnp.unstack(c0), strict=True))
    ys, finals = _run(_lstm_step, params, xs, carries, seq_lengths, batch_first)
    return ys, LSTMState(jnp.stack([h for h, _ in finals]), jnp.stack([c for _, c in finals]))


def _reference_single_state(step_fn, params, xs, h0, seq_lengths, batch_first):
    num_states, batch = len(params) * len(params[0]), _batch_size(xs, batch_first)
    if h0 is None:
        weights = params[0][0]
        h0 = jnp.zeros((num_states, batch, weights.w_hh.shape[0]), weights.w_hh.dtype)
    ys, finals = _run(step_fn, params, xs, jnp.unstack(h0), seq_lengths, batch_first)
    return ys, jnp.stack(finals)


def reference_gru(params, xs, h0=None, *, seq_lengths=None, batch_first=False):
    """Naive :func:`lstm_jax.gru`: same arguments (no dropout), returns ``(ys, h_n)``."""
    return _reference_single_state(_gru_step, params, xs, h0, seq_lengths, batch_first)


def reference_rnn(params, xs, h0=None, *, seq_lengths=None, batch_first=False):
    """Naive :func:`lstm_jax.rnn`: same arguments (no dropout), returns ``(ys, h_n)``."""
    return _reference_single_state(_rnn_step, params, xs, h0, seq_lengths, batch_first)


@dataclasses.dataclass(frozen=True)
class Model:
    """A model family: ``init(key, input_size, hidden_size, **kwargs)``, the library function and its reference."""

    init: Callable
    apply: Callable
    reference: Callable


def _init_projected_lstm(key, input_size, hidden_size, **kwargs):
    """An LSTM projected to P = H // 2 (H = 2 gives the edge P = 1)."""
    return lstm_jax.init_lstm(key, input_size, hidden_size, proj_size=hidden_size // 2, **kwargs)


MODELS = {
    "lstm": Model(lstm_jax.init_lstm, lstm_jax.lstm, reference_lstm),
    "lstm_proj": Model(_init_projected_lstm, lstm_jax.lstm, reference_lstm),
    "gru": Model(lstm_jax.init_gru, lstm_jax.gru, reference_gru),
    "rnn_tanh": Model(functools.partial(lstm_jax.init_rnn, nonlinearity="tanh"), lstm_jax.rnn, reference_rnn),
    "rnn_relu": Model(functools.partial(lstm_jax.init_rnn, nonlinearity="relu"), lstm_jax.rnn, reference_rnn),
}


# Random test inputs, shared by the tests that compare against this reference. Every value is drawn at random:
# symmetric inputs (ones, zero biases) would hide swapped gates, transposed kernels and a misplaced b_hn. They are
# drawn with NumPy, and parameter shapes come from jax.eval_shape of the initialiser: jax.random and the
# initialisers would compile anew for every shape, which costs more than the comparisons themselves on 2 cores.


def random_normal(rng, shape, dtype=jnp.float32, scale=1.0):
    """scale · N(0, 1) of the given shape and dtype, drawn from the NumPy Generator ``rng``."""
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def random_like(rng, tree, scale=0.5):
    """``tree`` (of arrays or ``jax.ShapeDtypeStruct``) with every leaf replaced by scale · N(0, 1)."""
    return jax.tree.map(lambda leaf: random_normal(rng, leaf.shape, leaf.dtype, scale), tree)


def random_params(rng, init, *args, **kwargs):
    """Params laid out as ``init(key, *args, **kwargs)`` makes them, every weight and bias random."""
    return random_like(rng, jax.eval_shape(lambda key: init(key, *args, **kwargs), jax.random.key(0)))


def random_initial_state(rng, params, batch):
    """A random initial state for ``params``: ``(h_0, c_0)`` for an LSTM, ``h_0`` otherwise, each (L·D, B, ·)."""
    weights = params[0][0]
    num_states, dtype = len(params) * len(params[0]), weights.w_hh.dtype
    h0 = random_normal(rng, (num_states, batch, weights.w_hh.shape[0]), dtype)
    if not isinstance(weights, LSTMWeights):
        return h0
    return h0, random_normal(rng, (num_states, batch, weights.w_ih.shape[1] // 4), dtype)
