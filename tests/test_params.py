"""The parameter layout, pinned (field names, nesting, shapes, dtypes), and the default initialisation scheme checked
by properties that fail when the scheme changes: the forget-gate bias, orthogonal recurrent gate blocks, LeCun
variance of the input kernels; plus overriding initialisers, low-precision params and the errors for bad sizes.

The layout tests use ``jax.eval_shape`` (no compilation); the value tests share a few small sizes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax

I, H, P = 3, 4, 2  # distinct sizes per axis
KEY = jax.random.key(0)


def _field_names(cls):
    return tuple(field.name for field in dataclasses.fields(cls))


def test_weights_field_names_are_pinned():
    assert _field_names(lstm_jax.LSTMWeights) == ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "peephole", "layer_norm")
    assert _field_names(lstm_jax.GRUWeights) == ("w_ih", "w_hh", "b_ih", "b_hh")
    assert _field_names(lstm_jax.RNNWeights) == ("w_ih", "w_hh", "b_ih", "b_hh", "nonlinearity")
    assert _field_names(lstm_jax.LayerNormWeights) == ("gamma_ih", "gamma_hh", "gamma_c", "beta_c")
    assert lstm_jax.LSTM_GATES == ("i", "f", "g", "o")
    assert lstm_jax.GRU_GATES == ("r", "z", "n")


def _layout(params):
    """{"[layer][direction].field": (shape, dtype)} for every leaf."""
    return {
        jax.tree_util.keystr(path): (leaf.shape, leaf.dtype)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def _expected_layout(fields, num_layers, num_directions, dtype):
    """``fields(layer_input)`` gives {field: shape} of one direction of a layer reading ``layer_input`` features."""
    return {
        f"[{layer}][{direction}].{name}": (shape, dtype)
        for layer, layer_input in enumerate([I] + [None] * (num_layers - 1))
        for direction in range(num_directions)
        for name, shape in fields(layer_input).items()
    }


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, P])
def test_lstm_layout(num_layers, bidirectional, proj_size):
    D, O = 1 + bidirectional, proj_size or H  # O: the width of h

    def fields(layer_input):
        shapes = {"w_ih": (layer_input or D * O, 4 * H), "w_hh": (O, 4 * H), "b_ih": (4 * H,), "b_hh": (4 * H,)}
        return shapes | ({"w_hr": (H, proj_size)} if proj_size else {})

    params = jax.eval_shape(
        lambda key: lstm_jax.init_lstm(
            key, I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size
        ),
        KEY,
    )
    assert type(params) is tuple and all(type(layer) is tuple for layer in params)
    assert (len(params), len(params[0])) == (num_layers, D)
    assert all(type(weights) is lstm_jax.LSTMWeights for layer in params for weights in layer)
    assert _layout(params) == _expected_layout(fields, num_layers, D, jnp.float32)


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_layout(num_layers, bidirectional):
    D = 1 + bidirectional

    def fields(layer_input):
        return {"w_ih": (layer_input or D * H, 3 * H), "w_hh": (H, 3 * H), "b_ih": (3 * H,), "b_hh": (3 * H,)}

    params = jax.eval_shape(
        lambda key: lstm_jax.init_gru(key, I, H, num_layers=num_layers, bidirectional=bidirectional), KEY
    )
    assert (len(params), len(params[0])) == (num_layers, D)
    assert all(type(weights) is lstm_jax.GRUWeights for layer in params for weights in layer)
    assert _layout(params) == _expected_layout(fields, num_layers, D, jnp.float32)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_layout_and_static_nonlinearity(nonlinearity, bidirectional):
    D, num_layers = 1 + bidirectional, 2

    def fields(layer_input):
        return {"w_ih": (layer_input or D * H, H), "w_hh": (H, H), "b_ih": (H,), "b_hh": (H,)}

    def init(key):
        return lstm_jax.init_rnn(
            key, I, H, num_layers=num_layers, bidirectional=bidirectional, nonlinearity=nonlinearity
        )

    params = jax.eval_shape(init, KEY)
    assert (len(params), len(params[0])) == (num_layers, D)
    # The nonlinearity is pytree metadata, not a leaf: it survives tree.map and is static under jit.
    assert _layout(params) == _expected_layout(fields, num_layers, D, jnp.float32)
    mapped = jax.tree.map(lambda leaf: leaf, params)
    assert {weights.nonlinearity for layer in mapped for weights in layer} == {nonlinearity}


def _blocks(kernel_or_bias, num_gates):
    return np.split(np.asarray(kernel_or_bias, np.float32), num_gates, axis=-1)


@pytest.mark.parametrize("proj_size", [0, P])
def test_lstm_forget_gate_input_bias_is_one_and_every_other_bias_zero(proj_size):
    params = lstm_jax.init_lstm(KEY, I, H, num_layers=2, bidirectional=True, proj_size=proj_size)
    for weights in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, lstm_jax.LSTMWeights)):
        b_i, b_f, b_g, b_o = _blocks(weights.b_ih, 4)
        np.testing.assert_array_equal(b_f, 1.0)
        np.testing.assert_array_equal(np.concatenate([b_i, b_g, b_o]), 0.0)
        np.testing.assert_array_equal(weights.b_hh, 0.0)


def test_gru_and_rnn_biases_are_zero():
    for params in (
        lstm_jax.init_gru(KEY, I, H, num_layers=2, bidirectional=True),
        lstm_jax.init_rnn(KEY, I, H, num_layers=2, bidirectional=True),
    ):
        for layer in params:
            for weights in layer:
                np.testing.assert_array_equal(weights.b_ih, 0.0)
                np.testing.assert_array_equal(weights.b_hh, 0.0)


def _assert_orthonormal(block, atol):
    """Columns orthonormal (Q^T Q = I) for a tall or square block, rows orthonormal for a wide one."""
    rows, cols = block.shape
    gram = block.T @ block if rows >= cols else block @ block.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=atol)


@pytest.mark.parametrize(
    ("init", "num_gates"),
    [
        (lstm_jax.init_lstm, 4),
        (lambda *args, **kwargs: lstm_jax.init_lstm(*args, proj_size=P, **kwargs), 4),  # (P, H) blocks: wide
        (lstm_jax.init_gru, 3),
        (lstm_jax.init_rnn, 1),
    ],
    ids=["lstm", "lstm_proj", "gru", "rnn"],
)
def test_each_recurrent_gate_block_is_orthogonal_and_drawn_independently(init, num_gates):
    params = init(KEY, I, H, num_layers=2, bidirectional=True)
    kernels = [weights.w_hh for layer in params for weights in layer]
    for kernel in kernels:
        blocks = _blocks(kernel, num_gates)
        for block in blocks:
            _assert_orthonormal(block, atol=1e-5)
        for k in range(1, num_gates):
            assert not np.allclose(blocks[0], blocks[k])
    # Every layer and direction has its own draw.
    for k in range(1, len(kernels)):
        assert not np.allclose(kernels[0], kernels[k])


def _assert_lecun_normal(kernel, fan_in, variance_rtol):
    """Truncated normal (at two standard deviations of the untruncated law) with variance 1 / fan_in."""
    values = np.asarray(kernel, np.float64).ravel()
    std = np.sqrt(1.0 / fan_in)
    assert abs(values.mean()) < 0.03 * std
    np.testing.assert_allclose(values.var(), 1.0 / fan_in, rtol=variance_rtol)
    # jax.nn.initializers.variance_scaling: stddev / 0.8796... (the std of a unit normal truncated to [-2, 2]).
    assert np.abs(values).max() <= 2.0 * std / 0.87962566103423978 * (1 + 1e-6)


def test_input_and_projection_kernels_have_variance_one_over_fan_in():
    # Sizes large enough for the statistics: 131072 samples for layer 0's w_ih (relative std of the variance
    # estimate 0.4 %), 32768 for layer 1's, 8192 for w_hr (1.6 %); the tolerances are 5 of those stds.
    big_input, big_hidden, big_proj = 256, 128, 64
    params = lstm_jax.init_lstm(KEY, big_input, big_hidden, num_layers=2, proj_size=big_proj)
    _assert_lecun_normal(params[0][0].w_ih, fan_in=big_input, variance_rtol=0.02)
    for block in _blocks(params[0][0].w_ih, 4):  # each gate block has the scheme's statistics on its own
        _assert_lecun_normal(block, fan_in=big_input, variance_rtol=0.04)
    _assert_lecun_normal(params[1][0].w_ih, fan_in=big_proj, variance_rtol=0.04)
    _assert_lecun_normal(params[0][0].w_hr, fan_in=big_hidden, variance_rtol=0.08)
    rnn = lstm_jax.init_rnn(KEY, big_input, big_hidden)
    _assert_lecun_normal(rnn[0][0].w_ih, fan_in=big_input, variance_rtol=0.04)


def test_same_key_same_params_and_another_key_other_params():
    first = lstm_jax.init_gru(KEY, I, H, num_layers=2)
    again = lstm_jax.init_gru(KEY, I, H, num_layers=2)
    other = lstm_jax.init_gru(jax.random.key(1), I, H, num_layers=2)
    for a, b, c in zip(jax.tree.leaves(first), jax.tree.leaves(again), jax.tree.leaves(other), strict=True):
        np.testing.assert_array_equal(a, b)
        if np.any(a != 0):  # biases are zero whatever the key
            assert not np.allclose(a, c)


@pytest.mark.parametrize("forget_bias", [0.0, 2.5])
def test_forget_bias_is_overridable(forget_bias):
    (weights,), _ = lstm_jax.init_lstm(KEY, I, H, num_layers=2, forget_bias=forget_bias)
    b_i, b_f, b_g, b_o = _blocks(weights.b_ih, 4)
    np.testing.assert_array_equal(b_f, forget_bias)
    np.testing.assert_array_equal(np.concatenate([b_i, b_g, b_o]), 0.0)


def _recording_init(value, calls):
    def init(key, shape, dtype=jnp.float32):
        calls.append(tuple(shape))
        return jnp.full(shape, value, dtype)

    return init


def test_lstm_initialisers_are_overridable_and_called_per_gate_block():
    calls = {"input": [], "recurrent": [], "projection": []}
    params = lstm_jax.init_lstm(
        KEY,
        I,
        H,
        num_layers=2,
        proj_size=P,
        input_init=_recording_init(0.5, calls["input"]),
        recurrent_init=_recording_init(-0.25, calls["recurrent"]),
        projection_init=_recording_init(2.0, calls["projection"]),
    )
    assert calls == {
        "input": [(I, H)] * 4 + [(P, H)] * 4,
        "recurrent": [(P, H)] * 8,
        "projection": [(H, P)] * 2,
    }
    for layer in params:
        (weights,) = layer
        np.testing.assert_array_equal(weights.w_ih, 0.5)
        np.testing.assert_array_equal(weights.w_hh, -0.25)
        np.testing.assert_array_equal(weights.w_hr, 2.0)


@pytest.mark.parametrize("init", [lstm_jax.init_gru, lstm_jax.init_rnn], ids=["gru", "rnn"])
def test_gru_and_rnn_initialisers_are_overridable(init):
    params = init(
        KEY, I, H, bidirectional=True, input_init=jax.nn.initializers.ones, recurrent_init=jax.nn.initializers.zeros
    )
    for weights in params[0]:
        np.testing.assert_array_equal(weights.w_ih, 1.0)
        np.testing.assert_array_equal(weights.w_hh, 0.0)


@pytest.mark.parametrize(
    ("init", "num_gates"),
    [
        (lambda key, **kwargs: lstm_jax.init_lstm(key, I, H, proj_size=P, **kwargs), 4),
        (lambda key, **kwargs: lstm_jax.init_gru(key, I, H, **kwargs), 3),
        (lambda key, **kwargs: lstm_jax.init_rnn(key, I, H, **kwargs), 1),
    ],
    ids=["lstm_proj", "gru", "rnn"],
)
def test_bfloat16_params(init, num_gates):
    params = init(KEY, num_layers=2, bidirectional=True, dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    # The values are the float32 draw, rounded: still orthogonal to bfloat16 precision.
    for block in _blocks(params[1][1].w_hh, num_gates):
        _assert_orthonormal(block, atol=2e-2)


def test_bfloat16_lstm_keeps_the_forget_bias_exact():
    ((weights,),) = lstm_jax.init_lstm(KEY, I, H, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(_blocks(weights.b_ih, 4)[1], 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(input_size=0), r"input_size must be a positive int, got 0"),
        (dict(hidden_size=-1), r"hidden_size must be a positive int, got -1"),
        (dict(hidden_size=2.0), r"hidden_size must be a positive int, got 2\.0"),
        (dict(num_layers=0), r"num_layers must be a positive int, got 0"),
        (dict(num_layers=True), r"num_layers must be a positive int, got True"),
        (dict(proj_size=H), rf"proj_size must be an int in \[0, hidden_size={H}\), got {H}"),
        (dict(proj_size=-1), rf"proj_size must be an int in \[0, hidden_size={H}\), got -1"),
        (dict(proj_size=1.0), rf"proj_size must be an int in \[0, hidden_size={H}\), got 1\.0"),
    ],
)
def test_init_lstm_rejects_invalid_sizes(kwargs, match):
    arguments = dict(input_size=I, hidden_size=H) | kwargs
    input_size, hidden_size = arguments.pop("input_size"), arguments.pop("hidden_size")
    with pytest.raises(ValueError, match=match):
        lstm_jax.init_lstm(KEY, input_size, hidden_size, **arguments)


@pytest.mark.parametrize("init", [lstm_jax.init_gru, lstm_jax.init_rnn], ids=["gru", "rnn"])
def test_init_gru_and_rnn_reject_invalid_sizes(init):
    with pytest.raises(ValueError, match=r"input_size must be a positive int, got -3"):
        init(KEY, -3, H)
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        init(KEY, I, 0)
    with pytest.raises(ValueError, match=r"num_layers must be a positive int, got 1\.5"):
        init(KEY, I, H, num_layers=1.5)


def test_init_rnn_rejects_an_unknown_nonlinearity():
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \('tanh', 'relu'\), got 'sigmoid'"):
        lstm_jax.init_rnn(KEY, I, H, nonlinearity="sigmoid")
