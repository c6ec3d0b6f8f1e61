"""The bptt path's options on a GPU, side by side with cuDNN: how the forward scan forms x_t W_ih
($LSTM_JAX_BPTT_INPUT: concat / separate / hoisted) and how many steps each scan iteration runs
($LSTM_JAX_BPTT_UNROLL), timed by training step (value and gradient) and forward, interleaved rounds, medians.

    python benchmarks/gpu_bptt_variants.py [--out DIR]

Prints a table and writes ``bptt_variants.json`` and, per batch size, the fastest training option as
``best_B<batch>.env`` (``LSTM_JAX_BPTT_INPUT=… LSTM_JAX_BPTT_UNROLL=…``) for the benchmark runs after it.
"""

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from gpu_probe import median_ms  # beside this script

import lstm_jax

VARIANTS = [("concat", 1), ("separate", 1), ("hoisted", 1), ("hoisted", 2), ("hoisted", 4), ("concat", 2)]
SHAPES = [(256, 32, 1, False), (256, 256, 1, False), (64, 32, 2, True)]  # (T, B, layers, bidirectional)
I = H = 256


def build(T, B, layers, bidirectional, variant):
    """Jitted training and forward steps, traced with the variant's environment (the options are read then)."""
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, num_layers=layers, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    impl = "cudnn" if variant == "cudnn" else "bptt"
    options = {} if variant == "cudnn" else {"LSTM_JAX_BPTT_INPUT": variant[0], "LSTM_JAX_BPTT_UNROLL": str(variant[1])}
    saved = {name: os.environ.get(name) for name in options}

    def loss(params):
        return jnp.mean(jnp.square(lstm_jax.lstm(params, xs, impl=impl)[0]))

    os.environ.update(options)
    try:
        training = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
        forward = jax.jit(lambda p: lstm_jax.lstm(p, xs, impl=impl)[0]).lower(params).compile()
    finally:  # the caller's own settings back
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    jax.block_until_ready((training(params), forward(params)))
    return training, forward, params


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    print(jax.devices())
    rows = []
    for T, B, layers, bidirectional in SHAPES:
        variants = [v for v in VARIANTS if not (bidirectional and v[0] == "concat")] + ["cudnn"]
        steps = {v: build(T, B, layers, bidirectional, v) for v in variants}
        times = {v: {"training": [], "forward": []} for v in variants}
        for _ in range(3):  # interleaved rounds
            for v, (training, forward, params) in steps.items():
                times[v]["training"].append(median_ms(training, params, calls=15))
                times[v]["forward"].append(median_ms(forward, params, calls=15))
        for v in variants:
            row = dict(T=T, B=B, layers=layers, bidirectional=bidirectional, variant=str(v))
            row |= dict(input=v[0], unroll=v[1]) if v != "cudnn" else {}
            row |= {f"{mode}_ms": float(np.median(ms)) for mode, ms in times[v].items()}
            rows.append(row)
            print(f"T={T:4d} B={B:3d} L={layers} bi={bidirectional!s:5s} {v!s:16s} "
                  f"training {row['training_ms']:8.3f} ms  forward {row['forward_ms']:8.3f} ms")  # fmt: skip
        cudnn = rows[-1]
        for row in rows[-len(variants) : -1]:
            print(f"   {row['variant']:16s} cudnn ÷ it: training {cudnn['training_ms'] / row['training_ms']:.3f}, "
                  f"forward {cudnn['forward_ms'] / row['forward_ms']:.3f}")  # fmt: skip
        if not bidirectional:
            best = min(rows[-len(variants) : -1], key=lambda row: row["training_ms"])
            best_env = f"LSTM_JAX_BPTT_INPUT={best['input']} LSTM_JAX_BPTT_UNROLL={best['unroll']}\n"
            Path(args.out, f"best_B{B}.env").write_text(best_env)
    Path(args.out, "bptt_variants.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
