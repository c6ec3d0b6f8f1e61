"""LSTM variants (peephole, layer norm), the regularisers, mixed precision and truncated BPTT.

The variants are held to a naive per-gate, Python-loop reference written here from the papers' equations; the
regularisers are checked for what makes each of them what it is (one mask per sequence, per-step zoneout, one
DropConnect mask per call) and for their train/eval behaviour.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lstm_jax
from lstm_jax._cells import LSTMState
from lstm_jax._regularizers import Regularizers, regularize

T, B, I, H, P = 7, 3, 4, 6, 5


def _layer_norm(z, gamma, beta=0.0, eps=1e-5):
    mean = z.mean(-1, keepdims=True)
    var = ((z - mean) ** 2).mean(-1, keepdims=True)
    return (z - mean) / jnp.sqrt(var + eps) * gamma[None] + (beta if isinstance(beta, float) else beta[None])


def naive_variant_lstm(weights, xs, h, c):
    """One layer, one direction: per-gate matmuls and a Python loop, peepholes (Gers & Schmidhuber 2000) and
    layer norm (Ba et al. 2016, eqs. 20-22) spelled out."""
    hidden = weights.w_ih.shape[1] // 4
    gate = {name: slice(k * hidden, (k + 1) * hidden) for k, name in enumerate("ifgo")}
    ln = weights.layer_norm
    zx_all, zh_all = weights.w_ih, weights.w_hh
    ys = []
    for x in xs:
        zx, zh = x @ zx_all, h @ zh_all
        if ln is not None:
            zx, zh = _layer_norm(zx, ln.gamma_ih), _layer_norm(zh, ln.gamma_hh)
        pre = {n: zx[:, s] + zh[:, s] + weights.b_ih[None, s] + weights.b_hh[None, s] for n, s in gate.items()}
        if weights.peephole is not None:
            pre["i"] = pre["i"] + weights.peephole[None, 0] * c
            pre["f"] = pre["f"] + weights.peephole[None, 1] * c
        c = jax.nn.sigmoid(pre["f"]) * c + jax.nn.sigmoid(pre["i"]) * jnp.tanh(pre["g"])
        if weights.peephole is not None:
            pre["o"] = pre["o"] + weights.peephole[None, 2] * c
        c_out = c if ln is None else _layer_norm(c, ln.gamma_c, ln.beta_c)
        h = jax.nn.sigmoid(pre["o"]) * jnp.tanh(c_out)
        if weights.w_hr is not None:
            h = h @ weights.w_hr
        ys.append(h)
    return jnp.stack(ys), (h, c)


def _randomize(params, key):
    """Random values in every leaf, so that gains of 1 and zero biases cannot hide a misplaced term."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)]
    )


VARIANTS = [
    dict(peephole=True),
    dict(layer_norm=True),
    dict(peephole=True, layer_norm=True, proj_size=P),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=["peephole", "layer_norm", "both_projected"])
def test_variant_matches_naive_reference(variant, tol):
    params = _randomize(lstm_jax.init_lstm(jax.random.key(0), I, H, **variant), jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (T, B, I))
    out = params[0][0].output_size
    h0 = jax.random.normal(jax.random.key(3), (1, B, out))
    c0 = jax.random.normal(jax.random.key(4), (1, B, H))

    def library_loss(params, xs, h0, c0):
        ys, (h_n, c_n) = lstm_jax.lstm(params, xs, (h0, c0))
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n * c_n[..., :out]) + jnp.sum(c_n**2), (ys, h_n, c_n)

    def reference_loss(params, xs, h0, c0):
        ys, (h, c) = naive_variant_lstm(params[0][0], xs, h0[0], c0[0])
        h_n, c_n = h[None], c[None]
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n * c_n[..., :out]) + jnp.sum(c_n**2), (ys, h_n, c_n)

    (_, got), got_grads = jax.value_and_grad(library_loss, argnums=(0, 1, 2, 3), has_aux=True)(params, xs, h0, c0)
    (_, want), want_grads = jax.value_and_grad(reference_loss, argnums=(0, 1, 2, 3), has_aux=True)(params, xs, h0, c0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **tol["float32"])
    got_leaves, want_leaves = jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, **tol["float32_grad"])


