"""JAX invariants of the functional core: jit == eager, vmap == the batched call, batch-major == time-major, state
continuation, a train step that compiles once, edge sizes, traced out-of-range lengths, dropout, exact zero padding.

Library calls go through the module-level jitted functions below wherever the test allows, so that tests sharing
shapes share compilations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import MODELS, random_initial_state, random_like, random_normal, random_params, reference_lstm

import lstm_jax

# Distinct sizes per axis; "lstm_proj" projects to P = H // 2 = 2.
INPUT_SIZE, HIDDEN_SIZE = 3, 5
STEPS, BATCH = 5, 3
# One model of each family: the projected LSTM (two carries of different widths), GRU, and relu RNN (static
# nonlinearity metadata in the params).
FAMILIES = ["lstm_proj", "gru", "rnn_relu"]

_JITTED = {name: jax.jit(model.apply, static_argnames=("batch_first", "dropout")) for name, model in MODELS.items()}


def _setup(model_name, *, steps=STEPS, batch=BATCH, input_size=INPUT_SIZE, hidden_size=HIDDEN_SIZE, **init_kwargs):
    rng = np.random.default_rng(0)
    params = random_params(rng, MODELS[model_name].init, input_size, hidden_size, **init_kwargs)
    xs = random_normal(rng, (steps, batch, input_size))
    return params, xs, random_initial_state(rng, params, batch)


def _lengths(steps=STEPS):
    return jnp.asarray([2, steps, 1])


def _assert_trees_close(actual, expected, tolerance):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, **tolerance, err_msg=jax.tree_util.keystr(path))


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, e, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("model_name", FAMILIES)
def test_jit_matches_eager(model_name, tol):
    params, xs, state = _setup(model_name, num_layers=2, bidirectional=True)
    eager = MODELS[model_name].apply(params, xs, state, seq_lengths=_lengths())
    jitted = _JITTED[model_name](params, xs, state, seq_lengths=_lengths())
    _assert_trees_close(jitted, eager, tol["float32"])


@pytest.mark.parametrize("model_name", FAMILIES)
def test_padded_outputs_are_exactly_zero(model_name):
    # Same shapes as test_jit_matches_eager, so the compilation is shared.
    params, xs, state = _setup(model_name, num_layers=2, bidirectional=True)
    lengths = _lengths()
    ys, _ = _JITTED[model_name](params, xs, state, seq_lengths=lengths)
    padded = np.arange(STEPS)[:, None] >= np.asarray(lengths)[None, :]  # (T, B)
    assert padded.any() and not padded.all()
    np.testing.assert_array_equal(np.asarray(ys)[padded], 0.0)
    assert np.any(np.asarray(ys)[~padded] != 0.0)


def test_vmap_over_a_leading_axis_matches_the_batched_call(tol):
    # N independent batches of B sequences, vmapped, against one call on N·B sequences; the plain LSTM, whose
    # default path is the hand-written one (a custom_vjp) that vmap must batch.
    N = 2
    params, _, _ = _setup("lstm", num_layers=2, bidirectional=True)
    rng = np.random.default_rng(1)
    xs = random_normal(rng, (N, STEPS, BATCH, INPUT_SIZE))
    lengths = jnp.asarray([[2, STEPS, 1], [STEPS, 3, 4]])
    h0, c0 = random_initial_state(rng, params, N * BATCH)
    h0, c0 = (s.reshape(s.shape[0], N, BATCH, s.shape[-1]).swapaxes(0, 1) for s in (h0, c0))  # (N, L·D, B, ·)

    def run(xs, lengths, h0, c0):
        return lstm_jax.lstm(params, xs, (h0, c0), seq_lengths=lengths)

    ys, (h_n, c_n) = jax.vmap(run)(xs, lengths, h0, c0)

    def merge(a, axis):  # (N, ..., B at axis+1, ...) -> (..., N·B at axis, ...)
        a = jnp.moveaxis(a, 0, axis)
        return a.reshape(*a.shape[:axis], N * BATCH, *a.shape[axis + 2 :])

    expected_ys, (expected_h, expected_c) = _JITTED["lstm"](
        params, merge(xs, 1), (merge(h0, 1), merge(c0, 1)), seq_lengths=lengths.reshape(-1)
    )
    _assert_trees_close(
        (merge(ys, 1), merge(h_n, 1), merge(c_n, 1)), (expected_ys, expected_h, expected_c), tol["float32"]
    )


@pytest.mark.parametrize("model_name", ["lstm_proj", "gru"])
def test_batch_first_is_time_major_transposed(model_name):
    # The layout flag only transposes xs and ys (never the states), so the results are bit for bit the same.
    params, xs, state = _setup(model_name, num_layers=2, bidirectional=True)
    ys, final = _JITTED[model_name](params, xs, state, seq_lengths=_lengths())
    ys_bf, final_bf = _JITTED[model_name](
        params, jnp.swapaxes(xs, 0, 1), state, seq_lengths=_lengths(), batch_first=True
    )
    assert ys_bf.shape == (BATCH, STEPS, ys.shape[-1])
    _assert_trees_equal((jnp.swapaxes(ys_bf, 0, 1), final_bf), (ys, final))


@pytest.mark.parametrize("model_name", FAMILIES)
def test_state_continuation(model_name, tol):
    # Running xs[:k] and then xs[k:] from the returned state is running xs, for a unidirectional stack. (Not for a
    # bidirectional one: its backward direction would need the future.)
    params, xs, state = _setup(model_name, steps=4, num_layers=2)
    k = 2
    apply = _JITTED[model_name]
    ys_first, state_k = apply(params, xs[:k], state)
    ys_rest, final = apply(params, xs[k:], state_k)
    expected_ys, expected_final = apply(params, xs, state)
    _assert_trees_close((jnp.concatenate([ys_first, ys_rest]), final), (expected_ys, expected_final), tol["float32"])


@pytest.mark.parametrize("model_name", ["lstm", "rnn_tanh"])
def test_jitted_train_step_compiles_once(model_name):
    params, xs, _ = _setup(model_name, num_layers=2)
    apply = MODELS[model_name].apply
    targets = random_like(np.random.default_rng(2), apply(params, xs)[0])
    traces = 0

    @jax.jit
    def train_step(params, xs, targets):
        nonlocal traces
        traces += 1

        def loss_fn(params):
            ys, _ = apply(params, xs)
            return jnp.mean(jnp.square(ys - targets))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), loss

    losses = []
    for _ in range(3):
        params, loss = train_step(params, xs, targets)
        losses.append(float(loss))
    # A new batch of the same shape does not retrace either.
    train_step(params, xs + 1.0, targets)
    assert traces == 1
    assert train_step._cache_size() == 1
    assert losses[2] < losses[0]


@pytest.mark.parametrize("model_name", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_edge_sizes_match_reference(model_name, tol):
    # T = B = I = 1 and H = 1 (for "lstm_proj", H = 2 and P = 1, the smallest projection).
    hidden_size = 2 if model_name == "lstm_proj" else 1
    params, xs, state = _setup(
        model_name, steps=1, batch=1, input_size=1, hidden_size=hidden_size, num_layers=2, bidirectional=True
    )
    lengths = jnp.asarray([1])
    outputs = _JITTED[model_name](params, xs, state, seq_lengths=lengths)
    expected = MODELS[model_name].reference(params, xs, state, seq_lengths=lengths)
    _assert_trees_close(outputs, expected, tol["float32"])


def test_traced_out_of_range_lengths_are_clipped_to_zero_and_T(tol):
    # Documented in lstm_jax._driver: traced lengths > T run all T steps; lengths <= 0 run none, so their outputs
    # are zero and their final state is the initial state. (Concrete lengths are checked instead; see below.)
    params, xs, state = _setup("lstm", steps=3, batch=4, num_layers=2, bidirectional=True)
    out_of_range = jnp.asarray([3 + 2, 0, -1, 2])
    outputs = _JITTED["lstm"](params, xs, state, seq_lengths=out_of_range)
    ys, (h_n, c_n) = outputs

    np.testing.assert_array_equal(ys[:, 1:3], 0.0)
    np.testing.assert_array_equal(h_n[:, 1:3], state[0][:, 1:3])
    np.testing.assert_array_equal(c_n[:, 1:3], state[1][:, 1:3])
    in_range_ys, (in_range_h, in_range_c) = _JITTED["lstm"](params, xs, state, seq_lengths=jnp.asarray([3, 1, 1, 2]))
    _assert_trees_equal((ys[:, 0], h_n[:, 0], c_n[:, 0]), (in_range_ys[:, 0], in_range_h[:, 0], in_range_c[:, 0]))
    # The reference clips lengths to [0, T] by construction; the gradients (through the plain LSTM's hand-written
    # backward pass) follow the same clipping.
    _assert_trees_close(outputs, reference_lstm(params, xs, state, seq_lengths=out_of_range), tol["float32"])
    weights = random_like(np.random.default_rng(4), outputs)

    def loss(apply):
        def weighted_sum(params, xs, state, seq_lengths):
            outputs = apply(params, xs, state, seq_lengths=seq_lengths)
            return sum(jnp.sum(y * w) for y, w in zip(jax.tree.leaves(outputs), jax.tree.leaves(weights), strict=True))

        return weighted_sum

    grads = jax.jit(jax.grad(loss(lstm_jax.lstm), argnums=(0, 1, 2)))(params, xs, state, out_of_range)
    expected_grads = jax.grad(loss(reference_lstm), argnums=(0, 1, 2))(params, xs, state, out_of_range)
    _assert_trees_close(grads, expected_grads, tol["float32_grad"])
    # Sequences that run no step pass the state's cotangent straight through and never see their inputs.
    np.testing.assert_array_equal(grads[1][:, 1:3], 0.0)


@pytest.mark.parametrize("lengths", [[4, 1, 1, 2], [0, 1, 1, 2], [-1, 3, 3, 3]])
def test_concrete_out_of_range_lengths_are_rejected(lengths):
    params, xs, state = _setup("lstm", steps=3, batch=4, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"seq_lengths must lie in \[1, T=3\]"):
        lstm_jax.lstm(params, xs, state, seq_lengths=jnp.asarray(lengths))


# Dropout: between layers only (PyTorch's semantics), active only with a key.


def test_dropout_is_deterministic_per_key_and_spares_the_first_layer_and_the_last_layers_output():
    params, xs, state = _setup("lstm", num_layers=2)
    apply = _JITTED["lstm"]
    plain_ys, plain_final = apply(params, xs, state)
    ys, final = apply(params, xs, state, dropout=0.5, key=jax.random.key(0))
    again_ys, again_final = apply(params, xs, state, dropout=0.5, key=jax.random.key(0))
    other_ys, _ = apply(params, xs, state, dropout=0.5, key=jax.random.key(1))

    _assert_trees_equal((again_ys, again_final), (ys, final))
    assert not np.allclose(ys, plain_ys)
    assert not np.allclose(ys, other_ys)
    # Layer 0 runs before any dropout: its final state is untouched.
    _assert_trees_equal((final.h[0], final.c[0]), (plain_final.h[0], plain_final.c[0]))
    # The last layer's outputs are not dropped: none is zero, and the last one is the last layer's final h.
    assert np.all(np.asarray(ys) != 0.0)
    np.testing.assert_array_equal(ys[-1], final.h[-1])


def test_dropout_zeroes_inputs_of_the_next_layer_at_the_rate_and_rescales_the_rest(tol):
    # A relu RNN whose layer 0 outputs are positive and whose layer 1 is the identity (w_ih = I, no recurrence, no
    # bias) shows the dropped layer-0 outputs directly: each is either 0 or scaled by 1 / (1 - rate).
    H, rate = 16, 0.25
    rng = np.random.default_rng(3)
    xs = random_normal(rng, (8, 16, INPUT_SIZE))
    first = lstm_jax.RNNWeights(
        w_ih=random_normal(rng, (INPUT_SIZE, H), scale=0.1),
        w_hh=jnp.zeros((H, H)),
        b_ih=jnp.ones((H,)),
        b_hh=jnp.zeros((H,)),
        nonlinearity="relu",
    )
    identity = lstm_jax.RNNWeights(
        w_ih=jnp.eye(H), w_hh=jnp.zeros((H, H)), b_ih=jnp.zeros((H,)), b_hh=jnp.zeros((H,)), nonlinearity="relu"
    )
    layer_0, _ = lstm_jax.rnn(((first,),), xs)
    assert np.all(np.asarray(layer_0) > 0.0)
    ys, _ = lstm_jax.rnn(((first,), (identity,)), xs, dropout=rate, key=jax.random.key(0))

    dropped = np.asarray(ys) == 0.0
    assert abs(dropped.mean() - rate) < 0.05
    np.testing.assert_allclose(np.asarray(ys)[~dropped], np.asarray(layer_0)[~dropped] / (1 - rate), **tol["float32"])
    # Independent masks per step (PyTorch's dropout, not one mask per sequence).
    assert not np.all(dropped == dropped[:1])


def test_dropout_has_no_effect_with_one_layer():
    params, xs, state = _setup("lstm", num_layers=1)
    plain = lstm_jax.lstm(params, xs, state)
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        dropped = lstm_jax.lstm(params, xs, state, dropout=0.5, key=jax.random.key(0))
    _assert_trees_equal(dropped, plain)


def test_zero_dropout_with_a_key_is_no_dropout():
    params, xs, state = _setup("lstm", num_layers=2)
    apply = _JITTED["lstm"]
    _assert_trees_equal(apply(params, xs, state, dropout=0.0, key=jax.random.key(0)), apply(params, xs, state))
