"""``from_torch`` / ``to_torch``: the layout mapping, bit-exact round trips both ways, dtypes, the RNN nonlinearity,
and that lstm_jax itself never needs torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lstm_jax

INPUT_SIZE, HIDDEN_SIZE, PROJ_SIZE, NUM_LAYERS = 7, 5, 2, 2


def make_module(kind: str, *, seed: int) -> torch.nn.Module:
    """A two-layer bidirectional torch module of the given kind ("lstm", "lstmp", "gru", "rnn_tanh", "rnn_relu")."""
    torch.manual_seed(seed)
    kwargs = dict(num_layers=NUM_LAYERS, bidirectional=True)
    if kind in ("lstm", "lstmp"):
        return torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, proj_size=PROJ_SIZE if kind == "lstmp" else 0, **kwargs)
    if kind == "gru":
        return torch.nn.GRU(INPUT_SIZE, HIDDEN_SIZE, **kwargs)
    return torch.nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=kind.removeprefix("rnn_"), **kwargs)


def init_params(kind: str, seed: int):
    """lstm_jax params matching :func:`make_module`, every leaf random (init's zero biases would hide a mix-up)."""
    key = jax.random.key(seed)
    kwargs = dict(num_layers=NUM_LAYERS, bidirectional=True)
    if kind in ("lstm", "lstmp"):
        proj_size = PROJ_SIZE if kind == "lstmp" else 0
        params = lstm_jax.init_lstm(key, INPUT_SIZE, HIDDEN_SIZE, proj_size=proj_size, **kwargs)
    elif kind == "gru":
        params = lstm_jax.init_gru(key, INPUT_SIZE, HIDDEN_SIZE, **kwargs)
    else:
        params = lstm_jax.init_rnn(key, INPUT_SIZE, HIDDEN_SIZE, nonlinearity=kind.removeprefix("rnn_"), **kwargs)
    # numpy draws: a jax.random draw per leaf shape would compile once per shape.
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype), params)


def suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


KINDS = ["lstmp", "gru", "rnn_relu"]


@pytest.mark.parametrize("kind", ["lstm", "lstmp", "gru", "rnn_tanh"])
def test_layout_mapping(kind):
    """params[k][d] holds weight_*_l{k}[_reverse]: kernels transposed to input-major, biases as they are."""
    module = make_module(kind, seed=0)
    params = lstm_jax.from_torch(module)
    assert len(params) == NUM_LAYERS
    assert all(len(layer) == 2 for layer in params)
    fields = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
    if kind == "lstmp":
        fields["weight_hr"] = "w_hr"
    for layer in range(NUM_LAYERS):
        for direction in range(2):
            weights = params[layer][direction]
            for torch_name, field in fields.items():
                expected = getattr(module, torch_name + suffix(layer, direction)).detach().numpy()
                actual = np.asarray(getattr(weights, field))
                actual = actual.T if torch_name.startswith("weight") else actual
                np.testing.assert_array_equal(
                    actual, expected, err_msg=f"{field} vs {torch_name}{suffix(layer, direction)}"
                )
            if kind == "lstm":
                assert weights.w_hr is None
    # Spelled out once for the projected LSTM: (I, 4H) / (P, 4H) kernels, the second layer reading D·P features.
    if kind == "lstmp":
        assert params[0][1].w_ih.shape == (INPUT_SIZE, 4 * HIDDEN_SIZE)
        assert params[1][1].w_ih.shape == (2 * PROJ_SIZE, 4 * HIDDEN_SIZE)
        assert params[1][1].w_hh.shape == (PROJ_SIZE, 4 * HIDDEN_SIZE)
        assert params[1][1].w_hr.shape == (HIDDEN_SIZE, PROJ_SIZE)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_round_trip_is_bit_exact(kind):
    """torch -> params -> a fresh torch module: every state_dict tensor identical, bit for bit."""
    source = make_module(kind, seed=0)
    target = make_module(kind, seed=1)
    assert not torch.equal(source.weight_ih_l1_reverse, target.weight_ih_l1_reverse)  # the test is not vacuous

    assert lstm_jax.to_torch(lstm_jax.from_torch(source), target) is target

    expected, actual = source.state_dict(), target.state_dict()
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize("kind", KINDS)
def test_params_round_trip_is_bit_exact(kind):
    """params -> torch -> params: same pytree structure (nonlinearity and a missing w_hr included), every leaf
    identical with its dtype."""
    params = init_params(kind, seed=0)
    back = lstm_jax.from_torch(lstm_jax.to_torch(params, make_module(kind, seed=0)))
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for (path, leaf), leaf_back in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(back), strict=True):
        assert leaf_back.dtype == leaf.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(leaf_back, leaf, err_msg=jax.tree_util.keystr(path))


def test_float64_module_keeps_float64_under_x64():
    """A float64 torch module gives float64 params when JAX has x64 enabled, and writes back exactly."""
    source = make_module("lstmp", seed=0).double()
    with jax.enable_x64(True):
        params = lstm_jax.from_torch(source)
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float64)}
        target = lstm_jax.to_torch(params, make_module("lstmp", seed=1).double())
    for name, tensor in source.state_dict().items():
        assert target.state_dict()[name].dtype == torch.float64, name
        assert torch.equal(target.state_dict()[name], tensor), name


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_nonlinearity_is_carried(nonlinearity):
    params = lstm_jax.from_torch(make_module(f"rnn_{nonlinearity}", seed=0))
    assert {weights.nonlinearity for layer in params for weights in layer} == {nonlinearity}
    module = lstm_jax.to_torch(params, make_module(f"rnn_{nonlinearity}", seed=1))
    assert module.nonlinearity == nonlinearity


def test_imports_and_runs_without_torch():
    """torch is an optional dependency: with it made unimportable, lstm_jax imports and runs."""
    script = textwrap.dedent(
        """
        import sys

        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        import jax
        import lstm_jax

        jax.config.update("jax_numpy_rank_promotion", "raise")

        params = lstm_jax.init_lstm(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True)
        ys, (h_n, c_n) = lstm_jax.lstm(params, jax.random.normal(jax.random.key(1), (5, 2, 3)))
        assert ys.shape == (5, 2, 8) and h_n.shape == c_n.shape == (4, 2, 4), (ys.shape, h_n.shape, c_n.shape)
        assert sys.modules["torch"] is None
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
