"""Every implementation path (lstm_jax.Impl) against the naive reference and PyTorch: values and gradients.

The reference path (Impl.SCAN) is covered across the whole model zoo by test_reference.py / test_torch_parity.py;
here each other path is held to the same oracles on the configurations where it applies, and the fallback to the
reference path is checked where it does not.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads
from reference import random_initial_state, random_normal, random_params, reference_lstm

import lstm_jax

T, B, I, H = 6, 3, 4, 5
FAST_PATHS = [impl.value for impl in lstm_jax.Impl if impl is not lstm_jax.Impl.SCAN]

CONFIGS = [
    dict(num_layers=1, bidirectional=False, lengths=None, state=False, batch_first=False),
    dict(num_layers=2, bidirectional=True, lengths=[6, 1, 4], state=True, batch_first=False),
    dict(num_layers=2, bidirectional=False, lengths=[3, 6, 5], state=True, batch_first=True),
]


def _loss_and_grads(fn, params, xs, state, lengths, batch_first, coefficients):
    def loss(params, xs, state):
        ys, (h_n, c_n) = fn(params, xs, state, seq_lengths=lengths, batch_first=batch_first)
        return jnp.sum(ys * coefficients) + jnp.sum(h_n**2) + jnp.sum(jnp.sin(c_n)), (ys, h_n, c_n)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, state)


def _config_inputs(config):
    """params, xs, state, lengths and the loss's coefficients for a configuration: the same for every path."""
    rng = np.random.default_rng(0)
    L, bidirectional = config["num_layers"], config["bidirectional"]
    D = 2 if bidirectional else 1
    params = random_params(rng, lstm_jax.init_lstm, I, H, num_layers=L, bidirectional=bidirectional)
    xs = random_normal(rng, (B, T, I) if config["batch_first"] else (T, B, I))
    state = random_initial_state(rng, params, B) if config["state"] else None
    lengths = None if config["lengths"] is None else jnp.array(config["lengths"])
    coefficients = random_normal(rng, (B, T, D * H) if config["batch_first"] else (T, B, D * H))
    return params, xs, state, lengths, coefficients


@functools.cache
def _naive_reference(config_index):
    """The naive reference's loss, outputs and gradients on CONFIGS[config_index], computed once for all paths
    (op by op, it was about half of each path's test)."""
    config = CONFIGS[config_index]
    params, xs, state, lengths, coefficients = _config_inputs(config)
    return _loss_and_grads(reference_lstm, params, xs, state, lengths, config["batch_first"], coefficients)


@pytest.mark.parametrize("impl", FAST_PATHS)
@pytest.mark.parametrize("config_index", range(len(CONFIGS)), ids=["plain", "bi_packed_state", "packed_batch_first"])
def test_path_matches_naive_reference(impl, config_index, tol):
    config = CONFIGS[config_index]
    params, xs, state, lengths, coefficients = _config_inputs(config)

    def library(params, xs, state, **kwargs):
        return lstm_jax.lstm(params, xs, state, impl=impl, **kwargs)

    (_, got), got_grads = jax.jit(
        lambda p, x, s: _loss_and_grads(library, p, x, s, lengths, config["batch_first"], coefficients)
    )(params, xs, state)
    (_, want), want_grads = _naive_reference(config_index)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, **tol["float32"])
    got_leaves, want_leaves = jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, **tol["float32_grad"])


@pytest.mark.parametrize("impl", FAST_PATHS)
def test_path_check_grads_float64(impl):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        params = random_params(rng, lstm_jax.init_lstm, 2, 3, bidirectional=True, dtype=jnp.float64)
        xs = random_normal(rng, (4, 2, 2), jnp.float64)
        lengths = jnp.array([4, 2])

        def f(params, xs):
            ys, (h_n, c_n) = lstm_jax.lstm(params, xs, seq_lengths=lengths, impl=impl)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n * c_n)

        check_grads(f, (params, xs), order=1, modes=["rev"])