def test_variants_run_through_the_whole_driver():
    """Layers, directions and lengths are the driver's, shared by every cell: padded outputs stay exactly zero."""
    params = lstm_jax.init_lstm(
        jax.random.key(0), I, H, num_layers=2, bidirectional=True, peephole=True, layer_norm=True
    )
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = jnp.array([T, 3, 1])
    ys, (h_n, c_n) = lstm_jax.lstm(params, xs, seq_lengths=lengths)
    assert ys.shape == (T, B, 2 * H) and h_n.shape == c_n.shape == (4, B, H)
    assert np.all(np.asarray(ys)[3:, 1] == 0) and np.all(np.asarray(ys)[1:, 2] == 0)
    # The forward direction's final state of sequence 1 is its state after 3 steps.
    _, (h_short, _) = lstm_jax.lstm(params, xs[:3, 1:2])
    np.testing.assert_allclose(h_n[2, 1], h_short[2, 0], atol=1e-5)


def test_variant_initialisation():
    (weights,), _ = lstm_jax.init_lstm(jax.random.key(0), I, 64, peephole=True, layer_norm=True, num_layers=2)
    assert weights.peephole.shape == (3, 64)
    assert 0.5 / 8 < float(jnp.std(weights.peephole)) < 2 / 8  # std 1/sqrt(H) = 1/8
    ln = weights.layer_norm
    assert jnp.all(ln.gamma_ih == 1) and jnp.all(ln.gamma_hh == 1) and jnp.all(ln.gamma_c == 1)
    assert jnp.all(ln.beta_c == 0)
    plain = lstm_jax.init_lstm(jax.random.key(0), I, 64)[0][0]
    assert plain.peephole is None and plain.layer_norm is None


def test_zero_peepholes_are_the_plain_lstm(tol):
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, peephole=True)
    zeroed = jax.tree.map(lambda x: x, params)
    zeroed = ((lstm_jax.LSTMWeights(**{**vars(params[0][0]), "peephole": jnp.zeros((3, H))}),),)
    plain = ((lstm_jax.LSTMWeights(**{**vars(params[0][0]), "peephole": None}),),)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    np.testing.assert_allclose(lstm_jax.lstm(zeroed, xs)[0], lstm_jax.lstm(plain, xs)[0], **tol["float32"])
    assert not np.allclose(lstm_jax.lstm(params, xs)[0], lstm_jax.lstm(plain, xs)[0])


# --- regularisers -------------------------------------------------------------------------------------------


def _counting_cell(weights, carry, x):
    """Outputs the h it was given; its new h is the step count kept in c, so (like an LSTM's) it does not pass the
    given h through. Makes the masks visible."""
    count = carry.c + 1.0
    return LSTMState(count, count), carry.h + 0.0 * x[:, :1]


def test_variational_masks_are_one_per_sequence():
    rate = 0.5
    xs = jnp.ones((50, 8, 16))
    carry = LSTMState(jnp.ones((8, 16)), jnp.zeros((8, 16)))
    regs = Regularizers(input_dropout=rate, recurrent_dropout=rate)
    step, inputs = regularize(regs, jax.random.key(0), None, _counting_cell, carry, xs)
    # Input mask: every (sequence, feature) column is dropped at all steps or kept (scaled) at all steps.
    columns = np.asarray(inputs)
    assert np.all(columns == columns[:1])
    assert set(np.unique(columns)) == {0.0, 1.0 / (1 - rate)}
    # Recurrent mask: the h entering the cell is masked by the same pattern at every step...
    final, seen = jax.lax.scan(step, carry, inputs)
    seen = np.asarray(seen)
    pattern = seen[0] != 0
    assert 0.3 < pattern.mean() < 0.7
    for t in range(1, 50):
        assert np.array_equal(seen[t] != 0, pattern)
    # ...and scaled by 1/(1-p), while the carried state itself is not masked.
    np.testing.assert_allclose(seen[-1][pattern], 49 / (1 - rate))
    np.testing.assert_array_equal(final.h, 50.0)


