"""lstm_jax.train: the pure steps (functional core and NNX), their compilation, dropout keys, the tasks' data and
the command line's errors. Checkpoints and resume are in test_train_resume.py, devices in test_train_parallel.py."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lstm_jax
from lstm_jax.train import (
    TASKS,
    ConfigError,
    SequenceModel,
    TrainConfig,
    add_arguments,
    data_parallel,
    default_optimizer,
    from_nnx,
    init_state,
    make_eval_step,
    make_train_step,
    resolve,
    run,
)

ROOT = Path(__file__).resolve().parents[1]
# A few-second adding run: every flag the tests below vary is set explicitly.
TINY = ["--steps", "12", "--seq-len", "6", "--hidden", "8", "--batch", "8", "--no-progress", "--eval-every", "4"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def regression_data(key, T=7, B=4, I=3):
    k_x, k_y = jax.random.split(key)
    return {"x": jax.random.normal(k_x, (B, T, I)), "y": jax.random.normal(k_y, (B,))}


def functional_loss(params, batch, key):
    """An LSTM (time-major functional core) with a linear read-out of the last hidden state."""
    _, state = lstm_jax.lstm(params["rnn"], batch["x"], batch_first=True)
    predictions = state.h[-1] @ params["head"]["kernel"] + params["head"]["bias"][None, :]
    return jnp.mean((predictions[:, 0] - batch["y"]) ** 2), {"mean_prediction": jnp.mean(predictions)}


class Regressor(nnx.Module):
    def __init__(self, rnn_params, head, *, dropout=0.0, rngs=None):
        self.rnn = lstm_jax.LSTM.from_params(rnn_params, batch_first=True)
        self.head = nnx.Linear(head["kernel"].shape[0], 1, rngs=nnx.Rngs(0))
        self.head.kernel[...] = head["kernel"]
        self.head.bias[...] = head["bias"]

    def __call__(self, xs):
        _, state = self.rnn(xs)
        return self.head(state.h[-1])[:, 0]


def nnx_loss(model, batch):
    predictions = model(batch["x"])
    return jnp.mean((predictions - batch["y"]) ** 2), {"mean_prediction": jnp.mean(predictions)}


def initial_params(key, I=3, H=5):
    k_rnn, k_head = jax.random.split(key)
    return {
        "rnn": lstm_jax.init_lstm(k_rnn, I, H, num_layers=2),
        "head": {"kernel": 0.3 * jax.random.normal(k_head, (H, 1)), "bias": jnp.full((1,), 0.1)},
    }


def test_default_optimizer_is_clip_then_adamw():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([30.0, 40.0])}  # global norm 50, clipped to 1
    expected = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.1, weight_decay=0.01))
    ours = default_optimizer(0.1, weight_decay=0.01)
    got, _ = ours.update(grads, ours.init(params), params)
    want, _ = expected.update(grads, expected.init(params), params)
    np.testing.assert_array_equal(got["w"], want["w"])


def test_train_step_metrics_are_loss_and_gradient_norm():
    params = initial_params(jax.random.key(0))
    batch = regression_data(jax.random.key(1))
    optimizer = default_optimizer(1e-2)
    state, metrics = make_train_step(functional_loss, optimizer, donate=False)(
        init_state(params, optimizer), batch, jax.random.key(2)
    )
    (loss, aux), grads = jax.value_and_grad(functional_loss, has_aux=True)(params, batch, None)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
    np.testing.assert_allclose(metrics["mean_prediction"], aux["mean_prediction"], rtol=1e-6)
    assert int(state.step) == 1


@pytest.mark.parametrize("parallel", [False, True], ids=["plain-jit", "mesh"])
def test_train_step_compiles_once(parallel):
    traces = []

    def loss_fn(params, batch, key):
        traces.append(1)  # runs only while tracing
        return functional_loss(params, batch, key)

    mesh = data_parallel(1) if parallel else None
    optimizer = default_optimizer(1e-2)
    step = make_train_step(loss_fn, optimizer, parallel=mesh)
    state = init_state(initial_params(jax.random.key(0)), optimizer)
    if mesh is not None:
        state = mesh.replicate(state)
    key = jax.random.key(3)
    for i in range(4):
        batch = regression_data(jax.random.key(10 + i))
        state, _ = step(state, mesh.shard_batch(jax.device_get(batch)) if mesh else batch, key)
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert int(state.step) == 4


def test_nnx_and_functional_steps_train_identically(tol):
    """The NNX path (from_nnx) and the functional path give the same losses and parameters, step after step."""
    params = initial_params(jax.random.key(0))
    optimizer = default_optimizer(3e-2, weight_decay=1e-3)
    model = Regressor(params["rnn"], params["head"])
    nnx_params, pure_nnx_loss, merge = from_nnx(model, nnx_loss)
    # No donation: the two states start from the very same arrays.
    functional_step = make_train_step(functional_loss, optimizer, donate=False)
    nnx_step = make_train_step(pure_nnx_loss, optimizer, donate=False)
    state_f, state_n = init_state(params, optimizer), init_state(nnx_params, optimizer)
    key = jax.random.key(5)
    for i in range(3):
        batch = regression_data(jax.random.key(20 + i))
        state_f, metrics_f = functional_step(state_f, batch, key)
        state_n, metrics_n = nnx_step(state_n, batch, key)
        np.testing.assert_allclose(metrics_n["loss"], metrics_f["loss"], **tol["float32"])
        np.testing.assert_allclose(metrics_n["grad_norm"], metrics_f["grad_norm"], **tol["float32_grad"])
    trained = merge(state_n.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, **tol["float32_grad"]), trained.rnn.weights, state_f.params["rnn"]
    )
    evaluate = make_eval_step(pure_nnx_loss)
    batch = regression_data(jax.random.key(99))
    np.testing.assert_allclose(
        evaluate(state_n.params, batch)["loss"], functional_loss(state_f.params, batch, None)[0], **tol["float32_grad"]
    )


def test_dropout_keys_follow_the_step():
    """Training draws dropout masks from fold_in(key, step): same step, same loss; another step, another mask;
    evaluation has no dropout."""
    model = SequenceModel("lstm", 3, 16, 1, num_layers=2, dropout=0.5, rngs=nnx.Rngs(params=0, dropout=0))

    def loss_fn(model, batch):
        return jnp.mean(model(batch["x"], last=True) ** 2), {}

    params, pure_loss, _ = from_nnx(model, loss_fn)
    batch = regression_data(jax.random.key(1))
    optimizer = optax.sgd(0.0)  # parameters stay put: only the dropout masks change
    step = make_train_step(pure_loss, optimizer, donate=False)
    state = init_state(params, optimizer)
    key = jax.random.key(7)
    _, first = step(state, batch, key)
    _, again = step(state, batch, key)
    later_state, _ = step(state, batch, key)
    _, later = step(later_state, batch, key)
    assert float(first["loss"]) == float(again["loss"])
    assert float(first["loss"]) != float(later["loss"])
    evaluate = make_eval_step(pure_loss)
    model.eval()
    deterministic = float(loss_fn(model, batch)[0])
    assert float(evaluate(params, batch)["loss"]) == pytest.approx(deterministic, rel=1e-6)
    assert deterministic not in (float(first["loss"]), float(later["loss"]))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_data_is_a_function_of_seed_and_step(name):
    config = resolve(TrainConfig(name, batch=8, seed=3))
    task = TASKS[name](config)
    first, again, other = task.train_batch(5), task.train_batch(5), task.train_batch(6)
    assert first.keys() == again.keys() == {"x", "y"}
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert first[key].shape[0] == 8
    assert not np.array_equal(first["x"], other["x"])
    reseeded = TASKS[name](resolve(TrainConfig(name, batch=8, seed=4))).train_batch(5)
    assert not np.array_equal(first["x"], reseeded["x"])
    eval_batch = task.eval_batch()
    assert eval_batch["x"].shape[1:] == first["x"].shape[1:]


def test_adding_baseline_is_one_sixth():
    task = TASKS["adding"](resolve(TrainConfig("adding")))
    targets = task.eval_batch()["y"]
    assert np.mean((targets - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.015)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_charlm_cell_sampler_matches_the_module(cell):
    """Greedy text from the single-step cells is what the sequence module predicts for that same text."""
    task = TASKS["charlm"](resolve(TrainConfig("charlm", cell=cell, hidden=16, layers=2)))
    model = task.model(nnx.Rngs(params=0, dropout=0))
    model.eval()
    prompt = task.encode("The ")
    from lstm_jax.train._charlm import sample

    tokens = np.asarray(sample(model, prompt, 12, jax.random.key(0), temperature=0.0))
    text = np.concatenate([prompt, tokens])[None, :]
    predicted = np.asarray(jnp.argmax(model(text[:, :-1]), axis=-1))[0, len(prompt) - 1 :]
    np.testing.assert_array_equal(predicted, tokens)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope"], r"unknown task 'nope'; choose one of: adding, digits, co2, charlm"),
        (["adding", "--lr", "-0.1"], r"--lr must be > 0, got -0.1"),
        (["adding", "--lr", "nan"], r"--lr must be a finite number > 0, got nan"),
        (["adding", "--steps", "0"], r"--steps must be a positive integer, got 0"),
        (["adding", "--hidden", "-3"], r"--hidden must be a positive integer, got -3"),
        (["adding", "--batch", "0"], r"--batch must be a positive integer, got 0"),
        (["adding", "--dropout", "1.0"], r"--dropout must be in \[0, 1\), got 1.0"),
        (["adding", "--weight-decay", "-1"], r"--weight-decay must be ≥ 0, got -1.0"),
        (["adding", "--cell", "transformer"], r"unknown --cell 'transformer'; choose one of: lstm, gru, rnn"),
        (["adding", "--seq-len", "1"], r"--seq-len must be ≥ 2 for the adding problem"),
        (["digits", "--seq-len", "20"], r"--seq-len does not apply to task 'digits'"),
        (["adding", "--keep", "1"], r"--keep must be an integer ≥ 2"),
        (["adding", "--resume"], r"--resume needs --ckpt-dir"),
        (["adding", "--devices", "99"], r"--devices must be an int in \[1, \d+\] \(the devices JAX sees\), got 99"),
    ],
)
def test_invalid_configuration_is_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        run(parse(*argv))


def test_resume_from_a_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume: checkpoint directory .*missing does not exist"):
        run(parse("adding", *TINY, "--ckpt-dir", str(tmp_path / "missing"), "--resume"))


def test_run_writes_metrics_figure_and_summary(tmp_path, capsys):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    assert run(parse("adding", *TINY, "--out", str(out), "--ckpt-dir", str(ckpt), "--ckpt-every", "5")) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("train adding cell=lstm steps=12 test_mse=")
    sha = summary.rsplit("params_sha256=", 1)[1]
    assert len(sha) == 64 and int(sha, 16) >= 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert {"loss", "grad_norm", "tokens_per_s"} <= train[-1].keys() and train[-1]["tokens_per_s"] > 0
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8, 12]
    assert records[-1]["kind"] == "final" and records[-1]["params_sha256"] == sha
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in ckpt.iterdir()) == ["10", "12", "5"]

    # The same directory without --resume would mix two runs: refused. With other hyperparameters: refused.
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(latest step 12\); pass --resume"):
        run(parse("adding", *TINY, "--ckpt-dir", str(ckpt)))
    with pytest.raises(ConfigError, match=r"written with --hidden 8; this run has --hidden 9"):
        run(parse("adding", *TINY[:4], "--hidden", "9", *TINY[6:], "--ckpt-dir", str(ckpt), "--resume"))
    with pytest.raises(ConfigError, match=r"--steps 10 is behind the checkpoint .* \(step 12\)"):
        run(parse("adding", "--steps", "10", *TINY[2:], "--ckpt-dir", str(ckpt), "--resume"))


def test_command_line_errors_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "lstm_jax.train", "nope"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 2
    assert "error: unknown task 'nope'" in done.stderr