@pytest.mark.parametrize("impl", FAST_PATHS)
def test_path_matches_torch(impl, tol):
    torch.manual_seed(0)
    module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    params = lstm_jax.from_torch(module)
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([6, 2, 5])
    coefficients = np.random.default_rng(3).standard_normal((T, B, 2 * H)).astype(np.float32)

    x_torch = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x_torch, torch.tensor(lengths), enforce_sorted=False)
    out, (h_n, c_n) = module(packed)
    ys, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    (torch.sum(ys * torch.tensor(coefficients)) + torch.sum(h_n**2) + torch.sum(torch.sin(c_n))).backward()

    def loss(params, xs):
        ys, (h_n, c_n) = lstm_jax.lstm(params, xs, seq_lengths=lengths, impl=impl)
        return jnp.sum(ys * coefficients) + jnp.sum(h_n**2) + jnp.sum(jnp.sin(c_n)), ys

    (_, got_ys), (grads, d_xs) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    np.testing.assert_allclose(got_ys, ys.detach().numpy(), **tol["float32"])
    np.testing.assert_allclose(d_xs, x_torch.grad.numpy(), **tol["float32_grad"])
    for layer in range(2):
        for direction, suffix in enumerate(["", "_reverse"]):
            got = grads[layer][direction]
            for name, torch_name, transpose in [
                ("w_ih", "weight_ih", True),
                ("w_hh", "weight_hh", True),
                ("b_ih", "bias_ih", False),
                ("b_hh", "bias_hh", False),
            ]:
                want = getattr(module, f"{torch_name}_l{layer}{suffix}").grad.numpy()
                value = np.asarray(getattr(got, name))
                np.testing.assert_allclose(value.T if transpose else value, want, **tol["float32_grad"])


@pytest.mark.parametrize("impl", FAST_PATHS)
def test_path_under_vmap_and_jit(impl, tol):
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (2, T, B, I))  # an extra leading axis

    def loss(params, xs):
        return jnp.sum(lstm_jax.lstm(params, xs, impl=impl)[0] ** 2)

    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, xs)
    for k in range(2):
        eager = jax.grad(loss)(params, xs[k])
        jax.tree.map(lambda a, b, k=k: np.testing.assert_allclose(a[k], b, **tol["float32_grad"]), per_example, eager)


def test_bptt_falls_back_where_it_does_not_apply():
    """Peepholes and layer norm run the reference path: the results are the scan path's exactly."""
    impl = "bptt"
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    for variant in (dict(peephole=True), dict(layer_norm=True)):
        params = lstm_jax.init_lstm(jax.random.key(0), I, H, **variant)
        got = jax.grad(lambda p: jnp.sum(lstm_jax.lstm(p, xs, impl=impl)[0]))(params)
        want = jax.grad(lambda p: jnp.sum(lstm_jax.lstm(p, xs, impl="scan")[0]))(params)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_unknown_impl_is_an_error():
    params = lstm_jax.init_lstm(jax.random.key(0), I, H)
    with pytest.raises(
        ValueError, match=r"impl must be one of \['scan', 'bptt', 'remat', 'kernel', 'cudnn'\], got 'pallas'"
    ):
        lstm_jax.lstm(params, jnp.ones((T, B, I)), impl="pallas")


def test_forward_mode_needs_the_scan_path():
    """jax.jvp/jacfwd differentiate the reference path; the hand-written backward is reverse-mode only."""
    params = lstm_jax.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    tangent = jnp.ones_like(xs)
    _, jvp = jax.jvp(lambda x: lstm_jax.lstm(params, x, impl="scan")[0], (xs,), (tangent,))
    _, vjp_fn = jax.vjp(lambda x: lstm_jax.lstm(params, x)[0], xs)
    # <vjp(u), t> == <u, jvp(t)>: forward mode on the scan path agrees with the default reverse mode.
    u = jax.random.normal(jax.random.key(2), jvp.shape)
    np.testing.assert_allclose(jnp.vdot(vjp_fn(u)[0], tangent), jnp.vdot(u, jvp), rtol=1e-4)
    for impl in ("bptt", "kernel"):
        with pytest.raises(TypeError, match="forward-mode"):
            jax.jvp(lambda x: lstm_jax.lstm(params, x, impl=impl)[0], (xs,), (tangent,))  # noqa: B023