def test_zoneout_keeps_previous_units_per_step():
    z_h, z_c = 0.3, 0.6
    carry = LSTMState(jnp.zeros((64, 32)), jnp.zeros((64, 32)))
    step, inputs = regularize(
        Regularizers(zoneout=(z_h, z_c)), jax.random.key(0), None, _counting_cell, carry, jnp.ones((2, 64, 1))
    )
    (x, keys) = inputs
    new, y = step(carry, (x[0], keys[0]))
    kept_h, kept_c = np.asarray(new.h) == 0, np.asarray(new.c) == 0
    assert abs(kept_h.mean() - z_h) < 0.05 and abs(kept_c.mean() - z_c) < 0.05
    np.testing.assert_array_equal(y, new.h)  # the output is the zoned h
    # Fresh masks at the next step.
    new2, _ = step(carry, (x[1], keys[1]))
    assert not np.array_equal(np.asarray(new2.h) == 0, kept_h)


def test_weight_dropout_masks_the_recurrent_kernel_once():
    rate = 0.4
    weights = lstm_jax.init_lstm(jax.random.key(0), I, 32)[0][0]
    seen = []

    def spy(weights, carry, x):
        seen.append(weights.w_hh)
        return lstm_jax.lstm_cell(weights, carry, x)

    carry = LSTMState(jnp.zeros((B, 32)), jnp.zeros((B, 32)))
    step, inputs = regularize(
        Regularizers(weight_dropout=rate), jax.random.key(1), weights, spy, carry, jnp.ones((T, B, I))
    )
    jax.lax.scan(step, carry, inputs)
    dropped = np.asarray(seen[0])
    original = np.asarray(weights.w_hh)
    kept = dropped != 0
    assert abs(kept.mean() - (1 - rate)) < 0.05
    np.testing.assert_allclose(dropped[kept], original[kept] / (1 - rate), rtol=1e-6)


REGULARISERS = [
    dict(input_dropout=0.3),
    dict(recurrent_dropout=0.3),
    dict(zoneout=(0.2, 0.1)),
    dict(weight_dropout=0.3),
]


@pytest.mark.parametrize("regs", REGULARISERS, ids=lambda r: next(iter(r)))
def test_regularisers_train_and_eval(regs):
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    plain, _ = lstm_jax.lstm(params, xs)
    # One compiled function for the three keys (eager calls would trace and compile each one).
    train = jax.jit(lambda p, key: lstm_jax.lstm(p, xs, key=key, **regs)[0])
    one, again, other = (train(params, jax.random.key(k)) for k in (2, 2, 3))
    assert not np.allclose(one, plain)
    np.testing.assert_array_equal(one, again)  # reproducible from the key
    assert not np.allclose(one, other)
    grads = jax.grad(lambda p: jnp.sum(train(p, jax.random.key(2)) ** 2))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    # Evaluation: the same params without a key are the plain network.
    with pytest.raises(ValueError, match="need a PRNG key"):
        lstm_jax.lstm(params, xs, **regs)


@pytest.mark.parametrize("regs", REGULARISERS, ids=lambda r: next(iter(r)))
def test_nnx_regularisers_train_and_eval(regs, tol):
    model = lstm_jax.LSTM(I, H, num_layers=2, rngs=nnx.Rngs(0), **regs)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    plain, _ = lstm_jax.lstm(model.weights, xs)
    trained, _ = model(xs)
    assert not np.allclose(trained, plain)
    model.eval()
    np.testing.assert_array_equal(model(xs)[0], plain)


def test_regulariser_errors():
    params = lstm_jax.init_lstm(jax.random.key(0), I, H)
    xs = jnp.ones((T, B, I))
    with pytest.raises(ValueError, match=r"zoneout z_c must be a float in \[0, 1\), got 1.0"):
        lstm_jax.lstm(params, xs, zoneout=(0.1, 1.0), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"recurrent_dropout must be a float in \[0, 1\), got -0.1"):
        lstm_jax.lstm(params, xs, recurrent_dropout=-0.1, key=jax.random.key(0))
    gru_params = lstm_jax.init_gru(jax.random.key(0), I, H)
    cell = lstm_jax.GRUCell(H)
    with pytest.raises(ValueError, match="recurrent_dropout needs an LSTM-style carry"):
        lstm_jax.scan_cell(cell, gru_params, xs, recurrent_dropout=0.2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="zoneout on the cell state"):
        lstm_jax.scan_cell(cell, gru_params, xs, zoneout=0.2, key=jax.random.key(0))
    # A GRU takes zoneout on h and the other regularisers through the cell protocol.
    ys, _ = lstm_jax.scan_cell(cell, gru_params, xs, zoneout=(0.2, 0.0), weight_dropout=0.2, key=jax.random.key(0))
    assert ys.shape == (T, B, H)


