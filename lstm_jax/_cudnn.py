"""cuDNN's fused LSTM on the GPU: the ``Impl.CUDNN`` path of :mod:`lstm_jax._driver`.

One layer — one direction, or both directions of a bidirectional layer — runs as one cuDNN call forward and one
backward (data and weight gradients together), through the cuDNN custom calls of ``jax.experimental.rnn``. It is not
the default on a GPU: on an H100 at B = 32, I = H = 256 the ``Impl.BPTT`` path (XLA's loop) trained 1.3–1.9× and
ran inference 1.05–1.5× faster than cuDNN (README, GPU table). What this module adds around jax's binding:

* **Layouts.** jax lowers the cuDNN calls without layout constraints, so XLA may hand them a transposed array in a
  transposed layout instead of copying it — and cuDNN, which reads plain row-major memory, computes on the wrong
  elements (seen on an H100 with jax 0.11.2: time-major inputs transposed to cuDNN's batch-major order inside
  ``jax.jit`` gave wrong outputs from the second batch row on). The calls here are lowered by jax's own lowering
  rules with every operand and result pinned to the row-major layout, which makes XLA copy where it must.
* **Weights.** The library's :class:`~lstm_jax.LSTMWeights` (kernels (I, 4H) and (H, 4H), gate blocks i, f, g, o)
  are packed into cuDNN's flat vector inside the traced function — per direction W_ih (4H, I) and W_hh (4H, H)
  row-major, then per direction b_ih and b_hh (the layout ``jax.experimental.rnn`` documents, PyTorch's gate
  order) — so the gradients come back in the library's layout through XLA's slicing, and nothing is cached.
* **The other paths' semantics.** Time-major inputs; lengths outside [1, T] behave as if clipped to [0, T]:
  cuDNN takes lengths in [1, T] only, so a sequence of length ≤ 0 runs one step there and its outputs and final
  state are replaced by zeros and the initial state.
* **``jax.vmap``.** The cuDNN calls have no batching rule. Each is wrapped in ``jax.custom_batching.sequential_vmap``
  (a loop over the mapped axis) *inside* a ``custom_vjp`` of our own, so reverse-mode autodiff, which cannot see
  through ``sequential_vmap``, never meets it.

Float32 only (jax's binding takes no other dtype; bf16 matmuls run the ``Impl.BPTT`` path). The matmul precision
follows ``jax_default_matmul_precision`` as XLA's own GPU dots do: cuDNN may use TF32 tensor cores unless it asks
for ``"float32"``/``"highest"``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.extend.mlir import ir
from jax.interpreters import mlir

from ._cells import LSTMState
from ._params import LSTMWeights, is_plain_float32_lstm, same_shapes
from ._typing import Array

try:
    from jax.experimental import rnn as _rnn
except ImportError:  # a jax without the module: status() says so
    _rnn = None

# What this module takes from jax.experimental.rnn: the shapes of the calls' results and jax's lowering rules.
_NEEDED = ("rnn_abstract_eval", "rnn_bwd_abstract_eval", "_lstm_cudnn_allow_tf32", "gpu_rnn")
_LOWERINGS = {"cuda": ("cudnn_rnn_lowering", "cudnn_rnn_bwd_lowering"),
              "rocm": ("miopen_rnn_lowering", "miopen_rnn_bwd_lowering")}  # fmt: skip


def _row_major(values) -> ir.ArrayAttr:
    """The default (row-major) layout of each value, as the minor-to-major dimension lists of a custom call."""
    return ir.ArrayAttr.get(
        [
            ir.DenseIntElementsAttr.get(np.arange(value.type.rank - 1, -1, -1, dtype=np.int64), type=ir.IndexType.get())
            for value in values
        ]
    )


def row_major_lowering(lowering):
    """``lowering`` (a rule that emits one custom call) with the call's operands and results pinned to row-major
    layouts, so that XLA copies a transposed operand instead of passing it in a transposed layout."""

    def lower(ctx, *args, **params):
        results = lowering(ctx, *args, **params)
        call = results[0].owner
        call.attributes["operand_layouts"] = _row_major(call.operands)
        call.attributes["result_layouts"] = _row_major(call.results)
        return results

    return lower


def _primitive(name: str, abstract_eval) -> jax.extend.core.Primitive:
    primitive = jax.extend.core.Primitive(name)
    primitive.multiple_results = True
    primitive.def_abstract_eval(abstract_eval)
    # Only ever bound under jit (_layer_jit), where the lowering below applies; eagerly it would need an impl rule.
    return primitive


_forward_p = _backward_p = None
if _rnn is not None and all(getattr(_rnn, name, None) is not None for name in _NEEDED):
    _forward_p = _primitive("lstm_jax_cudnn_lstm_forward", _rnn.rnn_abstract_eval)
    _backward_p = _primitive("lstm_jax_cudnn_lstm_backward", _rnn.rnn_bwd_abstract_eval)
    for _platform, (_fwd_name, _bwd_name) in _LOWERINGS.items():
        if hasattr(_rnn.gpu_rnn, _fwd_name) and hasattr(_rnn.gpu_rnn, _bwd_name):
            mlir.register_lowering(_forward_p, row_major_lowering(getattr(_rnn.gpu_rnn, _fwd_name)), _platform)
            mlir.register_lowering(_backward_p, row_major_lowering(getattr(_rnn.gpu_rnn, _bwd_name)), _platform)


def status() -> tuple[bool, str]:
    """``(available, why)``: whether this process can run cuDNN's LSTM, and the reason when it cannot."""
    backend = jax.default_backend()
    if backend != "gpu":
        return False, f"cuDNN's LSTM needs jax's default backend to be 'gpu'; here it is {backend!r}"
    if _forward_p is None:
        missing = [name for name in _NEEDED if _rnn is None or getattr(_rnn, name, None) is None]
        return False, f"this jax has no cuDNN LSTM binding (jax.experimental.rnn lacks {', '.join(missing)})"
    return True, "cuDNN's LSTM through jax.experimental.rnn"


