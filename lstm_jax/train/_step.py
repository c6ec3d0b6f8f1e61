"""Pure, jit-compiled train and eval steps on optax, for the functional core and for Flax NNX models.

A step is a pair of pure functions in optax's sense: all training state is one pytree, :class:`TrainState`
``(params, opt_state, step)``, which goes in and comes out, so a step can be checkpointed, restored and replayed
exactly. The loss is a pure function too::

    loss_fn(params, batch, key) -> (loss, aux)     # key None: evaluation, dropout off

where ``aux`` is a dict of scalar metrics (accuracy, say). For an NNX model, :func:`from_nnx` turns
``loss_fn(model, batch)`` into that form. The step's dropout key is ``fold_in(key, state.step)``: it depends only on
the run's key and the step number, so a resumed run draws the same dropout masks as an uninterrupted one.

Update rule by default (:func:`default_optimizer`): clip the global gradient norm to 1 (Pascanu, Mikolov & Bengio
2013), then AdamW (Loshchilov & Hutter 2019)::

    g ← g · min(1, c / ‖g‖₂),   params ← AdamW(params, g; lr, weight_decay)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .._typing import Array, PRNGKey
from ._parallel import DataParallel

Batch = Any
LossFn = Callable[[Any, Batch, PRNGKey | None], tuple[Array, dict[str, Array]]]
"""``loss_fn(params, batch, key) -> (scalar loss, {name: scalar})``; ``key`` is None when evaluating."""


class TrainState(NamedTuple):
    """Everything a training run changes: ``params``, optax's ``opt_state`` and ``step`` (() int32, steps done)."""

    params: Any
    opt_state: optax.OptState
    step: Array


