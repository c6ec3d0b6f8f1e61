"""Data-parallel training over 4 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in a
subprocess before JAX starts): the losses match a single-device run and the batch really is split 4 ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from test_train import ROOT

SCRIPT = r"""
import json, sys
import jax
from flax import nnx
from lstm_jax.train import (
    TASKS, ConfigError, TrainConfig, data_parallel, default_optimizer, from_nnx, init_state, make_train_step, resolve,
    train,
)

out_dir = sys.argv[1]
# Two layers with dropout: the masks, too, must not depend on how the batch is split.
config = dict(task="adding", steps=8, seq_len=6, hidden=8, layers=2, dropout=0.1, batch=8, log_every=1,
              eval_every=4, progress=False)
result = {"device_count": jax.device_count()}
runs = {"one": train(TrainConfig(**config, devices=1, out=out_dir + "/one")),
        "all": train(TrainConfig(**config, out=out_dir + "/all"))}
result["devices"] = {name: run.devices for name, run in runs.items()}
result["weights"] = {name: [x.tolist() for x in jax.tree.leaves(run.model.rnn.weights)] for name, run in runs.items()}

# The batch outside the step: split along B over the 4 devices.
parallel = data_parallel()
task = TASKS["adding"](resolve(TrainConfig(**config)))
batch = parallel.shard_batch(task.train_batch(0))
result["outside"] = {
    "spec": list(batch["x"].sharding.spec),
    "shards": [[str(s.device), list(s.data.shape)] for s in batch["x"].addressable_shards],
}

# ... and inside the jitted step, as the compiled program sees it.
inside = []
def loss_fn(model, batch):
    jax.debug.inspect_array_sharding(batch["x"], callback=lambda s: inside.append(list(s.shard_shape((8, 6, 2)))))
    return task.loss(model, batch)

params, pure_loss, _ = from_nnx(task.model(nnx.Rngs(params=0, dropout=0)), loss_fn)
optimizer = default_optimizer(1e-3)
step = make_train_step(pure_loss, optimizer, parallel=parallel)
state, _ = step(parallel.replicate(init_state(params, optimizer)), batch, parallel.replicate(jax.random.key(0)))
result["inside"] = inside
result["params_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))

try:
    train(TrainConfig(**{**config, "batch": 6}))
except ConfigError as error:
    result["error"] = str(error)
print(json.dumps(result))
"""


def test_data_parallel_matches_single_device(tmp_path, tol):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device_count"] == 4
    assert result["devices"] == {"one": 1, "all": 4}
    assert "data parallel over 4 devices" in done.stderr

    # Sharded: each of the 4 devices holds 2 of the 8 sequences, outside the step and inside it.
    assert result["outside"]["spec"] == ["data"]
    assert len({device for device, _ in result["outside"]["shards"]}) == 4
    assert all(shape == [2, 6, 2] for _, shape in result["outside"]["shards"])
    assert result["inside"] and all(shape == [2, 6, 2] for shape in result["inside"])
    assert result["params_replicated"]
    assert "--batch 6 must be a multiple of the number of devices (4)" in result["error"]

    # Same losses step by step (the gradient all-reduce sums in another order: float tolerance, not bits).
    def records(name, kind):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    for kind in ("train", "eval"):
        one, four = records("one", kind), records("all", kind)
        assert [r["step"] for r in one] == [r["step"] for r in four] and one
        np.testing.assert_allclose([r["loss"] for r in four], [r["loss"] for r in one], **tol["float32"])
    for a, b in zip(result["weights"]["all"], result["weights"]["one"], strict=True):
        np.testing.assert_allclose(a, b, **tol["float32_grad"])
