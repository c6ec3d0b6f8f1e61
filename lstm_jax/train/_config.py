"""A training run's configuration: one frozen value, the command-line flags that fill it, and their checks.

Every ``train`` flag is a :class:`TrainConfig` field of the same name (``--ckpt-every`` is ``ckpt_every``). Fields
left None take the task's default (:class:`~lstm_jax.train._task.Defaults`), so ``lstm-jax train adding`` alone
reproduces the recorded result.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from ._adding import Adding
from ._charlm import CharLM
from ._co2 import CO2
from ._digits import Digits
from ._errors import ConfigError
from ._task import CELLS, Task

TASKS: dict[str, type[Task]] = {task.name: task for task in (Adding, Digits, CO2, CharLM)}
"""The tasks ``train TASK`` accepts, by name."""

TRAJECTORY_FIELDS = (
    "task", "seed", "cell", "hidden", "layers", "lr", "weight_decay", "clip_norm", "batch", "dropout", "seq_len",
)  # fmt: skip
"""Fields that determine the parameters' trajectory: a resumed run must match its checkpoint's on every one."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Configuration of ``train TASK``; see ``add_arguments`` (or ``--help``) for each field."""

    task: str
    steps: int | None = None
    seed: int = 0
    cell: str = "lstm"
    hidden: int | None = None
    layers: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    clip_norm: float = 1.0
    batch: int | None = None
    dropout: float | None = None
    seq_len: int | None = None
    eval_every: int | None = None
    log_every: int = 10
    ckpt_dir: str | None = None
    ckpt_every: int | None = None
    keep: int = 3
    resume: bool = False
    out: str | None = None
    devices: int | None = None
    progress: bool = True
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def trajectory(self) -> dict:
        return {name: getattr(self, name) for name in TRAJECTORY_FIELDS}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(config: TrainConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{_flag(name)} must be a positive integer, got {value!r}")


def _number(config: TrainConfig, name: str, *, low: float, high: float = math.inf, low_open: bool, what: str):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_flag(name)} must be a finite number {what}, got {value!r}")
    if value < low or (low_open and value == low) or value >= high:
        raise ConfigError(f"{_flag(name)} must be {what}, got {value!r}")


def resolve(config: TrainConfig) -> TrainConfig:
    """Fills the task's defaults into the None fields and checks every value.

    Raises:
      ConfigError: for an unknown task or cell, an invalid hyperparameter, or ``--resume`` without ``--ckpt-dir``.

    >>> from lstm_jax.train import TrainConfig, resolve
    >>> resolve(TrainConfig("adding")).seq_len
    200
    """
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; choose one of: {', '.join(TASKS)}")
    if config.cell not in CELLS:
        raise ConfigError(f"unknown --cell {config.cell!r}; choose one of: {', '.join(CELLS)}")
    defaults = dataclasses.asdict(TASKS[config.task].defaults)
    if config.seq_len is not None and defaults["seq_len"] is None:
        raise ConfigError(f"--seq-len does not apply to task {config.task!r}: its sequences have a fixed length")
    filled = {name: defaults[name] for name in defaults if getattr(config, name) is None}
    config = dataclasses.replace(config, **filled)
    if config.ckpt_every is None:
        config = dataclasses.replace(config, ckpt_every=max(1, config.steps // 10))
    for name in ("steps", "hidden", "layers", "batch", "eval_every", "log_every", "ckpt_every"):
        _positive_int(config, name)
    if config.seq_len is not None:
        _positive_int(config, "seq_len")
    if config.devices is not None:
        _positive_int(config, "devices")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {config.seed!r}")
    if isinstance(config.keep, bool) or not isinstance(config.keep, int) or config.keep < 2:
        raise ConfigError(f"--keep must be an integer ≥ 2 (a previous checkpoint to fall back to), got {config.keep!r}")
    _number(config, "lr", low=0.0, low_open=True, what="> 0")
    _number(config, "weight_decay", low=0.0, low_open=False, what="≥ 0")
    _number(config, "clip_norm", low=0.0, low_open=True, what="> 0")
    _number(config, "dropout", low=0.0, high=1.0, low_open=False, what="in [0, 1)")
    if config.resume and config.ckpt_dir is None:
        raise ConfigError("--resume needs --ckpt-dir (the directory of the run to resume)")
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``train`` arguments (TASK and every option) to ``parser``; :func:`~lstm_jax.train.run` takes the
    parsed namespace."""
    parser.add_argument("task", metavar="TASK", help=f"one of: {', '.join(TASKS)} (described below)")
    # A group with no options, for its description: the list of tasks in --help.
    parser.add_argument_group("tasks", " ".join(f"{name}: {task.description}." for name, task in TASKS.items()))
    model = parser.add_argument_group("model and optimisation (defaults: the task's)")
    model.add_argument("--steps", type=int, metavar="N", help="optimizer steps of the whole run (a resumed run too)")
    model.add_argument("--seed", type=int, default=0, metavar="S", help="seeds init, data order, dropout (default 0)")
    model.add_argument("--cell", default="lstm", metavar="{" + ",".join(CELLS) + "}", help="recurrent cell (lstm)")
    model.add_argument("--hidden", type=int, metavar="H", help="hidden size")
    model.add_argument("--layers", type=int, metavar="L", help="stacked recurrent layers")
    model.add_argument("--lr", type=float, metavar="LR", help="AdamW learning rate")
    model.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW weight decay")
    model.add_argument("--clip-norm", type=float, default=1.0, metavar="C", help="global-norm clip (default 1.0)")
    model.add_argument("--batch", type=int, metavar="B", help="global batch size (split over the devices)")
    model.add_argument("--dropout", type=float, metavar="P", help="dropout before the head and between layers")
    model.add_argument("--seq-len", type=int, metavar="T", help="sequence length (adding, co2, charlm)")
    outputs = parser.add_argument_group("run, outputs and checkpoints")
    outputs.add_argument("--eval-every", type=int, metavar="N", help="steps between held-out evaluations")
    outputs.add_argument("--log-every", type=int, default=10, metavar="N", help="steps between metric writes (10)")
    outputs.add_argument("--out", metavar="DIR", help="write metrics.jsonl, loss.png and the task's figures here")
    outputs.add_argument("--ckpt-dir", metavar="DIR", help="save orbax checkpoints here")
    outputs.add_argument("--ckpt-every", type=int, metavar="K", help="steps between checkpoints (default steps/10)")
    outputs.add_argument("--keep", type=int, default=3, metavar="N", help="checkpoints kept (default 3, at least 2)")
    outputs.add_argument("--resume", action="store_true", help="continue from the latest good checkpoint in --ckpt-dir")
    outputs.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    devices = parser.add_argument_group("devices")
    devices.add_argument("--devices", type=int, metavar="N", help="first N devices (default all; data parallel if > 1)")
    devices.add_argument("--distributed", action="store_true", help="multi-host: jax.distributed.initialize first")
    devices.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host coordinator (if not auto-detected)")
    devices.add_argument("--num-processes", type=int, metavar="N", help="multi-host: number of processes")
    devices.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process's index")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of a namespace parsed with :func:`add_arguments` (other attributes ignored)."""
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    return TrainConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})
