"""What a training task is, and the sequence model every task trains.

A task owns its data, its loss and its report. Its training data is a pure function of ``(seed, step)``: batch
``step`` is drawn from ``np.random.default_rng([seed, step])`` (or an epoch permutation seeded by
``[seed, epoch]``), so a resumed run reads exactly the batches an uninterrupted one would, with nothing to save but
the step. Nothing is downloaded: the data is generated or ships inside an installed package.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lstm_jax

from .._typing import Array

if TYPE_CHECKING:
    from ._config import TrainConfig

CELLS = {"lstm": lstm_jax.LSTM, "gru": lstm_jax.GRU, "rnn": lstm_jax.RNN}
"""``--cell`` choices: the NNX module each selects."""

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Defaults:
    """A task's default hyperparameters: what ``lstm-jax train TASK`` uses when a flag is not given."""

    steps: int
    hidden: int
    lr: float
    batch: int
    layers: int = 1
    weight_decay: float = 1e-4
    dropout: float = 0.0
    seq_len: int | None = None  # None: the task's sequences have a fixed length
    eval_every: int = 100


class SequenceModel(nnx.Module):
    """(embedding or raw features) → recurrent stack (``--cell``) → dropout → linear head, batch-major.

    Args:
      cell: ``"lstm"``, ``"gru"`` or ``"rnn"`` (tanh Elman RNN).
      input_size: I, features per step (the embedding width when ``vocab_size`` is given).
      hidden_size: H.
      output_size: O, outputs per step.
      num_layers: L; ``dropout`` also acts between layers when L > 1.
      dropout: rate on the recurrent features before the head (and between layers), active in training mode.
      vocab_size: inputs are integer tokens embedded by an ``nnx.Embed`` when given.
      rngs: ``nnx.Rngs`` with ``params`` and ``dropout`` streams.

    ``model(xs)`` maps xs (B, T, I) (or (B, T) tokens) to outputs (B, T, O); ``model(xs, last=True)`` to (B, O)
    from the last step only.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
        vocab_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        self.cell = cell
        self.embed = nnx.Embed(vocab_size, input_size, rngs=rngs) if vocab_size is not None else None
        self.rnn = CELLS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
            rngs=rngs,
        )
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(hidden_size, output_size, rngs=rngs)

    def __call__(self, xs: Array, *, last: bool = False) -> Array:
        if self.embed is not None:
            xs = self.embed(xs)
        ys, _ = self.rnn(xs)
        if last:
            ys = ys[:, -1]
        return self.head(self.drop(ys))


class Task(abc.ABC):
    """A training task: deterministic data, a model, a loss, and a final report against a baseline.

    Subclasses set :attr:`name`, :attr:`defaults`, :attr:`loss_baseline` and implement the abstract methods.
    ``config`` is the resolved :class:`~lstm_jax.train.TrainConfig` (every hyperparameter filled in).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    defaults: ClassVar[Defaults]
    headline: ClassVar[str]
    """Name of the report's main metric, shown in the summary line first."""

    def __init__(self, config: TrainConfig):
        self.config = config

    @property
    def seq_len(self) -> int:
        """T of a training example (for tokens/s)."""
        return self.config.seq_len

    @abc.abstractmethod
    def model(self, rngs: nnx.Rngs) -> SequenceModel: ...

    @abc.abstractmethod
    def loss(self, model: SequenceModel, batch: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        """``(scalar loss, {metric: scalar})`` of ``model`` on a batch; pure, traced inside the jitted step."""

    @abc.abstractmethod
    def train_batch(self, step: int) -> Batch:
        """The host batch of training step ``step`` (0-based), a function of ``(config.seed, step)`` only."""

    @abc.abstractmethod
    def eval_batch(self) -> Batch:
        """A fixed held-out batch, evaluated every ``eval_every`` steps."""

    def data_position(self, step: int) -> dict[str, int]:
        """Where the data stream stands after ``step`` steps (saved in checkpoints, checked on resume)."""
        return {"step": step, "examples_seen": step * self.config.batch}

    @property
    def loss_baseline(self) -> float | None:
        """The training loss of the task's trivial predictor (drawn on the loss curve), or None."""
        return None

    @abc.abstractmethod
    def report(self, model: SequenceModel, out: Path | None) -> dict[str, Any]:
        """Final metrics against the task's baseline, and any figures or samples written to ``out``."""


def mean_squared_error(predictions: Array, targets: Array) -> Array:
    return jnp.mean(jnp.square(predictions - targets))


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy in nats; ``labels`` are ints of the logits' shape minus the class axis."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))


def epoch_batch(seed: int, step: int, size: int, batch: int) -> np.ndarray:
    """Indices of batch ``step`` when each epoch visits a fresh permutation of ``size`` examples (the last partial
    batch of an epoch is dropped); epoch e's permutation comes from ``default_rng([seed, e])``."""
    per_epoch = size // batch
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(size)
    return order[position * batch : (position + 1) * batch]