def available() -> bool:
    return status()[0]


def supports(weights: Any, carry: Any, xs: Any) -> bool:
    """Whether this path runs a direction with ``weights``: a plain float32 LSTM, float32 state and inputs."""
    return is_plain_float32_lstm(weights, carry, xs) and available()


def supports_bidirectional(forward: Any, backward: Any, carries: Any, xs: Any) -> bool:
    """Whether both directions of a layer run in one cuDNN call: both supported, with weights of one shape."""
    return supports(forward, carries[0], xs) and supports(backward, carries[1], xs) and same_shapes(forward, backward)


def pack(weights: Sequence[LSTMWeights]) -> Array:
    """cuDNN's flat weight vector of one layer (one or two directions, in that order)."""
    kernels = [k.T.reshape(-1) for w in weights for k in (w.w_ih, w.w_hh)]
    biases = [b for w in weights for b in (w.b_ih, w.b_hh)]
    return jnp.concatenate(kernels + biases)


def _options(x: Array, h0: Array, bidirectional: bool) -> dict[str, Any]:
    return dict(
        input_size=x.shape[-1],
        hidden_size=h0.shape[-1],
        num_layers=1,
        dropout=0.0,
        bidirectional=bidirectional,
        # None: the precision jax_default_matmul_precision asks for, read when tracing.
        cudnn_allow_tf32=_rnn._lstm_cudnn_allow_tf32(None),
    )


def _forward(x, h0, c0, w, lengths, bidirectional):
    y, h, c, reserve = _forward_p.bind(x, h0, c0, w, lengths, **_options(x, h0, bidirectional))
    return (y, h, c), (x, h0, c0, w, lengths, y, reserve)


