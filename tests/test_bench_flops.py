"""The benchmark's flop formula against hand counts and against the matmuls JAX actually traces.

The independent oracle is the jaxpr: every ``dot_general`` of ``lstm_jax.lstm``/``gru``/``rnn`` (and of their
``jax.value_and_grad``), multiplied through ``scan`` lengths, counted with 2 flops per multiply-add, batch
dimensions included (the ``bptt`` path runs both directions of a bidirectional layer as one batched matmul).
"""

import math

import jax
import jax.numpy as jnp
import pytest

import lstm_jax
from lstm_jax import _cudnn, _kernel
from lstm_jax.bench._flops import GATES, matmul_flops, recurrent_flops

T, B, I, H = 7, 3, 5, 6


def dot_flops(jaxpr) -> int:
    """Matmul flops of a jaxpr: each dot_general counts 2 · |batch dims| · M · K · N (K: the contracted dims; M, N:
    the lhs's and rhs's free dims); sub-jaxprs (jit, custom derivatives) count once and a scan body ``length``
    times."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        assert name not in ("while", "cond"), f"cannot count flops through {name}"
        if name == "dot_general":
            (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            batch = math.prod(lhs[d] for d in lhs_batch)
            k = math.prod(lhs[d] for d in lhs_contract)
            m = math.prod(size for d, size in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
            n = math.prod(size for d, size in enumerate(rhs) if d not in (*rhs_contract, *rhs_batch))
            total += 2 * batch * m * k * n
            continue
        repeat = eqn.params["length"] if name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += repeat * dot_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += repeat * dot_flops(sub)
    return total


def test_by_hand():
    # One layer, forward: T steps of (B, I) @ (I, 4H) and (B, H) @ (H, 4H).
    assert recurrent_flops(T, B, I, H) == T * (2 * B * I * 4 * H + 2 * B * H * 4 * H)
    # Training adds the weight gradients (as much again) and ∂h_{t-1} = ∂z W_hhᵀ, but no ∂x for the data.
    assert recurrent_flops(T, B, I, H, training=True) == 2 * recurrent_flops(T, B, I, H) + T * 2 * B * H * 4 * H
    # A second layer reads H features and does need its ∂x.
    two = recurrent_flops(T, B, I, H, num_layers=2, training=True)
    assert two == recurrent_flops(T, B, I, H, training=True) + 3 * recurrent_flops(T, B, H, H)
    assert recurrent_flops(T, B, I, H, cell="gru") * 4 == recurrent_flops(T, B, I, H) * 3
    assert matmul_flops(2, 3, 4) == 48
    # Bidirectional: every layer twice, and a second layer reads both directions' 2H features.
    for training in (False, True):
        one = recurrent_flops(T, B, I, H, training=training, bidirectional=True)
        assert one == 2 * recurrent_flops(T, B, I, H, training=training)
    second_layer = 2 * recurrent_flops(T, B, 2 * H, H)
    two = recurrent_flops(T, B, I, H, num_layers=2, bidirectional=True)
    assert two == 2 * recurrent_flops(T, B, I, H) + second_layer
    two = recurrent_flops(T, B, I, H, num_layers=2, training=True, bidirectional=True)
    assert two == 2 * recurrent_flops(T, B, I, H, training=True) + 3 * second_layer


def test_dot_flops_counts_batch_dimensions():
    # Both directions' (B, H) @ (H, 4H) in one dot_general with a leading batch dimension of 2.
    hs, w = jnp.ones((2, B, H)), jnp.ones((2, H, 4 * H))
    jaxpr = jax.make_jaxpr(lambda a, b: jnp.einsum("dbh,dhg->dbg", a, b))(hs, w).jaxpr
    assert dot_flops(jaxpr) == 2 * matmul_flops(B, H, 4 * H)


def test_linear_in_sequence_length_and_batch():
    assert recurrent_flops(4 * T, B, I, H, training=True) == 4 * recurrent_flops(T, B, I, H, training=True)
    assert recurrent_flops(T, 5 * B, I, H, num_layers=3) == 5 * recurrent_flops(T, B, I, H, num_layers=3)


def _models(cell, num_layers, bidirectional=False):
    init = {"lstm": lstm_jax.init_lstm, "gru": lstm_jax.init_gru, "rnn": lstm_jax.init_rnn}[cell]
    apply = {"lstm": lstm_jax.lstm, "gru": lstm_jax.gru, "rnn": lstm_jax.rnn}[cell]
    params = init(jax.random.key(0), I, H, num_layers=num_layers, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    return params, xs, apply


def _traced(apply, params, xs, training):
    def forward(p, x):
        return apply(p, x)[0]

    fn = jax.value_and_grad(lambda p, x: jnp.sum(forward(p, x) ** 2)) if training else forward
    return dot_flops(jax.make_jaxpr(fn)(params, xs).jaxpr)


@pytest.mark.parametrize("training", [False, True], ids=["forward", "training"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, False), (2, True)], ids=["L1", "L2", "L2-bi"])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_matches_the_reference_path_jaxpr(cell, num_layers, bidirectional, training):
    params, xs, apply = _models(cell, num_layers, bidirectional)
    if cell == "lstm":
        apply = lambda p, x: lstm_jax.lstm(p, x, impl="scan")  # noqa: E731
    expected = recurrent_flops(T, B, I, H, num_layers, cell=cell, training=training, bidirectional=bidirectional)
    assert _traced(apply, params, xs, training) == expected


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("impl", [path.value for path in lstm_jax.Impl])
def test_every_lstm_path_does_the_counted_work(impl, bidirectional):
    params, xs, _ = _models("lstm", 2, bidirectional)
    directions = 2 if bidirectional else 1

    def apply(p, x):
        return lstm_jax.lstm(p, x, impl=impl)

    def formula(training):
        return recurrent_flops(T, B, I, H, 2, training=training, bidirectional=bidirectional)

    if (impl == "kernel" and _kernel.available()) or (impl == "cudnn" and _cudnn.available()):
        # The fused CPU kernel (cuDNN on a GPU) does all of a layer's matmuls inside its calls, which the jaxpr
        # does not see (tests/test_kernel.py and test_cudnn.py hold them to the reference path's values instead).
        assert _traced(apply, params, xs, training=False) == _traced(apply, params, xs, training=True) == 0
        return
    assert _traced(apply, params, xs, training=False) == formula(training=False)
    # A custom backward pass (custom_vjp) must return ∂x even for the data, which nothing uses and XLA may drop;
    # beyond that one product per direction the work is the formula's.
    data_input_grad = directions * T * matmul_flops(B, 4 * H, I)
    extra = _traced(apply, params, xs, training=True) - formula(training=True)
    if impl == "remat":
        # Gradient checkpointing recomputes the forward pass once, by design; GFLOP/s count the useful work only.
        extra -= formula(training=False)
    assert extra in (0, data_input_grad)
