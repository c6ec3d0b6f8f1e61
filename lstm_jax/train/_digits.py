"""Sequence classification of scikit-learn's ``load_digits``: 8×8 images read row by row (T = 8 steps of 8 pixels).

The 1797 images ship inside scikit-learn. A fixed stratified split holds out 20% (360 images) for the test; the
model reads the rows top to bottom and classifies from the last step's output. The baseline is the majority class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._errors import ConfigError
from ._task import Batch, Defaults, SequenceModel, Task, cross_entropy, epoch_batch

SPLIT_SEED = 0
"""The train/test split is fixed (independent of ``--seed``) so that every run is scored on the same images."""


def load_digits_split() -> tuple[Batch, Batch]:
    """``(train, test)`` dicts of ``x`` (N, 8, 8) float32 in [0, 1] (rows as time) and ``y`` (N,) int32 labels."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the digits task needs scikit-learn: pip install 'lstm_jax[examples]'") from error
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=SPLIT_SEED
    )
    return {"x": x_train, "y": y_train}, {"x": x_test, "y": y_test}


class Digits(Task):
    name = "digits"
    description = "scikit-learn's 8x8 digits read row by row; test accuracy vs the majority class"
    defaults = Defaults(steps=1500, hidden=128, lr=3e-3, batch=64, dropout=0.1, eval_every=100)
    headline = "test_accuracy"

    def __init__(self, config):
        super().__init__(config)
        self._train, self._test = load_digits_split()
        if config.batch > len(self._train["y"]):
            raise ConfigError(f"--batch {config.batch} exceeds the {len(self._train['y'])} training images")

    @property
    def seq_len(self) -> int:
        return 8

    def model(self, rngs: nnx.Rngs) -> SequenceModel:
        c = self.config
        return SequenceModel(c.cell, 8, c.hidden, 10, num_layers=c.layers, dropout=c.dropout, rngs=rngs)

    def loss(self, model, batch):
        logits = model(batch["x"], last=True)
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == batch["y"]).astype(jnp.float32))
        return cross_entropy(logits, batch["y"]), {"accuracy": accuracy}

    def train_batch(self, step: int) -> Batch:
        index = epoch_batch(self.config.seed, step, len(self._train["y"]), self.config.batch)
        return {"x": self._train["x"][index], "y": self._train["y"][index]}

    def data_position(self, step: int) -> dict[str, int]:
        epoch, position = divmod(step, len(self._train["y"]) // self.config.batch)
        return {"step": step, "epoch": epoch, "batch_in_epoch": position}

    def eval_batch(self) -> Batch:
        return self._test

    @property
    def loss_baseline(self) -> float:
        return float(np.log(10.0))

    def report(self, model, out: Path | None) -> dict[str, Any]:
        model.eval()
        predictions = np.asarray(jnp.argmax(model(self._test["x"], last=True), axis=-1))
        labels = self._test["y"]
        majority = np.bincount(self._train["y"]).argmax()
        return {
            "test_accuracy": float(np.mean(predictions == labels)),
            "baseline_accuracy": float(np.mean(labels == majority)),
            "test_errors": int(np.sum(predictions != labels)),
            "test_size": len(labels),
        }