def _backward(bidirectional, residuals, cotangents):
    x, h0, c0, w, lengths, y, reserve = residuals
    return _backward_p.bind(*cotangents, x, h0, c0, w, y, reserve, lengths, **_options(x, h0, bidirectional))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _layer(x, h0, c0, w, lengths, bidirectional):
    """cuDNN's LSTM layer, (B, T, I) → ((B, T, D·H), h_n, c_n); vmaps as a loop, differentiates with cuDNN."""
    return jax.custom_batching.sequential_vmap(lambda *args: _forward(*args, bidirectional)[0])(x, h0, c0, w, lengths)


def _layer_fwd(x, h0, c0, w, lengths, bidirectional):
    return jax.custom_batching.sequential_vmap(lambda *args: _forward(*args, bidirectional))(x, h0, c0, w, lengths)


def _layer_bwd(bidirectional, residuals, cotangents):
    def backward(residuals, cotangents):
        return _backward(bidirectional, residuals, cotangents)

    dx, dh0, dc0, dw = jax.custom_batching.sequential_vmap(backward)(residuals, cotangents)
    return dx, dh0, dc0, dw, None


_layer.defvjp(_layer_fwd, _layer_bwd)
# Eager calls compile the layer once per shape; inside a caller's jit this one is inlined.
_layer_jit = jax.jit(_layer, static_argnums=5)


def _run(
    weights: Sequence[LSTMWeights], carries: Sequence[LSTMState], xs: Array, lengths: Array | None
) -> tuple[list[LSTMState], list[Array]]:
    T, B, _ = xs.shape
    H = weights[0].hidden_size
    D = len(weights)
    h0 = jnp.stack([carry.h for carry in carries])
    c0 = jnp.stack([carry.c for carry in carries])
    steps = jnp.full((B,), T, jnp.int32) if lengths is None else jnp.clip(lengths, 1, T).astype(jnp.int32)
    y, h, c = _layer_jit(jnp.swapaxes(xs, 0, 1), h0, c0, pack(weights), steps, D == 2)
    ys = jnp.swapaxes(y, 0, 1)
    if lengths is not None:
        # Steps past a sequence's length output zeros (cuDNN leaves them unspecified), and a sequence of length
        # ≤ 0 keeps its initial state (cuDNN ran one step of it).
        valid = jnp.arange(T)[:, None] < lengths[None, :]
        ys = jnp.where(valid[:, :, None], ys, jnp.zeros_like(ys))
        ran = (lengths > 0)[None, :, None]
        h, c = jnp.where(ran, h, h0), jnp.where(ran, c, c0)
    states = [LSTMState(h[d], c[d]) for d in range(D)]
    return states, [ys[..., d * H : (d + 1) * H] for d in range(D)]


def lstm_direction(
    weights: LSTMWeights, carry: LSTMState, xs: Array, *, lengths: Array | None = None
) -> tuple[LSTMState, Array]:
    """One forward-in-time direction of one plain LSTM layer in cuDNN: ``(state, ys)``.

    Same contract as ``scan_direction(partial(lstm_cell, weights), carry, xs, lengths=...)``.
    """
    (state,), (ys,) = _run((weights,), (carry,), xs, lengths)
    return state, ys


def lstm_bidirectional(
    weights: tuple[LSTMWeights, LSTMWeights],
    carries: tuple[LSTMState, LSTMState],
    xs: Array,
    *,
    lengths: Array | None = None,
) -> tuple[tuple[LSTMState, LSTMState], tuple[Array, Array]]:
    """Both directions of one plain LSTM layer in one cuDNN call: ``((final_fw, final_bw), (ys_fw, ys_bw))``, the
    same results as a forward and a reverse :func:`lstm_jax._driver.scan_direction`."""
    (forward, backward), (ys_fw, ys_bw) = _run(weights, carries, xs, lengths)
    return (forward, backward), (ys_fw, ys_bw)