# --- mixed precision ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, init", [(lstm_jax.lstm, lstm_jax.init_lstm), (lstm_jax.gru, lstm_jax.init_gru)])
def test_bf16_matmuls_with_f32_state(fn, init):
    """bf16 operands (8-bit mantissa, relative rounding 2^-9 ≈ 2e-3 per operand) with f32 accumulation: over 17
    steps the outputs stay within 3e-2 of float32, and the state and outputs are float32."""
    params = init(jax.random.key(0), I, 32, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (17, B, I))
    want_ys, _ = fn(params, xs)
    got_ys, got_state = jax.jit(lambda p, x: fn(p, x, matmul_dtype=jnp.bfloat16))(params, xs)
    assert got_ys.dtype == jnp.float32
    for leaf in jax.tree.leaves(got_state):
        assert leaf.dtype == jnp.float32
    np.testing.assert_allclose(got_ys, want_ys, atol=3e-2)
    assert not np.array_equal(got_ys, want_ys)  # really ran in bf16
    hlo = jax.jit(lambda p, x: fn(p, x, matmul_dtype=jnp.bfloat16)).lower(params, xs).as_text()
    assert "bf16" in hlo
    grads = jax.grad(lambda p: jnp.sum(fn(p, xs, matmul_dtype=jnp.bfloat16)[0]))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # master weights stay f32


# --- truncated BPTT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 5, 20, 64])
def test_truncated_bptt_forward_equals_full(chunk_size, tol):
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (20, B, I))
    state = lstm_jax.LSTMState(jax.random.normal(jax.random.key(2), (2, B, H)), jnp.zeros((2, B, H)))
    for initial in (None, state):
        want_ys, want_state = lstm_jax.lstm(params, xs, initial)
        got_ys, got_state = lstm_jax.truncated_bptt(lstm_jax.lstm, params, xs, initial, chunk_size=chunk_size)
        np.testing.assert_allclose(got_ys, want_ys, **tol["float32"])
        np.testing.assert_allclose(got_state.c, want_state.c, **tol["float32"])


def test_truncated_bptt_cuts_the_gradient():
    params = lstm_jax.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (20, B, I))

    def last_output(xs, chunk_size):
        ys, _ = lstm_jax.truncated_bptt(lstm_jax.lstm, params, xs, chunk_size=chunk_size)
        return jnp.sum(ys[-1])

    truncated = jax.grad(last_output)(xs, 5)
    full = jax.grad(lambda xs: jnp.sum(lstm_jax.lstm(params, xs)[0][-1]))(xs)
    assert np.all(np.asarray(truncated[:15]) == 0)  # beyond the last chunk: cut
    assert np.all(np.abs(np.asarray(full[:15])).sum(axis=(1, 2)) > 0)
    np.testing.assert_allclose(truncated[15:], full[15:], atol=1e-6)  # within it: full BPTT


def test_truncated_bptt_errors():
    params = lstm_jax.init_lstm(jax.random.key(0), I, H)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        lstm_jax.truncated_bptt(lstm_jax.lstm, params, jnp.ones((4, B, I)), chunk_size=0)


# --- the cell protocol ---------------------------------------------------------------------------------------


def test_builtin_cells_through_the_protocol(tol):
    key = jax.random.key(0)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = jnp.array([T, 2, 5])
    cases = [
        (
            lstm_jax.LSTMCell(H, proj_size=2),
            lstm_jax.init_lstm(key, I, H, proj_size=2, num_layers=2, bidirectional=True),
            lstm_jax.lstm,
        ),
        (lstm_jax.GRUCell(H), lstm_jax.init_gru(key, I, H, num_layers=2, bidirectional=True), lstm_jax.gru),
        (
            lstm_jax.RNNCell(H, "relu"),
            lstm_jax.init_rnn(key, I, H, num_layers=2, bidirectional=True, nonlinearity="relu"),
            lstm_jax.rnn,
        ),
    ]
    for cell, params, fn in cases:
        protocol_params = lstm_jax.init_cell(cell, key, I, num_layers=2, bidirectional=True)
        jax.tree.map(np.testing.assert_array_equal, protocol_params, params)
        got = lstm_jax.scan_cell(cell, params, xs, seq_lengths=lengths)
        want = fn(params, xs, seq_lengths=lengths)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32"]), got, want)