def default_optimizer(
    learning_rate: float | optax.Schedule, *, weight_decay: float = 1e-4, clip_norm: float = 1.0
) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm(clip_norm), adamw(learning_rate, weight_decay=weight_decay))``.

    Clipping the global norm keeps the occasional exploding BPTT gradient (Pascanu et al. 2013) from wrecking a run
    without biasing the ordinary steps.

    >>> import optax
    >>> from lstm_jax.train import default_optimizer
    >>> isinstance(default_optimizer(1e-3), optax.GradientTransformation)
    True
    """
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(learning_rate, weight_decay=weight_decay))


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """The state at step 0.

    Every leaf is made strongly typed (``jnp.full((1,), 0.1)`` is weakly typed, the same array after an update is
    not), so the jitted step's outputs have its inputs' types and its second call reuses the first call's program.
    """
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), params)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    parallel: DataParallel | None = None,
    donate: bool = True,
) -> Callable[[TrainState, Batch, PRNGKey], tuple[TrainState, dict[str, Array]]]:
    """A jit-compiled ``step(state, batch, key) -> (state, metrics)``.

    The step differentiates ``loss_fn`` with the dropout key ``fold_in(key, state.step)``, applies ``optimizer``
    and returns ``metrics = {"loss", "grad_norm" (global L2 norm before clipping), **aux}`` as device scalars, so
    the caller decides when to wait for them.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, aux)``, pure.
      optimizer: an optax transformation, e.g. :func:`default_optimizer`.
      parallel: data parallelism: the batch's leading axis is sharded over ``parallel.mesh`` and the state is
        replicated; the gradient all-reduce is inserted by XLA. None: wherever the inputs are.
      donate: let XLA reuse the input state's buffers for the output (the caller must not reuse ``state``).

    Returns:
      The jitted step. It compiles once: later calls with the same shapes reuse the compiled program.

    >>> import jax, jax.numpy as jnp, lstm_jax
    >>> from lstm_jax.train import default_optimizer, init_state, make_train_step
    >>> def loss_fn(params, batch, key):
    ...     _, state = lstm_jax.lstm(params, batch["x"])
    ...     return jnp.mean((state.h[-1] - batch["y"]) ** 2), {}
    >>> params = lstm_jax.init_lstm(jax.random.key(0), 3, 4)
    >>> batch = {"x": jax.random.normal(jax.random.key(1), (6, 2, 3)), "y": jnp.zeros((2, 4))}
    >>> optimizer = default_optimizer(1e-2)
    >>> step = make_train_step(loss_fn, optimizer)
    >>> state, metrics = step(init_state(params, optimizer), batch, jax.random.key(2))
    >>> int(state.step), sorted(metrics)
    (1, ['grad_norm', 'loss'])
    """

    def step(state: TrainState, batch: Batch, key: PRNGKey) -> tuple[TrainState, dict[str, Array]]:
        step_key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(params, opt_state, state.step + 1), metrics

    donate_argnums = (0,) if donate else ()
    if parallel is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    # Pinning the output shardings to the input ones keeps the state replicated step after step, so the second call
    # finds the first call's program.
    replicated, sharded = parallel.replicated, parallel.batch_sharding
    return jax.jit(
        step,
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=donate_argnums,
    )


def make_eval_step(
    loss_fn: LossFn, *, parallel: DataParallel | None = None
) -> Callable[[Any, Batch], dict[str, Array]]:
    """A jit-compiled ``evaluate(params, batch) -> {"loss", **aux}``: ``loss_fn`` with ``key=None`` (no dropout).

    With ``parallel``, a batch whose size the device count divides is sharded like a training batch; others are
    evaluated replicated.

    >>> import jax, jax.numpy as jnp
    >>> from lstm_jax.train import make_eval_step
    >>> evaluate = make_eval_step(lambda w, batch, key: (jnp.mean((batch["x"] @ w) ** 2), {}))
    >>> float(evaluate(jnp.ones((3, 1)), {"x": jnp.ones((2, 3))})["loss"])
    9.0
    """

    def evaluate(params: Any, batch: Batch) -> dict[str, Array]:
        loss, aux = loss_fn(params, batch, None)
        return {"loss": loss, **aux}

    if parallel is None:
        return jax.jit(evaluate)
    return jax.jit(evaluate, out_shardings=parallel.replicated)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def from_nnx(
    model: nnx.Module, loss_fn: Callable[[nnx.Module, Batch], tuple[Array, dict[str, Array]]]
) -> tuple[nnx.State, LossFn, Callable[[nnx.State], nnx.Module]]:
    """Splits an NNX model into plain params and a pure loss, so the steps above train it.

    Every ``nnx.Param`` becomes a leaf of ``params`` (an ``nnx.State`` of arrays, a pytree optax and orbax take).
    The pure loss rebuilds the model from ``params`` inside the trace, then

    * with a key (training): puts the model in training mode and reseeds each of its RNG streams (the ``dropout``
      streams of :class:`lstm_jax.LSTM` and ``nnx.Dropout``) with ``fold_in(key, i)``, i the stream's index, so
      the masks are a function of the step's key alone and two streams never share a key;
    * with ``key=None`` (evaluation): puts it in eval mode (dropout off).

    Args:
      model: any NNX module.
      loss_fn: ``loss_fn(model, batch) -> (loss, aux)``.

    Returns:
      ``(params, pure_loss_fn, merge)``: ``merge(params)`` rebuilds a model (e.g. after training) for inference.

    >>> import jax, jax.numpy as jnp, lstm_jax
    >>> from flax import nnx
    >>> from lstm_jax.train import from_nnx
    >>> model = lstm_jax.LSTM(3, 4, batch_first=True, rngs=nnx.Rngs(0))
    >>> def loss_fn(model, batch):
    ...     ys, _ = model(batch["x"])
    ...     return jnp.mean(ys**2), {}
    >>> params, pure_loss, merge = from_nnx(model, loss_fn)
    >>> loss, aux = pure_loss(params, {"x": jnp.ones((2, 5, 3))}, None)
    >>> merge(params).weights[0][0].w_ih.shape
    (3, 16)
    """
    graphdef, params, rngs, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    params, rngs, rest = nnx.as_pure(params), nnx.as_pure(rngs), nnx.as_pure(rest)

    def merge(params: nnx.State) -> nnx.Module:
        return nnx.merge(graphdef, params, rngs, rest)

    def pure_loss(params: nnx.State, batch: Batch, key: PRNGKey | None) -> tuple[Array, dict[str, Array]]:
        if key is None:
            model = merge(params)
            model.eval()
            return loss_fn(model, batch)
        leaves, treedef = jax.tree.flatten(rngs)
        stream_keys = iter(range(len(leaves)))
        # Each stream restarts at count 0 from its own key: the masks depend on (key, stream) and nothing else.
        leaves = [jax.random.fold_in(key, next(stream_keys)) if _is_key(x) else jnp.zeros_like(x) for x in leaves]
        model = nnx.merge(graphdef, params, jax.tree.unflatten(treedef, leaves), rest)
        model.train()
        return loss_fn(model, batch)

    return params, pure_loss, merge
