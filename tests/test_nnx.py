"""The Flax NNX modules are thin: same numbers as the functional core, and they work with nnx.jit / nnx.grad /
nnx.Optimizer, train/eval dropout, and the Linen bridge."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import linen, nnx

import lstm_jax

T, B, I, H = 6, 3, 4, 5


@pytest.fixture
def xs():
    return jax.random.normal(jax.random.key(42), (T, B, I))


MODULES = [
    (lstm_jax.LSTM, lstm_jax.lstm, dict(proj_size=2)),
    (lstm_jax.GRU, lstm_jax.gru, {}),
    (lstm_jax.RNN, lstm_jax.rnn, dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("module_cls, fn, extra", MODULES, ids=["lstm", "gru", "rnn"])
def test_module_equals_functional(module_cls, fn, extra, xs, tol):
    model = module_cls(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0), **extra)
    lengths = jnp.array([6, 2, 4])
    got = model(xs, seq_lengths=lengths)
    want = fn(model.weights, xs, seq_lengths=lengths)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32"]), got, want)
    # The module's init is the functional init with the module's params key.
    want_params = {
        lstm_jax.LSTM: lstm_jax.init_lstm,
        lstm_jax.GRU: lstm_jax.init_gru,
        lstm_jax.RNN: lstm_jax.init_rnn,
    }[module_cls](nnx.Rngs(0).params(), I, H, num_layers=2, bidirectional=True, **extra)
    jax.tree.map(np.testing.assert_array_equal, model.weights, want_params)


def test_batch_first_module(xs, tol):
    model = lstm_jax.LSTM(I, H, batch_first=True, rngs=nnx.Rngs(0))
    ys, state = model(jnp.swapaxes(xs, 0, 1))
    want_ys, want_state = lstm_jax.lstm(model.weights, xs)
    np.testing.assert_allclose(ys, jnp.swapaxes(want_ys, 0, 1), **tol["float32"])
    np.testing.assert_allclose(state.h, want_state.h, **tol["float32"])


def test_nnx_grad_matches_jax_grad(xs, tol):
    model = lstm_jax.LSTM(I, H, num_layers=2, rngs=nnx.Rngs(0))

    def model_loss(model, xs):
        ys, (_, c) = model(xs)
        return jnp.sum(ys**2) + jnp.sum(c)

    def functional_loss(params, xs):
        ys, (_, c) = lstm_jax.lstm(params, xs)
        return jnp.sum(ys**2) + jnp.sum(c)

    grads = nnx.grad(model_loss)(model, xs)["layers"]
    want = jax.grad(functional_loss)(model.weights, xs)
    for layer in range(2):
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            got = grads[layer][0][name][...]
            np.testing.assert_allclose(got, getattr(want[layer][0], name), **tol["float32_grad"])


def test_optimizer_trains_and_jit_compiles_once():
    """An nnx.jit train step with nnx.Optimizer lowers the loss and is traced once for repeated calls."""
    model = lstm_jax.LSTM(I, H, num_layers=2, dropout=0.2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    target = jax.random.normal(jax.random.key(2), (B, H))
    traces = []

    @nnx.jit
    def train_step(model, optimizer, xs, target):
        traces.append(None)

        def loss_fn(model):
            _, (h, _) = model(xs)
            return jnp.mean((h[-1] - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, xs, target)) for _ in range(40)]
    assert len(traces) == 1
    assert losses[-1] < 0.5 * losses[0]


def test_dropout_train_eval_modes(xs):
    model = lstm_jax.LSTM(I, H, num_layers=3, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
    first, _ = model(xs)
    second, _ = model(xs)
    # Training mode draws a fresh mask each call.
    assert not np.allclose(first, second)
    reference, _ = lstm_jax.lstm(model.weights, xs)
    assert not np.allclose(first, reference)
    # deterministic=True for one call, then eval mode: both exactly the dropout-free function.
    once, _ = model(xs, deterministic=True)
    np.testing.assert_array_equal(once, reference)
    model.eval()
    evaluated, _ = model(xs)
    np.testing.assert_array_equal(evaluated, reference)
    model.train()
    again, _ = model(xs)
    assert not np.allclose(again, reference)
    # nnx.view with deterministic=True turns dropout off as well, without touching the model.
    view = nnx.view(model, deterministic=True)
    np.testing.assert_array_equal(view(xs)[0], reference)


def test_dropout_is_reproducible_from_rngs(xs):
    one = lstm_jax.GRU(I, H, num_layers=2, dropout=0.3, rngs=nnx.Rngs(0, dropout=7))
    two = lstm_jax.GRU(I, H, num_layers=2, dropout=0.3, rngs=nnx.Rngs(0, dropout=7))
    np.testing.assert_array_equal(one(xs)[0], two(xs)[0])


def test_from_params_with_torch_weights(xs, tol):
    torch.manual_seed(0)
    reference = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3)
    model = lstm_jax.LSTM.from_params(lstm_jax.from_torch(reference))
    assert (model.dropout, model.batch_first) == (0.0, False)
    ys, (h_n, c_n) = model(xs)
    want_ys, (want_h, want_c) = reference(torch.tensor(np.asarray(xs)))
    np.testing.assert_allclose(ys, want_ys.detach().numpy(), **tol["float32"])
    np.testing.assert_allclose(h_n, want_h.detach().numpy(), **tol["float32"])
    np.testing.assert_allclose(c_n, want_c.detach().numpy(), **tol["float32"])
    # And back: the module's weights export to an identical torch module.
    exported = lstm_jax.to_torch(model.weights, torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3))
    for name, value in reference.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name


def test_from_params_keeps_architecture():
    params = lstm_jax.init_rnn(jax.random.key(0), I, H, num_layers=2, nonlinearity="relu", dtype=jnp.bfloat16)
    model = lstm_jax.RNN.from_params(params)
    assert model.weights[1][0].nonlinearity == "relu"
    assert model.weights[0][0].w_ih.dtype == jnp.bfloat16
    jax.tree.map(np.testing.assert_array_equal, model.weights, params)


def test_from_params_errors():
    gru_params = lstm_jax.init_gru(jax.random.key(0), I, H, num_layers=2)
    with pytest.raises(ValueError, match="must hold LSTMWeights, got GRUWeights"):
        lstm_jax.LSTM.from_params(gru_params)
    with pytest.raises(ValueError, match=r"dropout=0.5 needs rngs"):
        lstm_jax.GRU.from_params(gru_params, dropout=0.5)


def test_dropout_on_a_single_layer_warns():
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        lstm_jax.LSTM(I, H, dropout=0.5, rngs=nnx.Rngs(0))


def test_linen_bridge(xs, tol):
    """A Linen user wraps the module with flax.nnx.bridge.to_linen, as the README shows."""

    class Classifier(linen.Module):
        @linen.compact
        def __call__(self, xs):
            _, state = nnx.bridge.to_linen(lstm_jax.LSTM, I, H, num_layers=2)(xs)
            return linen.Dense(2)(state.h[-1])

    classifier = Classifier()
    variables = classifier.init(jax.random.key(0), xs)
    logits = classifier.apply(variables, xs)
    assert logits.shape == (B, 2)

    # The Linen variables hold the same params[layer][direction] layout, usable by the functional core.
    layers = variables["params"]["ToLinen_0"]["layers"]
    params = tuple(
        tuple(lstm_jax.LSTMWeights(**layers[layer][direction]) for direction in sorted(layers[layer]))
        for layer in sorted(layers)
    )
    _, state = lstm_jax.lstm(params, xs)
    dense = variables["params"]["Dense_0"]
    np.testing.assert_allclose(logits, state.h[-1] @ dense["kernel"] + dense["bias"][None, :], **tol["float32"])