@pytest.mark.parametrize("steps", [1, 17])  # 17: several segments of 5 plus a remainder of 2
def test_remat_matches_scan_for_any_cell_and_length(steps, tol):
    """Segments of ⌈√T⌉ steps with T not a multiple of them (padding is masked), both directions, with lengths and
    a regulariser (zoneout takes per-step keys through the segments)."""
    xs = jax.random.normal(jax.random.key(1), (steps, B, I))
    lengths = jnp.array([steps, max(1, steps // 2), 1])
    cell = lstm_jax.GRUCell(H)
    params = lstm_jax.init_cell(cell, jax.random.key(0), I, bidirectional=True)

    def loss(params, xs, impl):
        ys, h_n = lstm_jax.scan_cell(
            cell, params, xs, seq_lengths=lengths, zoneout=(0.2, 0.0), key=jax.random.key(3), impl=impl
        )
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n**2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    got, want = value_and_grad(params, xs, "remat"), value_and_grad(params, xs, "scan")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), got, want)


def test_remat_memory_grows_sublinearly():
    """XLA's temp memory of the training step: the scan keeps every step's activations (linear in T), remat only
    segment boundaries plus one segment (≈ √T): at 16× the length it needs far less than 16× the memory."""

    def temp_bytes(impl, steps):
        params = lstm_jax.init_lstm(jax.random.key(0), 8, 32)
        xs = jnp.zeros((steps, 4, 8))
        grad = jax.grad(lambda p, x: jnp.sum(lstm_jax.lstm(p, x, impl=impl)[1].h))
        return jax.jit(grad).lower(params, xs).compile().memory_analysis().temp_size_in_bytes

    scan_growth = temp_bytes("scan", 4096) / temp_bytes("scan", 256)
    remat_growth = temp_bytes("remat", 4096) / temp_bytes("remat", 256)
    assert scan_growth > 8  # linear: about 16
    assert remat_growth < 6  # about √16 = 4
    assert temp_bytes("remat", 4096) < temp_bytes("scan", 4096) / 4


def _scans(fn, *args) -> int:
    """The number of lax.scan loops in fn's jaxpr, those inside custom_vjp and other sub-jaxprs included."""

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "scan"
            for param in eqn.params.values():
                if isinstance(param, jax.extend.core.ClosedJaxpr):
                    total += count(param.jaxpr)
                elif isinstance(param, jax.extend.core.Jaxpr):
                    total += count(param)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("lengths", [None, [6, 1, 4]])
def test_bptt_runs_both_directions_of_a_layer_as_one_scan(lengths, tol):
    """Impl.BPTT fuses a bidirectional layer into one scan forward and one backward; same values as two scans."""
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    seq_lengths = None if lengths is None else jnp.array(lengths)

    def loss(params, xs, impl):
        ys, (h_n, c_n) = lstm_jax.lstm(params, xs, seq_lengths=seq_lengths, impl=impl)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n * c_n)

    assert _scans(lambda p, x: lstm_jax.lstm(p, x, seq_lengths=seq_lengths, impl="bptt"), params, xs) == 1
    assert _scans(lambda p, x: lstm_jax.lstm(p, x, seq_lengths=seq_lengths, impl="scan"), params, xs) == 2
    assert _scans(jax.grad(lambda p, x: loss(p, x, "bptt")), params, xs) == 2  # one forward, one backward
    got = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, "bptt")
    want = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, "scan")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), got, want)


