"""Shape notation and array aliases used throughout lstm_jax.

Every shape in a docstring or signature uses these letters:

    T  time steps (sequence length)
    B  batch
    I  input features
    H  hidden size (the cell state's width)
    P  projected size of h (``proj_size``; P = H when there is no projection)
    G  gates per cell (4 for LSTM: i, f, g, o; 3 for GRU: r, z, n; 1 for RNN)
    D  directions (1, or 2 when bidirectional)
    L  layers

Arrays are plain ``jax.Array``; the aliases below only document the expected shape.
"""

from typing import Any, TypeAlias

import jax

Array: TypeAlias = jax.Array
PRNGKey: TypeAlias = jax.Array
# Anything jnp.asarray accepts: jax/numpy arrays, nested lists.
ArrayLike: TypeAlias = Any
DType: TypeAlias = Any
