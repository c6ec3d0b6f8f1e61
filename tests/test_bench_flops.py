"""The benchmark's flop formula against hand counts and against the matmuls JAX actually traces.

The independent oracle is the jaxpr: every ``dot_general`` of ``lstm_jax.lstm``/``gru``/``rnn`` (and of their
``jax.value_and_grad``), multiplied through ``scan`` lengths, counted with 2 flops per multiply-add.
"""

import math

import jax
import jax.numpy as jnp
import pytest

import lstm_jax
from lstm_jax.bench._flops import GATES, matmul_flops, recurrent_flops

T, B, I, H = 7, 3, 5, 6


def dot_flops(jaxpr) -> int:
    """Matmul flops of a jaxpr: each dot_general counts 2 · |output| · |contracted dims|; sub-jaxprs (jit, custom
    derivatives) count once and a scan body ``length`` times."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        assert name not in ("while", "cond"), f"cannot count flops through {name}"
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contract)
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


def test_linear_in_sequence_length_and_batch():
    assert recurrent_flops(4 * T, B, I, H, training=True) == 4 * recurrent_flops(T, B, I, H, training=True)
    assert recurrent_flops(T, 5 * B, I, H, num_layers=3) == 5 * recurrent_flops(T, B, I, H, num_layers=3)


def _models(cell, num_layers):
    init = {"lstm": lstm_jax.init_lstm, "gru": lstm_jax.init_gru, "rnn": lstm_jax.init_rnn}[cell]
    apply = {"lstm": lstm_jax.lstm, "gru": lstm_jax.gru, "rnn": lstm_jax.rnn}[cell]
    params = init(jax.random.key(0), I, H, num_layers=num_layers)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    return params, xs, apply


def _traced(apply, params, xs, training):
    def forward(p, x):
        return apply(p, x)[0]

    fn = jax.value_and_grad(lambda p, x: jnp.sum(forward(p, x) ** 2)) if training else forward
    return dot_flops(jax.make_jaxpr(fn)(params, xs).jaxpr)


@pytest.mark.parametrize("training", [False, True], ids=["forward", "training"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_matches_the_reference_path_jaxpr(cell, num_layers, training):
    params, xs, apply = _models(cell, num_layers)
    if cell == "lstm":
        apply = lambda p, x: lstm_jax.lstm(p, x, impl="scan")  # noqa: E731
    expected = recurrent_flops(T, B, I, H, num_layers, cell=cell, training=training)
    assert _traced(apply, params, xs, training) == expected


@pytest.mark.parametrize("impl", [path.value for path in lstm_jax.Impl])
def test_every_lstm_path_does_the_counted_work(impl):
    params, xs, _ = _models("lstm", 2)

    def apply(p, x):
        return lstm_jax.lstm(p, x, impl=impl)

    assert _traced(apply, params, xs, training=False) == recurrent_flops(T, B, I, H, 2)
    # A custom backward pass (custom_vjp) must return ∂x even for the data, which nothing uses and XLA may drop;
    # beyond that one product the work is the formula's.
    data_input_grad = T * matmul_flops(B, 4 * H, I)
    traced = _traced(apply, params, xs, training=True)
    extra = traced - recurrent_flops(T, B, I, H, 2, training=True)
    if impl == "remat":
        # Gradient checkpointing recomputes the forward pass once, by design; GFLOP/s count the useful work only.
        extra -= recurrent_flops(T, B, I, H, 2)
    assert extra in (0, data_input_grad)
