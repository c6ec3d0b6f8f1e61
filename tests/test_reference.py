"""The library against the naive reference in ``reference.py``: outputs, final states, and gradients w.r.t. every
parameter leaf, the inputs and the initial state, for LSTM (with and without projection), GRU and Elman RNN (tanh
and relu); plus ``check_grads`` in float64 against finite differences, since the gradients are the contract of
backprop through time (``jax.grad`` of the scan, or the plain LSTM's hand-written backward pass).

Each case is one jitted ``value_and_grad`` of the library (one compilation) against the reference differentiated
eagerly. Compilations are what cost time on the CI's 2 cores, so the cases are few and chosen to include the edges
T ∈ {1, 4, 17} and B ∈ {1, 3}.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import MODELS, random_initial_state, random_like, random_normal, random_params

# Distinct sizes per axis (I = 5, H = 7, and P = H // 2 = 3 for "lstm_proj"), so that a transposed kernel or a
# swapped axis cannot type-check by accident.
INPUT_SIZE, HIDDEN_SIZE, NUM_LAYERS = 5, 7, 2

EDGE_SHAPES = list(itertools.product([1, 4, 17], [1, 3]))
# The full (T, B) product goes to the projected LSTM, the model with the most structure; the plain LSTM (by
# default a different implementation: a hand-written backward pass) gets three cases that still cover every T and
# B; the GRU and the RNNs share the corners.
BIDIRECTIONAL_CASES = [
    *[("lstm_proj", steps, batch) for steps, batch in EDGE_SHAPES],
    ("lstm", 1, 1),
    ("lstm", 4, 3),
    ("lstm", 17, 1),
    ("gru", 1, 1),
    ("gru", 17, 3),
    ("rnn_tanh", 1, 3),
    ("rnn_relu", 4, 3),
]


def _lengths(steps, batch):
    """Valid lengths with the edges 1 and T and a padded one in between (B = 1 gets the padded one)."""
    return jnp.asarray([steps // 2 + 1, steps, 1][:batch])


def _weighted_sum(outputs, weights):
    """A scalar in which every output has its own random weight, so that no output's gradient can hide."""
    return sum(jnp.sum(y * w) for y, w in zip(jax.tree.leaves(outputs), jax.tree.leaves(weights), strict=True))


def _loss(apply, batch_first):
    def loss(params, xs, state, seq_lengths, weights):
        outputs = apply(params, xs, state, seq_lengths=seq_lengths, batch_first=batch_first)
        return _weighted_sum(outputs, weights), outputs

    return loss


def _assert_trees_close(actual, expected, tolerance):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype, jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, e, **tolerance, err_msg=jax.tree_util.keystr(path))


def _compare(model_name, steps, batch, *, bidirectional, seq_lengths, with_state, batch_first, tol):
    model = MODELS[model_name]
    rng = np.random.default_rng(steps * 10 + batch)
    params = random_params(rng, model.init, INPUT_SIZE, HIDDEN_SIZE, num_layers=NUM_LAYERS, bidirectional=bidirectional)
    xs = random_normal(rng, (batch, steps, INPUT_SIZE) if batch_first else (steps, batch, INPUT_SIZE))
    state = random_initial_state(rng, params, batch) if with_state else None
    weights = random_like(rng, model.reference(params, xs, state, seq_lengths=seq_lengths, batch_first=batch_first))
    argnums = (0, 1, 2) if with_state else (0, 1)

    library = jax.jit(jax.value_and_grad(_loss(model.apply, batch_first), argnums=argnums, has_aux=True))
    (_, outputs), grads = library(params, xs, state, seq_lengths, weights)
    reference = jax.value_and_grad(_loss(model.reference, batch_first), argnums=argnums, has_aux=True)
    (_, expected_outputs), expected_grads = reference(params, xs, state, seq_lengths, weights)

    _assert_trees_close(outputs, expected_outputs, tol["float32"])
    # Every parameter leaf, the inputs and (with_state) the initial state.
    _assert_trees_close(grads, expected_grads, tol["float32_grad"])


@pytest.mark.parametrize(("model", "steps", "batch"), BIDIRECTIONAL_CASES)
def test_bidirectional_stack_with_lengths_and_initial_state_matches_reference(model, steps, batch, tol):
    lengths = _lengths(steps, batch)
    _compare(model, steps, batch, bidirectional=True, seq_lengths=lengths, with_state=True, batch_first=False, tol=tol)


@pytest.mark.parametrize("model", ["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_unidirectional_batch_first_without_lengths_or_state_matches_reference(model, tol):
    # The other code paths: an unmasked scan, the zero initial state, batch-major layout, one direction (so layer 1
    # reads P, not 2P, features).
    _compare(model, 4, 3, bidirectional=False, seq_lengths=None, with_state=False, batch_first=True, tol=tol)


# The plain LSTM's hand-written backward pass, and jax.grad of the scan through the GRU (the scan path is shared by
# every other model, which the float32 comparisons above cover).
@pytest.mark.parametrize("model_name", ["lstm", "gru"])
def test_float64_gradients_match_finite_differences_and_outputs_match_reference(model_name, tol):
    model = MODELS[model_name]
    steps, batch = 3, 2
    seq_lengths = jnp.asarray([steps, 2])
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = random_params(
            rng, model.init, INPUT_SIZE, HIDDEN_SIZE, num_layers=NUM_LAYERS, bidirectional=True, dtype=jnp.float64
        )
        xs = random_normal(rng, (steps, batch, INPUT_SIZE), jnp.float64)
        state = random_initial_state(rng, params, batch)
        expected = model.reference(params, xs, state, seq_lengths=seq_lengths)
        weights = random_like(rng, expected)

        @jax.jit
        def loss(params, xs, state):
            return _weighted_sum(model.apply(params, xs, state, seq_lengths=seq_lengths), weights)

        check_grads(loss, (params, xs, state), order=1, modes=["rev"], **tol["float64_finite_difference"])
        outputs = model.apply(params, xs, state, seq_lengths=seq_lengths)
        assert jax.tree.leaves(outputs)[0].dtype == jnp.float64
        _assert_trees_close(outputs, expected, tol["float64"])
