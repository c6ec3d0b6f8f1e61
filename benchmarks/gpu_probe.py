"""A first look on a GPU, in seconds: which path lstm_jax takes, one value-and-gradient check of cuDNN against the
reference path, and training-step timings of cuDNN (through lstm_jax and raw), the bptt path and bf16 matmuls.
Run by benchmarks/gpu_check.sh before the tests and the benchmark, so that their logs are read knowing these."""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import rnn

import lstm_jax
from lstm_jax import _cudnn


def median_ms(fn, *args, calls=20):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    print("backend", jax.default_backend(), jax.devices(), "cudnn:", _cudnn.status())
    T, B, I, H = 256, 32, 256, 256
    params = lstm_jax.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))

    def loss(params, impl, **kwargs):
        return jnp.mean(jnp.square(lstm_jax.lstm(params, xs, impl=impl, **kwargs)[0]))

    with jax.default_matmul_precision("float32"):
        got = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, "cudnn")
        want = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, "scan")
    errors = jax.tree.map(lambda g, w: float(jnp.max(jnp.abs(g - w)) / (jnp.max(jnp.abs(w)) + 1e-30)), got, want)
    print("cudnn vs scan, float32 matmuls, max relative error per leaf:", jax.tree.leaves(errors))

    weights = rnn.init_lstm_weight(jax.random.key(0), I, H, 1, False)
    zeros = jnp.zeros((1, B, H))
    lengths = jnp.full((B,), T, jnp.int32)
    xs_bf = jnp.swapaxes(xs, 0, 1)

    def raw(w):
        ys = rnn.lstm(xs_bf, zeros, zeros, w, lengths, input_size=I, hidden_size=H, num_layers=1, dropout=0.0,
                      bidirectional=False)[0]  # fmt: skip
        return jnp.mean(jnp.square(ys))

    steps = {
        "raw cudnn": (jax.jit(jax.value_and_grad(raw)), weights),
        "lstm_jax cudnn": (jax.jit(jax.value_and_grad(lambda p: loss(p, "cudnn"))), params),
        "lstm_jax bptt": (jax.jit(jax.value_and_grad(lambda p: loss(p, "bptt"))), params),
        "lstm_jax bptt bf16": (
            jax.jit(jax.value_and_grad(lambda p: loss(p, "bptt", matmul_dtype=jnp.bfloat16))),
            params,
        ),
    }
    if not _cudnn.available():
        del steps["raw cudnn"]
    for _ in range(2):  # interleaved rounds
        for name, (fn, args) in steps.items():
            ms = median_ms(fn, args)
            print(f"training T={T} B={B} I=H={H}: {name:28s} {ms:8.3f} ms  {T * B / ms / 1e3:8.2f} Mtok/s")


if __name__ == "__main__":
    main()
