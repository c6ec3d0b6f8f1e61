"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4), generated.

Each example is T steps of two features: a value drawn uniformly from [0, 1] and a marker that is 1 at exactly two
steps, one in the first half and one in the second half of the sequence (the variant of Le, Jaitly & Hinton 2015
and Arjovsky, Shah & Bengio 2016). The target is the sum of the two marked values, read from the last step's output.
Predicting the constant 1 scores the variance of a sum of two uniforms, 2/12 = 1/6 ≈ 0.167: the baseline a model
must beat, which needs the marked value from T/2 or more steps back. An LSTM gets below 0.01 at T = 200; an Elman
RNN's gradient vanishes over that span and it stays near 1/6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from ._errors import ConfigError
from ._task import Batch, Defaults, SequenceModel, Task, mean_squared_error

TEST_SEED = 0xADD
"""The test set is the same 1000 sequences whatever ``--seed`` (its draws use a seed of its own)."""
TEST_SIZE = 1000
BASELINE_MSE = 1.0 / 6.0


def adding_batch(rng: np.random.Generator, batch: int, seq_len: int) -> Batch:
    """``{"x": (B, T, 2) float32 [value, marker], "y": (B,) float32 sum of the two marked values}``.

    >>> import numpy as np
    >>> from lstm_jax.train._adding import adding_batch
    >>> data = adding_batch(np.random.default_rng(0), 3, 10)
    >>> data["x"].shape, bool(np.all(data["x"][..., 1].sum(axis=1) == 2))
    ((3, 10, 2), True)
    >>> bool(np.allclose((data["x"][..., 0] * data["x"][..., 1]).sum(axis=1), data["y"]))
    True
    """
    B, T = batch, seq_len
    values = rng.uniform(0.0, 1.0, (B, T))
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    rows = np.arange(B)
    markers = np.zeros((B, T))
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return {"x": np.stack([values, markers], axis=-1).astype(np.float32), "y": targets.astype(np.float32)}


class Adding(Task):
    name = "adding"
    description = "the adding problem at T=--seq-len (generated); test MSE vs the 1/6 of predicting 1"
    defaults = Defaults(steps=2000, hidden=64, lr=3e-3, batch=64, seq_len=200, eval_every=100)
    headline = "test_mse"

    def __init__(self, config):
        super().__init__(config)
        if config.seq_len < 2:
            raise ConfigError(
                f"--seq-len must be ≥ 2 for the adding problem (one marker per half), got {config.seq_len}"
            )
        self._test = adding_batch(np.random.default_rng(TEST_SEED), TEST_SIZE, config.seq_len)

    def model(self, rngs: nnx.Rngs) -> SequenceModel:
        c = self.config
        return SequenceModel(c.cell, 2, c.hidden, 1, num_layers=c.layers, dropout=c.dropout, rngs=rngs)

    def loss(self, model, batch):
        predictions = model(batch["x"], last=True)[:, 0]
        return mean_squared_error(predictions, batch["y"]), {}

    def train_batch(self, step: int) -> Batch:
        return adding_batch(np.random.default_rng([self.config.seed, step]), self.config.batch, self.config.seq_len)

    def eval_batch(self) -> Batch:
        return self._test

    @property
    def loss_baseline(self) -> float:
        return BASELINE_MSE

    def report(self, model, out: Path | None) -> dict[str, Any]:
        model.eval()
        predictions = np.asarray(model(self._test["x"], last=True)[:, 0])
        targets = self._test["y"]
        return {
            "test_mse": float(np.mean((predictions - targets) ** 2)),
            "baseline_mse": float(np.mean((1.0 - targets) ** 2)),
            "seq_len": self.config.seq_len,
        }
