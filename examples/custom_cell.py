"""Write a new recurrent cell and get layers, directions, variable lengths, dropout and BPTT for free.

The cell is the Minimal Gated Unit (Zhou, Wu, Zhang & Zhou 2016), a GRU with a single forget gate:

    f  = σ(x W_xf + h W_hf + b_f)
    h̃  = tanh(x W_xh + (f ⊙ h) W_hh + b_h)
    h' = (1 − f) ⊙ h + f ⊙ h̃

It is trained on the adding problem (Hochreiter & Schmidhuber 1997): the target is the sum of the two numbers
marked in a sequence of random numbers; always answering the mean scores MSE 1/6 ≈ 0.167.

    python examples/custom_cell.py [--steps 800]
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import optax

import lstm_jax


# --- the cell: the whole of what lstm_jax needs -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MGUCell:
    hidden_size: int

    def init(self, key, input_size, dtype=jnp.float32):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        return dict(
            w_x=jax.nn.initializers.lecun_normal()(k_x, (input_size, 2 * H), dtype),  # [f | h̃] input kernels
            w_hf=jax.nn.initializers.orthogonal()(k_h, (H, H), dtype),
            w_hh=jax.nn.initializers.orthogonal()(jax.random.fold_in(k_h, 1), (H, H), dtype),
            b=jnp.zeros((2 * H,), dtype),
        )

    def initial_carry(self, weights, batch, dtype):
        return jnp.zeros((batch, weights["w_hh"].shape[0]), dtype)

    def step(self, weights, h, x):
        z_f, z_h = jnp.split(lstm_jax.matmul(x, weights["w_x"]) + weights["b"][None], 2, axis=-1)
        f = jax.nn.sigmoid(z_f + lstm_jax.matmul(h, weights["w_hf"]))
        candidate = jnp.tanh(z_h + lstm_jax.matmul(f * h, weights["w_hh"]))
        h = (1.0 - f) * h + f * candidate
        return h, h


# ------------------------------------------------------------------------------------------------------------


def adding_problem(key, batch, length):
    """(T, B, 2) inputs — a uniform number and a 0/1 marker, two markers per sequence — and (B,) targets."""
    k_values, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_values, (length, batch))
    first = jax.random.randint(k_first, (batch,), 0, length // 2)
    second = jax.random.randint(k_second, (batch,), length // 2, length)
    markers = jax.nn.one_hot(first, length).T + jax.nn.one_hot(second, length).T
    return jnp.stack([values, markers], axis=-1), jnp.sum(values * markers, axis=0)


def train(steps=800, length=30, batch=64, hidden=32, seed=0):
    """Trains a one-layer MGU plus a linear read-out; returns the test MSE."""
    cell = MGUCell(hidden)
    key_params, key_head, key_data = jax.random.split(jax.random.key(seed), 3)
    params = {
        "rnn": lstm_jax.init_cell(cell, key_params, input_size=2),
        "head": jax.random.normal(key_head, (hidden,)) / jnp.sqrt(hidden),
    }
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
    opt_state = optimizer.init(params)

    def loss_fn(params, xs, targets):
        _, h_n = lstm_jax.scan_cell(cell, params["rnn"], xs)
        return jnp.mean((h_n[-1] @ params["head"] - targets) ** 2)

    @jax.jit
    def train_step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, *adding_problem(key, batch, length))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for step in range(steps):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(key_data, step))
        if step % 100 == 0:
            print(f"step {step:4d}  train MSE {float(loss):.4f}")
    test_mse = float(loss_fn(params, *adding_problem(jax.random.key(seed + 1), 1000, length)))
    print(f"test MSE {test_mse:.4f} after {steps} steps (predicting the mean: {1 / 6:.4f})")
    return test_mse


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--length", type=int, default=30)
    args = parser.parse_args()
    train(steps=args.steps, length=args.length)
