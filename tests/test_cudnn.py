"""cuDNN's LSTM (Impl.CUDNN, and Impl.KERNEL on a GPU; lstm_jax/_cudnn.py).

Off a GPU — CI — these tests hold what can be checked without cuDNN: that the packed weights are the layout
``jax.experimental.rnn`` documents, that its reference implementation (``lstm_ref``, the function its cuDNN call is
tested against) computes our LSTM from them, lengths included, and that the path falls back to ``Impl.BPTT``. On a
GPU the rest run: cuDNN is really called (and only when asked for), values and gradients equal the reference
path's, under ``jax.vmap`` too.
test_impls.py holds every path, this one included, to the naive reference and PyTorch.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo
from jax.interpreters import mlir
from reference import random_initial_state, random_normal, random_params

import lstm_jax
from lstm_jax import _cudnn

on_gpu = pytest.mark.skipif(not _cudnn.available(), reason=_cudnn.status()[1])
off_gpu = pytest.mark.skipif(_cudnn.available(), reason="cuDNN is available here")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_pack_is_the_layout_jax_experimental_rnn_documents(bidirectional):
    I, H = 3, 5
    layer = random_params(np.random.default_rng(0), lstm_jax.init_lstm, I, H, bidirectional=bidirectional)[0]
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(_cudnn.pack(layer), I, H, 1, bidirectional)
    for d, weights in enumerate(layer):
        np.testing.assert_array_equal(W_ih[d], weights.w_ih.T)
        np.testing.assert_array_equal(W_hh[d], weights.w_hh.T)
        np.testing.assert_array_equal(b_ih[d], weights.b_ih)
        np.testing.assert_array_equal(b_hh[d], weights.b_hh)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lstm_ref_on_packed_weights_is_our_lstm(bidirectional, tol):
    """``jax.experimental.rnn.lstm_ref`` is what its cuDNN call computes: fed our packed weights, batch-major inputs
    and lengths in [1, T], it must give our LSTM's outputs and final states."""
    T, B, I, H = 6, 3, 4, 5
    rng = np.random.default_rng(1)
    params = random_params(rng, lstm_jax.init_lstm, I, H, bidirectional=bidirectional)
    xs = random_normal(rng, (T, B, I))
    h0, c0 = random_initial_state(rng, params, B)
    lengths = jnp.array([6, 1, 4], jnp.int32)
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(_cudnn.pack(params[0]), I, H, 1, bidirectional)
    ys, h_n, c_n = rnn.lstm_ref(
        jnp.swapaxes(xs, 0, 1), h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, I, H, 1, 0.0, bidirectional
    )
    want_ys, (want_h, want_c) = lstm_jax.lstm(params, xs, (h0, c0), seq_lengths=lengths, impl="scan")
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), want_ys, **tol["float32"])
    np.testing.assert_allclose(h_n, want_h, **tol["float32"])
    np.testing.assert_allclose(c_n, want_c, **tol["float32"])


@off_gpu
def test_off_gpu_the_path_is_bptt():
    available, why = _cudnn.status()
    assert not available
    assert "default backend to be 'gpu'" in why
    params = lstm_jax.init_lstm(jax.random.key(0), 4, 5, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (6, 3, 4))

    def jaxpr(impl):
        return str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(lstm_jax.lstm(p, xs, impl=impl)[0])))(params))

    assert jaxpr("cudnn") == jaxpr("bptt")


def test_cudnn_calls_are_pinned_to_row_major_layouts():
    """jax lowers its cuDNN calls without layouts, and XLA then passed them a transposed array in a transposed
    layout (wrong outputs on an H100); row_major_lowering pins them. Checked on a stand-in call, lowered for
    whichever backend runs the test."""

    def lowering(ctx, x):
        return hlo.CustomCallOp([x.type, x.type], [x], call_target_name=ir.StringAttr.get("stand_in")).results

    primitive = jax.extend.core.Primitive("lstm_jax_test_stand_in")
    primitive.multiple_results = True
    primitive.def_abstract_eval(lambda x: (x, x))
    mlir.register_lowering(primitive, _cudnn.row_major_lowering(lowering))  # for whichever backend is here
    text = jax.jit(lambda x: primitive.bind(jnp.swapaxes(x, 0, 2))).lower(jnp.zeros((2, 3, 4))).as_text()
    assert "operand_layouts = [dense<[2, 1, 0]> : tensor<3xindex>]" in text
    assert "result_layouts = [dense<[2, 1, 0]> : tensor<3xindex>, dense<[2, 1, 0]> : tensor<3xindex>]" in text