@pytest.mark.parametrize("reverse", [False, True])
def test_bptt_single_direction_matches_the_scan_in_both_directions(reverse, tol):
    """``_bptt.lstm_direction`` on its own (the driver's path for an unpaired direction), masked, either way."""
    from functools import partial

    from lstm_jax import _bptt, _driver
    from lstm_jax._cells import LSTMState, lstm_cell

    weights = lstm_jax.init_lstm(jax.random.key(0), I, H)[0][0]
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    carry = LSTMState(*jax.random.normal(jax.random.key(2), (2, B, H)))
    lengths = jnp.array([T, 1, 4])

    def loss(weights, carry, xs, run):
        (h, c), ys = run(weights, carry, xs)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h * c)

    def by_bptt(weights, carry, xs):
        return _bptt.lstm_direction(weights, carry, xs, lengths=lengths, reverse=reverse)

    def by_scan(weights, carry, xs):
        return _driver.scan_direction(partial(lstm_cell, weights), carry, xs, lengths=lengths, reverse=reverse)

    got = jax.value_and_grad(loss, argnums=(0, 1, 2))(weights, carry, xs, by_bptt)
    want = jax.value_and_grad(loss, argnums=(0, 1, 2))(weights, carry, xs, by_scan)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), got, want)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_bptt_runs_projected_lstms_too(bidirectional, tol):
    """LSTMP (proj_size): the hand-written backward handles h = (o ⊙ tanh c) W_hr — values and gradients (W_hr's
    included) match the reference path with lengths and an initial state, and float64 passes check_grads."""
    rng = np.random.default_rng(5)
    params = random_params(rng, lstm_jax.init_lstm, I, H, num_layers=2, bidirectional=bidirectional, proj_size=2)
    xs = random_normal(rng, (T, B, I))
    state = random_initial_state(rng, params, B)
    lengths = jnp.array([6, 1, 4])

    def loss(params, xs, state, impl):
        ys, (h_n, c_n) = lstm_jax.lstm(params, xs, state, seq_lengths=lengths, impl=impl)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n**2) + jnp.sum(c_n)

    assert "custom_vjp_call" in str(jax.make_jaxpr(loss, static_argnums=3)(params, xs, state, "bptt"))
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    got, want = value_and_grad(params, xs, state, "bptt"), value_and_grad(params, xs, state, "scan")
    assert any(w.w_hr is not None for layer in got[1][0] for w in layer)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), got, want)
    with jax.enable_x64(True):
        params64 = random_params(rng, lstm_jax.init_lstm, 2, 3, bidirectional=bidirectional, proj_size=2)
        params64 = jax.tree.map(lambda w: w.astype(jnp.float64), params64)
        xs64 = random_normal(rng, (4, 2, 2), jnp.float64)
        check_grads(
            lambda p, x: jnp.sum(jnp.sin(lstm_jax.lstm(p, x, seq_lengths=jnp.array([4, 2]))[0])),
            (params64, xs64),
            order=1,
            modes=["rev"],
        )


def _forward_scan_dots(fn, *args) -> tuple[int, int, int]:
    """(matmuls inside the first scan's body, matmuls before it, its unroll) in the jaxpr of fn(*args)."""
    eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    while not any(e.primitive.name == "scan" for e in eqns):  # into the custom_vjp / vmap wrappers
        wrapper = next(e for e in eqns if "call_jaxpr" in e.params or "jaxpr" in e.params)
        inner = wrapper.params.get("call_jaxpr", wrapper.params.get("jaxpr"))
        eqns = getattr(inner, "jaxpr", inner).eqns
    first = next(i for i, e in enumerate(eqns) if e.primitive.name == "scan")
    body = eqns[first].params["jaxpr"].jaxpr.eqns
    dots = sum(e.primitive.name == "dot_general" for e in body)
    return dots, sum(e.primitive.name == "dot_general" for e in eqns[:first]), eqns[first].params["unroll"]


def _modes_loss(params, xs, state, lengths, impl):
    ys, (h_n, c_n) = lstm_jax.lstm(params, xs, state, seq_lengths=lengths, impl=impl)
    return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n**2) + jnp.sum(c_n)


# The scan path reads none of the bptt path's options: one compiled reference serves every mode's test (compiled
# afresh for each, it was a third of their time). The bptt side is jitted inside each test, under its options.
_scan_reference = jax.jit(jax.value_and_grad(functools.partial(_modes_loss, impl="scan"), argnums=(0, 1, 2)))


@pytest.mark.parametrize("mode, unroll", [("concat", 1), ("separate", 1), ("hoisted", 1), ("hoisted", 3)])
def test_bptt_input_modes_and_unroll_give_the_same_results(mode, unroll, monkeypatch, tol):
    """Each way of forming x_t W_ih ($LSTM_JAX_BPTT_INPUT) and any unroll ($LSTM_JAX_BPTT_UNROLL) of the bptt path's
    scans: values and gradients of the reference path — unidirectional, bidirectional (vmapped) and projected,
    with lengths and initial states — and each mode's forward scan does the matmuls it says."""
    from lstm_jax import _bptt

    monkeypatch.setenv("LSTM_JAX_BPTT_INPUT", mode)
    monkeypatch.setenv("LSTM_JAX_BPTT_UNROLL", str(unroll))
    rng = np.random.default_rng(7)
    lengths = jnp.array([6, 1, 4])
    xs = random_normal(rng, (T, B, I))
    for bidirectional, proj_size in [(False, 0), (True, 0), (True, 2)]:
        params = random_params(
            rng, lstm_jax.init_lstm, I, H, num_layers=2, bidirectional=bidirectional, proj_size=proj_size
        )
        state = random_initial_state(rng, params, B)
        bptt = jax.jit(jax.value_and_grad(functools.partial(_modes_loss, impl="bptt"), argnums=(0, 1, 2)))
        got, want = bptt(params, xs, state, lengths), _scan_reference(params, xs, state, lengths)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), got, want)

    weights = lstm_jax.init_lstm(jax.random.key(0), I, H, proj_size=2)[0][0]
    carry = lstm_jax.LSTMState(random_normal(rng, (B, 2)), random_normal(rng, (B, H)))
    got = _forward_scan_dots(lambda w, x: _bptt.lstm_direction(w, carry, x)[1], weights, xs)
    projection = 1  # h = m W_hr inside the body
    assert got == {"concat": (1 + projection, 0, unroll), "separate": (2 + projection, 0, unroll)}.get(
        mode, (1 + projection, 1, unroll)
    )


