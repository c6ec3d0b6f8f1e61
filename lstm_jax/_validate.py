"""Up-front checks of user input, so that a mistake raises a ValueError naming the argument and the expected vs
given shape instead of failing deep inside a scan, or worse, broadcasting into garbage.

Shapes are static under ``jit``, so every shape check also runs there. Values of ``seq_lengths`` are checked only
when they are concrete; traced lengths cannot be inspected (see :mod:`lstm_jax._driver` for what out-of-range
traced lengths do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._typing import Array, ArrayLike


def check_params(name: str, params, weights_type) -> tuple[int, int]:
    """Checks ``params[layer][direction]`` structure (and, unless ``weights_type`` is None, the weights' type);
    returns (L, D)."""
    if (
        not isinstance(params, (tuple, list))
        or not params
        or not all(isinstance(layer, (tuple, list)) and len(layer) in (1, 2) for layer in params)
    ):
        held = "weights" if weights_type is None else weights_type.__name__
        raise ValueError(
            f"params must be params[layer][direction] (a non-empty tuple of tuples of {held}, "
            f"as returned by init_{name}), got {type(params).__name__}"
        )
    num_directions = len(params[0])
    for layer in params:
        if len(layer) != num_directions:
            raise ValueError("params: every layer must have the same number of directions")
        for weights in layer:
            if weights_type is not None and not isinstance(weights, weights_type):
                raise ValueError(
                    f"params for {name} must hold {weights_type.__name__}, got {type(weights).__name__} "
                    f"(params from init_{name} or from_torch of the matching torch module)"
                )
    return len(params), num_directions


def as_time_major(xs: ArrayLike, batch_first: bool, input_size: int | None) -> Array:
    """Checks xs (and its input size, unless None) and returns it as (T, B, I)."""
    xs = jnp.asarray(xs)
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if xs.ndim != 3:
        raise ValueError(
            f"xs must have rank 3 {layout} with batch_first={batch_first}, got shape {xs.shape}; "
            "add a batch axis for a single sequence"
        )
    if input_size is not None and xs.shape[-1] != input_size:
        raise ValueError(f"xs has input size {xs.shape[-1]} (last axis), but params expect input_size={input_size}")
    if xs.shape[0] == 0 or xs.shape[1] == 0:
        raise ValueError(f"xs must have at least one time step and one sequence, got shape {xs.shape}")
    return jnp.swapaxes(xs, 0, 1) if batch_first else xs


def check_state(name: str, state: ArrayLike, expected: tuple[int, ...]) -> Array:
    state = jnp.asarray(state)
    if state.shape != expected:
        raise ValueError(f"{name} must have shape {expected} (L·D, B, features), got {state.shape}")
    return state


def check_carry(name: str, carry, expected) -> None:
    """Checks a user-given carry pytree against the expected structure and (L·D, B, ·) leaf shapes."""
    if jax.tree.structure(carry) != jax.tree.structure(expected):
        raise ValueError(
            f"{name} must have the structure of the cell's carry, {jax.tree.structure(expected)}, "
            f"got {jax.tree.structure(carry)}"
        )
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(carry), jax.tree.leaves(expected), strict=True):
        if jnp.shape(leaf) != want.shape:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} must have shape {want.shape} (L·D, B, features), "
                f"got {jnp.shape(leaf)}"
            )


def check_lengths(seq_lengths: ArrayLike | None, batch: int, steps: int) -> Array | None:
    if seq_lengths is None:
        return None
    # Read concrete values before jnp.asarray: inside jit, asarray of a tuple or numpy array is itself a tracer.
    values = None if isinstance(seq_lengths, jax.core.Tracer) else np.asarray(seq_lengths)
    lengths = jnp.asarray(seq_lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"seq_lengths must have shape (B,) = ({batch},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"seq_lengths must have an integer dtype, got {lengths.dtype}")
    if values is not None:
        if values.min() < 1 or values.max() > steps:
            raise ValueError(f"seq_lengths must lie in [1, T={steps}], got min {values.min()} and max {values.max()}")
    return lengths


def check_rate(name: str, rate) -> None:
    """The one check of a dropout-like probability (dropout, the regularisers' rates)."""
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {rate!r}")


def check_dropout(dropout: float, key) -> None:
    check_rate("dropout", dropout)
    if dropout > 0.0 and key is None:
        raise ValueError(
            f"dropout={dropout} needs a PRNG key: pass key=jax.random.key(...) (or dropout=0.0 for inference)"
        )