def test_status_names_what_this_jax_lacks(monkeypatch):
    """A jax without the pieces of jax.experimental.rnn this path builds on: the reason names them (the driver then
    takes the bptt path, as off a GPU)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(_cudnn, "_forward_p", None)
    monkeypatch.setattr(_cudnn, "_rnn", None)
    available, why = _cudnn.status()
    assert not available
    assert "jax.experimental.rnn lacks rnn_abstract_eval, rnn_bwd_abstract_eval" in why
    assert not _cudnn.supports(lstm_jax.init_lstm(jax.random.key(0), 4, 5)[0][0], None, jnp.zeros((2, 3, 4)))


def _cudnn_calls(fn, *args):
    jaxpr = str(jax.make_jaxpr(fn)(*args))
    return jaxpr.count("lstm_jax_cudnn_lstm_forward"), jaxpr.count("lstm_jax_cudnn_lstm_backward")


@on_gpu
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_cudnn_is_called_once_per_layer_and_only_when_asked(bidirectional):
    params = lstm_jax.init_lstm(jax.random.key(0), 4, 5, num_layers=2, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.key(1), (6, 3, 4))

    def grad(impl):
        return jax.grad(lambda p: jnp.sum(lstm_jax.lstm(p, xs, impl=impl)[0]))

    assert _cudnn_calls(grad("cudnn"), params) == (2, 2)
    assert _cudnn_calls(grad("kernel"), params) == (0, 0)  # the default takes the bptt path on a GPU


@on_gpu
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_cudnn_matches_reference_path(bidirectional, batch_first, tol):
    """Lengths of 0 and beyond T (which cuDNN does not take) behave as on every other path."""
    T, B, I, H = 7, 5, 6, 8
    rng = np.random.default_rng(2)
    params = random_params(rng, lstm_jax.init_lstm, I, H, num_layers=2, bidirectional=bidirectional)
    xs = random_normal(rng, (B, T, I) if batch_first else (T, B, I))
    state = random_initial_state(rng, params, B)
    lengths = jnp.array([7, 0, 3, 9, 1])
    D = 2 if bidirectional else 1
    coefficients = random_normal(rng, (B, T, D * H) if batch_first else (T, B, D * H))

    def run(impl):
        def loss(params, xs, state, lengths):
            ys, (h_n, c_n) = lstm_jax.lstm(params, xs, state, seq_lengths=lengths, batch_first=batch_first, impl=impl)
            return jnp.sum(ys * coefficients) + jnp.sum(h_n**2) + jnp.sum(jnp.sin(c_n)), (ys, h_n, c_n)

        # Traced lengths: concrete ones outside [1, T] are refused up front.
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state, lengths)

    (_, got), got_grads = run("cudnn")
    (_, want), want_grads = run("scan")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **tol["float32"])
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **tol["float32_grad"]), got_grads, want_grads)


@on_gpu
def test_cudnn_under_vmap_of_grad_and_grad_of_vmap(tol):
    params = lstm_jax.init_lstm(jax.random.key(0), 4, 5, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (3, 6, 2, 4))

    def loss(params, xs, impl):
        return jnp.sum(jnp.sin(lstm_jax.lstm(params, xs, impl=impl)[0]))

    for impl_grads in (
        lambda impl: jax.vmap(jax.grad(loss), in_axes=(None, 0, None))(params, xs, impl),
        lambda impl: jax.grad(lambda p: jnp.sum(jax.vmap(loss, in_axes=(None, 0, None))(p, xs, impl)))(params),
    ):
        got, want = impl_grads("cudnn"), impl_grads("scan")
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **tol["float32_grad"]), got, want)
