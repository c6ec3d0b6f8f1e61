"""Truncated backprop through time: run a long stream chunk by chunk, carrying the state forward but not the
gradient (Williams & Peng 1990; the "stateful" training of language models).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._typing import Array


def truncated_bptt(
    apply: Callable[[Any, Array, Any], tuple[Array, Any]],
    params: Any,
    xs: Array,
    initial_state: Any = None,
    *,
    chunk_size: int,
) -> tuple[Array, Any]:
    """Runs ``apply`` over a (T, B, I) stream in chunks of ``chunk_size`` steps with ``stop_gradient`` between them.

    The forward pass equals ``apply(params, xs, initial_state)`` exactly — the state is carried across chunk
    boundaries — while ``jax.grad`` sees each chunk as starting from a constant state, so backprop reaches at most
    ``chunk_size`` steps back and memory grows with ``chunk_size``, not with T. The chunks run inside one
    ``lax.scan`` (one compilation for any number of chunks); a last, shorter chunk runs after it.

    Args:
      apply: ``apply(params, xs_chunk, state) -> (ys_chunk, state)``, e.g. :func:`lstm_jax.lstm`, or a closure
        over it that fixes keyword arguments.
      params: passed through to ``apply``.
      xs: (T, B, I) time-major stream.
      initial_state: the state before the stream (None: ``apply``'s default, zeros). To continue a stream across
        calls ("stateful"), pass the state this function returned for the previous part.
      chunk_size: steps per chunk (k in TBPTT(k)), ≥ 1.

    Returns:
      ``(ys, final_state)`` as ``apply`` over the whole stream would return.

    >>> import jax, lstm_jax
    >>> params = lstm_jax.init_lstm(jax.random.key(0), 3, 8)
    >>> xs = jax.random.normal(jax.random.key(1), (100, 2, 3))
    >>> ys, state = lstm_jax.truncated_bptt(lstm_jax.lstm, params, xs, chunk_size=32)
    >>> ys.shape
    (100, 2, 8)
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    xs = jnp.asarray(xs)
    if xs.ndim < 1 or xs.shape[0] == 0:
        raise ValueError(f"xs must be a (T, B, I) stream with T ≥ 1, got shape {xs.shape}")
    steps = xs.shape[0]
    outputs = []
    state = initial_state
    start = 0
    if state is None:
        # The state's structure comes from apply itself: run the first chunk outside the scan.
        ys, state = apply(params, xs[:chunk_size], None)
        outputs.append(ys)
        start = min(chunk_size, steps)
    num_full = (steps - start) // chunk_size
    if num_full:
        chunks = xs[start : start + num_full * chunk_size]
        chunks = chunks.reshape(num_full, chunk_size, *xs.shape[1:])

        def one_chunk(state, chunk):
            ys, state = apply(params, chunk, jax.lax.stop_gradient(state))
            return state, ys

        state, ys = jax.lax.scan(one_chunk, state, chunks)
        outputs.append(ys.reshape(num_full * chunk_size, *ys.shape[2:]))
        start += num_full * chunk_size
    if start < steps:
        ys, state = apply(params, xs[start:], jax.lax.stop_gradient(state))
        outputs.append(ys)
    return jnp.concatenate(outputs, axis=0), state
