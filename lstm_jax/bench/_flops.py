"""The benchmark suite's one flop formula: matmul flops of a stacked recurrent network over a sequence.

Counting convention (nanoGPT's ``estimate_mfu``; Kaplan et al. 2020): only matrix multiplies count, two flops per
multiply-add. The element-wise gate maths (σ, tanh, ⊙) is O(T·B·G·H) against the matmuls' O(T·B·G·H·(I + H)) and
is left out, so the achieved rate compares directly with the machine's measured matmul peak.

Every step of layer l and direction d (D directions: 1, or 2 when bidirectional; input width I_l: I for the first
layer, D·H above it, where the directions' outputs are concatenated) computes the G gates' pre-activations with
``x_t W_ih`` (B×I_l by I_l×GH) and ``h_{t-1} W_hh`` (B×H by H×GH); where the input projection happens (inside the
loop or hoisted out of it as one big matmul), and whether the directions run as separate matmuls or as one batched
matmul, does not change the count. For T steps::

    forward  = D · Σ_l 2·T·B·(I_l + H)·G·H
    backward = D · Σ_l 2·T·B·(I_l + H)·G·H               weight gradients ∂W_ih, ∂W_hh
             + D · Σ_l 2·T·B·(I_l·[l > 0] + H)·G·H       input gradients ∂x_t (not needed for the data, l = 0), ∂h_{t-1}
    training = forward + backward

so a training step is a little under three forward passes (the "6N flops per token" of language-model
accounting). ``tests/test_bench_flops.py`` checks the formula against the ``dot_general`` operations in the jaxpr
of :func:`lstm_jax.lstm` and of its ``jax.value_and_grad``.
"""

from __future__ import annotations

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
"""G, the gate blocks each kernel computes at once (i, f, g, o; r, z, n; the single Elman pre-activation)."""


def recurrent_flops(
    seq_len: int,
    batch: int,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    cell: str = "lstm",
    training: bool = False,
    bidirectional: bool = False,
) -> int:
    """Matmul flops of one call of a stacked recurrent network (see the module docstring).

    Args:
      seq_len: T.
      batch: B.
      input_size: I, the first layer's input width.
      hidden_size: H.
      num_layers: L.
      cell: ``"lstm"``, ``"gru"`` or ``"rnn"``; sets G.
      training: count the forward pass plus the backward pass of a gradient with respect to the parameters
        (``jax.value_and_grad``, ``torch.autograd.grad``); otherwise the forward pass alone.
      bidirectional: two directions per layer (D = 2), each layer above the first reading both directions' outputs.

    Returns:
      The flop count, an exact integer.

    >>> recurrent_flops(seq_len=10, batch=2, input_size=3, hidden_size=5)  # 2·10·2·(3 + 5)·4·5
    6400
    >>> recurrent_flops(10, 2, 3, 5, training=True)  # forward, weight gradients, ∂h only (layer 0's ∂x is not needed)
    16800
    >>> recurrent_flops(10, 2, 3, 5, num_layers=2, bidirectional=True)  # 2 · 2·10·2·4·5 · ((3 + 5) + (2·5 + 5))
    36800
    """
    directions = 2 if bidirectional else 1
    gates = GATES[cell]
    widths = [input_size] + [directions * hidden_size] * (num_layers - 1)
    # Flops of a (B, n) @ (n, G·H) matmul per unit of n, in every direction.
    per_step = directions * 2 * batch * gates * hidden_size
    forward = sum(per_step * (width + hidden_size) for width in widths)
    if not training:
        return seq_len * forward
    weight_grads = forward
    input_grads = sum(per_step * ((width if layer > 0 else 0) + hidden_size) for layer, width in enumerate(widths))
    return seq_len * (forward + weight_grads + input_grads)


def matmul_flops(m: int, k: int, n: int) -> int:
    """Flops of an (m, k) @ (k, n) matmul, 2·m·k·n; the peak measurement uses it.

    >>> matmul_flops(2048, 2048, 2048) / 1e9
    17.179869184
    """
    return 2 * m * k * n