def test_scan_cell_initial_carry_is_checked():
    cell = lstm_jax.LSTMCell(H)
    params = lstm_jax.init_cell(cell, jax.random.key(0), I, num_layers=2)
    xs = jnp.ones((T, B, I))
    good = LSTMState(jnp.zeros((2, B, H)), jnp.zeros((2, B, H)))
    assert lstm_jax.scan_cell(cell, params, xs, good)[1].h.shape == (2, B, H)
    with pytest.raises(
        ValueError, match=r"initial_carry\.c must have shape \(2, 3, 6\) \(L·D, B, features\), got \(1, 3, 6\)"
    ):
        lstm_jax.scan_cell(cell, params, xs, LSTMState(jnp.zeros((2, B, H)), jnp.zeros((1, B, H))))
    with pytest.raises(ValueError, match="initial_carry must have the structure of the cell's carry"):
        lstm_jax.scan_cell(cell, params, xs, jnp.zeros((2, B, H)))


@pytest.mark.parametrize("impl", ["scan", "bptt"])
def test_bf16_params_and_inputs_keep_a_float32_state(impl):
    """Params and inputs both bfloat16: the matmuls run in bf16, the carry stays float32 on every path."""
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, dtype=jnp.bfloat16)
    xs = jax.random.normal(jax.random.key(1), (T, B, I)).astype(jnp.bfloat16)
    ys, (h_n, c_n) = lstm_jax.lstm(params, xs, impl=impl)
    assert ys.dtype == h_n.dtype == c_n.dtype == jnp.float32
    want, _ = lstm_jax.lstm(jax.tree.map(lambda w: w.astype(jnp.float32), params), xs.astype(jnp.float32))
    np.testing.assert_allclose(ys, want, atol=3e-2)


@pytest.mark.parametrize("input_mode", ["auto", "hoisted"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bf16_matmuls_on_the_bptt_path_match_the_reference_path(bidirectional, input_mode, monkeypatch):
    """Impl.BPTT runs bf16 matmuls too (forward, backward and weight-gradient GEMMs, f32 accumulation): its values
    and gradients agree with the reference path's bf16 run to bf16 rounding, and the gradients of bf16 params
    come back bf16 (those of f32 master weights f32). Also with X W_ih hoisted out of the scan (the GPU's
    default; ``auto`` is the backend's default)."""
    monkeypatch.setenv("LSTM_JAX_BPTT_INPUT", input_mode)
    params = lstm_jax.init_lstm(jax.random.key(0), I, 16, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.key(1), (9, B, I))
    lengths = jnp.array([9, 5, 1])

    def loss(params, impl):
        ys, (h_n, _) = lstm_jax.lstm(params, xs, seq_lengths=lengths, matmul_dtype=jnp.bfloat16, impl=impl)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n)

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (got, got_grads), (want, want_grads) = (value_and_grad(params, impl) for impl in ("bptt", "scan"))
    # The hand-written backward ran (a custom_vjp, not the reference path's autodiff), with bf16 matmuls.
    jaxpr = str(jax.make_jaxpr(loss, static_argnums=1)(params, "bptt"))
    assert "custom_vjp_call" in jaxpr and "bf16" in jaxpr
    np.testing.assert_allclose(got, want, rtol=1e-2)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        assert g.dtype == w.dtype == jnp.float32
        np.testing.assert_allclose(g, w, atol=3e-2 * float(jnp.max(jnp.abs(w))) + 1e-3)
    bf16_params = jax.tree.map(lambda w: w.astype(jnp.bfloat16), params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(lstm_jax.lstm(p, xs.astype(jnp.bfloat16))[0])))(bf16_params)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
