"""Training for lstm_jax: pure jit-compiled steps on optax, four tasks on real data, checkpoints, many devices.

The library-level pieces, usable on their own:

* :func:`make_train_step` / :func:`make_eval_step`: a pure, jit-compiled step over a :class:`TrainState` for any
  pure ``loss_fn(params, batch, key)``; :func:`from_nnx` gives an NNX model that form. :func:`default_optimizer` is
  ``optax.chain(clip_by_global_norm(1.0), adamw(lr, weight_decay))``.
* :class:`Checkpointer`: atomic orbax checkpoints of the whole state, verified on restore, with fallback.
* :func:`data_parallel`: a ``Mesh`` over the devices that shards the batch and replicates the state.

The command ``lstm-jax train TASK`` (also ``python -m lstm_jax train`` and ``python -m lstm_jax.train``) is
:func:`add_arguments` and :func:`run`; :func:`train` runs a :class:`TrainConfig` from Python. Tasks: ``adding``,
``digits``, ``co2``, ``charlm`` (:data:`TASKS`).
"""

from ._checkpoint import Checkpointer as Checkpointer
from ._checkpoint import tree_sha256 as tree_sha256
from ._config import TASKS as TASKS
from ._config import TrainConfig as TrainConfig
from ._config import add_arguments as add_arguments
from ._config import config_from_args as config_from_args
from ._config import resolve as resolve
from ._errors import CheckpointError as CheckpointError
from ._errors import ConfigError as ConfigError
from ._errors import TrainError as TrainError
from ._loop import RunResult as RunResult
from ._loop import run as run
from ._loop import train as train
from ._parallel import DataParallel as DataParallel
from ._parallel import data_parallel as data_parallel
from ._parallel import initialize_distributed as initialize_distributed
from ._step import TrainState as TrainState
from ._step import default_optimizer as default_optimizer
from ._step import from_nnx as from_nnx
from ._step import init_state as init_state
from ._step import make_eval_step as make_eval_step
from ._step import make_train_step as make_train_step
from ._task import SequenceModel as SequenceModel