def test_bptt_options_are_checked_and_auto_suits_the_backend(monkeypatch, tol):
    """Unknown values of the bptt path's environment options are errors. ``auto`` hoists X W_ih out of the scan
    (4 steps per iteration) off the CPU; on the CPU it hoists only one direction's inference, and otherwise
    concatenates one direction's matmuls and keeps a bidirectional layer's two (1 step per iteration). Inference
    and training of one function, each with its own plan, give the reference path's values."""
    from lstm_jax import _bptt

    monkeypatch.setenv("LSTM_JAX_BPTT_INPUT", "fused")
    with pytest.raises(ValueError, match="LSTM_JAX_BPTT_INPUT"):
        _bptt.input_mode(bidirectional=False, training=True)
    monkeypatch.setenv("LSTM_JAX_BPTT_UNROLL", "0")
    with pytest.raises(ValueError, match="LSTM_JAX_BPTT_UNROLL"):
        _bptt.unroll("concat")
    monkeypatch.delenv("LSTM_JAX_BPTT_INPUT")
    monkeypatch.delenv("LSTM_JAX_BPTT_UNROLL")
    weights = lstm_jax.init_lstm(jax.random.key(0), I, H)[0][0]
    xs = jnp.ones((T, B, I))
    plans = {
        (bidirectional, training): _bptt._plan(bidirectional, training, xs, weights.w_ih)
        for bidirectional in (False, True)
        for training in (False, True)
    }
    if jax.default_backend() == "cpu":
        assert plans == {
            (False, False): ("hoisted", 4),
            (False, True): ("concat", 1),
            (True, False): ("separate", 1),
            (True, True): ("separate", 1),
        }
        # ... and hoists only while X W_ih is small enough to stay fast to read.
        assert _bptt.input_mode(False, False, projection_bytes=_bptt.CPU_HOIST_BYTES) == "hoisted"
        assert _bptt.input_mode(False, False, projection_bytes=_bptt.CPU_HOIST_BYTES + 1) == "concat"
        long_xs = jnp.ones((_bptt.CPU_HOIST_BYTES // (B * 4 * H * 4) + 1, B, I))
        assert _bptt._plan(False, False, long_xs, weights.w_ih) == ("concat", 1)
    else:
        assert set(plans.values()) == {("hoisted", 4)}
    # Inference (no backward pass) runs the inference plan, a gradient the training plan: (matmuls in the forward
    # scan, before it, unroll) are those of the plan's mode.
    carry = lstm_jax.LSTMState(*jnp.zeros((2, B, H)))

    def forward(w, x):
        return jnp.sum(_bptt.lstm_direction(w, carry, x)[1])

    for fn, training in ((forward, False), (jax.grad(forward), True)):
        mode, unroll = plans[False, training]
        dots = {"concat": (1, 0), "separate": (2, 0), "hoisted": (1, 1)}[mode]
        assert _forward_scan_dots(fn, weights, xs) == (*dots, unroll)

    params = lstm_jax.init_lstm(jax.random.key(0), I, H, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = jnp.array([6, 1, 4])

    def loss(params, impl):
        return jnp.sum(jnp.sin(lstm_jax.lstm(params, xs, seq_lengths=lengths, impl=impl)[0]))

    np.testing.assert_allclose(jax.jit(loss, static_argnums=1)(params, "bptt"), loss(params, "scan"), **tol["float32"])
    got, want = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, impl) for impl in ("bptt", "scan"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), got, want)
