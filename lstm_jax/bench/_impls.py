"""The registry of LSTM implementations the throughput benchmark compares.

An :class:`Implementation` turns a :class:`Problem` (sizes and dtype) and a mode (``"forward"``: inference, or
``"training"``: ``value_and_grad`` of a loss on every output, with respect to every parameter) into a
:class:`Step`: a zero-argument closure that runs one call and blocks on its result, plus the compile time and
XLA's memory analysis where there is a compiler. ``--impls`` picks implementations by name from
:data:`REGISTRY`.

Registered today:

* ``lstm_jax:<path>``, one per :class:`lstm_jax.Impl` path of :func:`lstm_jax.lstm` (``lstm_jax:kernel``, the
  default: the fused CPU kernel, ``bptt`` off the CPU; ``lstm_jax:bptt``, the hand-written backward pass;
  ``lstm_jax:scan``, ``jax.grad`` of ``lax.scan``; ...); a new path
  is registered as soon as the enum has it (``lstm_jax:cudnn`` runs on a GPU only: elsewhere that path is
  ``bptt``). ``--impls lstm_jax`` selects them all.
* ``flax``: Flax NNX ``RNN(OptimizedLSTMCell)``, one per layer (an ``nnx.Bidirectional`` pair of them when
  bidirectional), called through ``nnx.split``/``nnx.merge``.
* ``torch``: ``torch.nn.LSTM`` (needs torch installed; on CUDA when torch sees a GPU).
* ``cudnn``: ``jax.experimental.rnn.lstm``, cuDNN's fused LSTM (needs jax's default backend to be ``gpu``).

Other implementations are one :func:`register` call each (``lstm_jax_path`` for anything with
:func:`lstm_jax.lstm`'s signature).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax
from lstm_jax import _cudnn

MODES = ("forward", "training")
"""``forward``: one inference call. ``training``: loss and gradients with respect to all parameters."""


class Problem(NamedTuple):
    """One benchmark point: an L-layer LSTM, unidirectional or bidirectional (D = 2 directions per layer, their
    outputs concatenated), over (T, B, I) inputs of the given dtype. ``bidirectional`` comes last, so that
    ``problem[:5]`` is (T, B, I, H, L)."""

    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int
    dtype: str
    bidirectional: bool = False


@dataclasses.dataclass(frozen=True)
class Step:
    """A ready-to-time call.

    Attributes:
      call: runs one forward or training call and blocks until its results are computed.
      compile_s: tracing, lowering and XLA compilation time, seconds; None where nothing is compiled (torch).
      memory: XLA's memory analysis of the compiled computation (``temp_bytes``, ``argument_bytes``,
        ``output_bytes``, ``peak_bytes``); None without XLA.
    """

    call: Callable[[], Any]
    compile_s: float | None = None
    memory: dict[str, int | None] | None = None


@dataclasses.dataclass(frozen=True)
class Implementation:
    """A named implementation.

    Attributes:
      name: what ``--impls`` and the tables call it.
      description: one line for the JSON and the table captions.
      build: ``(problem, mode) -> Step``; builds the model and inputs and compiles.
      unavailable: ``() -> reason or None``; a reason (missing package, wrong backend) skips the implementation
        with that message instead of failing the run.
      peer: True for the implementations lstm_jax is compared against (ratio columns are per peer).
      default: run when no ``--impls`` are given; the ``cell:*`` variants run only when asked for (``--cell``).
    """

    name: str
    description: str
    build: Callable[[Problem, str], Step]
    unavailable: Callable[[], str | None] = lambda: None
    peer: bool = True
    default: bool = True


REGISTRY: dict[str, Implementation] = {}


def register(impl: Implementation) -> Implementation:
    """Adds ``impl`` to :data:`REGISTRY` under its name (in registration order, which is the table order)."""
    if impl.name in REGISTRY:
        raise ValueError(f"an implementation named {impl.name!r} is already registered")
    REGISTRY[impl.name] = impl
    return impl


def inputs(problem: Problem) -> np.ndarray:
    """The same standard-normal (T, B, I) float32 inputs for every implementation of a problem."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((problem.seq_len, problem.batch, problem.input_size), dtype=np.float32)


def _loss(ys: jax.Array) -> jax.Array:
    # Mean square of every output, accumulated in float32, so the backward pass runs through the whole sequence.
    return jnp.mean(jnp.square(ys.astype(jnp.float32)))


def _memory(compiled) -> dict[str, int | None] | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # backends without a memory analysis
        return None
    if stats is None:
        return None
    return {
        "temp_bytes": stats.temp_size_in_bytes,
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "peak_bytes": getattr(stats, "peak_memory_in_bytes", None),
    }


def jax_step(apply: Callable[[Any, jax.Array], jax.Array], params: Any, xs: jax.Array, mode: str) -> Step:
    """Compiles ``apply(params, xs) -> ys`` (``forward``) or ``value_and_grad`` of the loss on ys with respect to
    params (``training``) ahead of time, so the compile time is measured apart from every timed call."""
    fn = apply if mode == "forward" else jax.value_and_grad(lambda p, x: _loss(apply(p, x)))
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(params, xs).compile()
    compile_s = time.perf_counter() - start

    def call():
        return jax.block_until_ready(compiled(params, xs))

    return Step(call=call, compile_s=compile_s, memory=_memory(compiled))


# --- lstm_jax -------------------------------------------------------------------------------------------------


def lstm_jax_path(
    name: str, apply: Callable[..., Any], description: str, unavailable: Callable[[], str | None] = lambda: None
) -> Implementation:
    """An lstm_jax implementation: ``apply(params, xs)`` with :func:`lstm_jax.lstm`'s signature and return value,
    over params from :func:`lstm_jax.init_lstm`."""

    return Implementation(
        name=name,
        description=description,
        build=_library_build(lstm_jax.init_lstm, apply),
        unavailable=unavailable,
        peer=False,
    )


def _library_build(
    init: Callable[..., Any], apply: Callable[..., Any], **init_kwargs
) -> Callable[[Problem, str], Step]:
    """``build`` for a function of this library: params from ``init`` at the problem's sizes, ``apply(params, xs)``
    returning ``(ys, state)``."""

    def build(problem: Problem, mode: str) -> Step:
        kwargs = dict(init_kwargs)
        if kwargs.get("proj_size") == "half":
            kwargs["proj_size"] = max(1, problem.hidden_size // 2)
        params = init(
            jax.random.key(0),
            problem.input_size,
            problem.hidden_size,
            num_layers=problem.num_layers,
            bidirectional=problem.bidirectional,
            dtype=jnp.dtype(problem.dtype),
            **kwargs,
        )
        xs = jnp.asarray(inputs(problem), problem.dtype)
        return jax_step(lambda p, x: apply(p, x)[0], params, xs, mode)

    return build


def _lstm_jax_paths() -> list[lstm_jax.Impl]:
    """Every path of :class:`lstm_jax.Impl`, the one :func:`lstm_jax.lstm` uses by default first."""
    default = lstm_jax.Impl(inspect.signature(lstm_jax.lstm).parameters["impl"].default)
    return sorted(lstm_jax.Impl, key=lambda path: path is not default)


def _cudnn_unavailable() -> str | None:
    # The same conditions as lstm_jax's own cuDNN path (lstm_jax._cudnn).
    available, why = _cudnn.status()
    return None if available else why


# One implementation per path, so a new path is benchmarked as soon as the enum has it.
for _path in _lstm_jax_paths():
    register(
        lstm_jax_path(
            f"lstm_jax:{_path.value}",
            functools.partial(lstm_jax.lstm, impl=_path),
            f"lstm_jax.lstm(impl={_path.value!r})",
            # Off a GPU, impl="cudnn" would run the bptt path again under another name.
            unavailable=_cudnn_unavailable if _path is lstm_jax.Impl.CUDNN else lambda: None,
        )
    )
del _path


# --- Flax -----------------------------------------------------------------------------------------------------


def _build_flax(problem: Problem, mode: str) -> Step:
    from flax import nnx

    directions = 2 if problem.bidirectional else 1

    class Stack(nnx.Module):
        """L layers of ``nnx.RNN(OptimizedLSTMCell)``, or of ``nnx.Bidirectional`` pairs of them, time-major."""

        def __init__(self, rngs: nnx.Rngs):
            dtype = jnp.dtype(problem.dtype)
            widths = [problem.input_size] + [directions * problem.hidden_size] * (problem.num_layers - 1)

            def rnn(width: int, reverse: bool = False) -> nnx.RNN:
                cell = nnx.OptimizedLSTMCell(width, problem.hidden_size, dtype=dtype, rngs=rngs)
                return nnx.RNN(cell, time_major=True, reverse=reverse, keep_order=reverse, rngs=False)

            def layer(width: int) -> nnx.Module:
                if not problem.bidirectional:
                    return rnn(width)
                # Bidirectional passes its own time_major to both RNNs and concatenates [forward, backward].
                return nnx.Bidirectional(rnn(width), rnn(width, reverse=True), time_major=True, rngs=False)

            self.layers = nnx.List([layer(width) for width in widths])

        def __call__(self, xs):
            _, batch, _ = xs.shape
            zeros = jnp.zeros((batch, problem.hidden_size), xs.dtype)
            carry = (zeros, zeros)  # OptimizedLSTMCell's carry is (c, h)
            for layer in self.layers:
                xs = layer(xs, initial_carry=(carry, carry) if problem.bidirectional else carry)
            return xs

    # Split once and merge inside the compiled function: the functional NNX pattern, which keeps NNX's Python
    # graph bookkeeping out of the timed calls.
    graphdef, params = nnx.split(Stack(nnx.Rngs(0)))
    # Drawn in float32 (the orthogonal initialiser has no low-precision QR), stored in the benchmark's dtype.
    params = jax.tree.map(lambda p: p.astype(problem.dtype), params)
    xs = jnp.asarray(inputs(problem), problem.dtype)
    return jax_step(lambda p, x: nnx.merge(graphdef, p)(x), params, xs, mode)


register(Implementation("flax", "Flax NNX RNN(OptimizedLSTMCell), one per layer", _build_flax))


# --- PyTorch --------------------------------------------------------------------------------------------------


def _torch_unavailable() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'lstm_jax[bench]')"
    if jax.default_backend() == "gpu" and not torch.cuda.is_available():
        # The bench extra pins a CPU build of torch: timing it on the CPU beside jax on the GPU compares machines.
        return "jax runs on the GPU but torch sees none (a CPU build?): install a CUDA build of torch to compare them"
    return None


def _build_torch(problem: Problem, mode: str) -> Step:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, problem.dtype)
    torch.manual_seed(0)
    model = torch.nn.LSTM(
        problem.input_size, problem.hidden_size, num_layers=problem.num_layers, bidirectional=problem.bidirectional
    )
    model = model.to(device=device, dtype=dtype)
    xs = torch.from_numpy(inputs(problem)).to(device=device, dtype=dtype)
    params = list(model.parameters())
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    if mode == "forward":

        def call():
            with torch.inference_mode():
                ys, _ = model(xs)
            synchronize()
            return ys

    else:

        def call():
            ys, _ = model(xs)
            loss = ys.float().square().mean()
            grads = torch.autograd.grad(loss, params)
            synchronize()
            return loss, grads

    return Step(call=call)


register(Implementation("torch", "torch.nn.LSTM", _build_torch, unavailable=_torch_unavailable))


# --- cuDNN through jax.experimental.rnn ----------------------------------------------------------------------


def _build_cudnn(problem: Problem, mode: str) -> Step:
    from jax.experimental import rnn

    T, B, I, H, L = problem[:5]
    D = 2 if problem.bidirectional else 1
    dtype = jnp.dtype(problem.dtype)
    weights = rnn.init_lstm_weight(jax.random.key(0), I, H, L, problem.bidirectional).astype(dtype)
    # cuDNN takes batch-major inputs and explicit initial states (one per layer and direction) and lengths.
    xs = jnp.asarray(inputs(problem).transpose(1, 0, 2), dtype)
    zeros = jnp.zeros((L * D, B, H), dtype)
    lengths = jnp.full((B,), T, jnp.int32)
    apply = functools.partial(
        rnn.lstm, input_size=I, hidden_size=H, num_layers=L, dropout=0.0, bidirectional=problem.bidirectional
    )
    return jax_step(lambda w, x: apply(x, zeros, zeros, w, lengths)[0], weights, xs, mode)


register(Implementation("cudnn", "jax.experimental.rnn.lstm (cuDNN)", _build_cudnn, unavailable=_cudnn_unavailable))


# --- cell variants (--cell) ----------------------------------------------------------------------------------

CELLS: dict[str, tuple[str, Callable[..., Any], dict[str, Any], dict[str, Any]]] = {
    # name: (description, function, init keyword arguments, call keyword arguments)
    "lstm": ("plain LSTM (the baseline of the cost column)", lstm_jax.lstm, {}, {}),
    "peephole": ("peephole LSTM (Gers & Schmidhuber 2000)", lstm_jax.lstm, {"peephole": True}, {}),
    "layernorm": ("layer-normalised LSTM (Ba et al. 2016)", lstm_jax.lstm, {"layer_norm": True}, {}),
    "projected": ("LSTMP, proj_size = H/2 (Sak et al. 2014)", lstm_jax.lstm, {"proj_size": "half"}, {}),
    "variational": (
        "variational dropout 0.25 on inputs and h (Gal & Ghahramani 2016)",
        lstm_jax.lstm,
        {},
        {"input_dropout": 0.25, "recurrent_dropout": 0.25},
    ),
    "zoneout": ("zoneout (0.1, 0.05) (Krueger et al. 2017)", lstm_jax.lstm, {}, {"zoneout": (0.1, 0.05)}),
    "weightdrop": ("DropConnect 0.5 on W_hh (Merity et al. 2018)", lstm_jax.lstm, {}, {"weight_dropout": 0.5}),
    "bf16": ("bf16 matmuls, f32 accumulation and state", lstm_jax.lstm, {}, {"matmul_dtype": jnp.bfloat16}),
    "gru": ("GRU", lstm_jax.gru, {}, {}),
    "rnn": ("Elman RNN (tanh)", lstm_jax.rnn, {}, {}),
}
"""The cells ``--cell`` benchmarks as ``cell:<name>``, each against ``cell:lstm`` in the same run. Regularised
cells run with a fixed PRNG key in both modes: their cost is that of training-mode calls."""

_INITS = {lstm_jax.lstm: lstm_jax.init_lstm, lstm_jax.gru: lstm_jax.init_gru, lstm_jax.rnn: lstm_jax.init_rnn}


def _cell_implementation(name: str) -> Implementation:
    description, apply, init_kwargs, call_kwargs = CELLS[name]
    regularized = any(k.endswith("dropout") or k == "zoneout" for k in call_kwargs)

    def apply_cell(params, xs):
        # The key is made while tracing (a constant of the compiled call), not when this module is imported.
        return apply(params, xs, **call_kwargs, **({"key": jax.random.key(1)} if regularized else {}))

    build = _library_build(_INITS[apply], apply_cell, **init_kwargs)
    return Implementation(name=f"cell:{name}", description=description, build=build, peer=False, default=False)


for _name in CELLS:
    register(_cell_implementation(_name))
del _name


def resolve(names: list[str] | tuple[str, ...] | None) -> tuple[list[Implementation], dict[str, str]]:
    """The registered implementations to run, in registry order, and ``{name: reason}`` for the skipped ones.

    Args:
      names: requested names; a family name (the part before ``:``, e.g. ``lstm_jax``) selects every
        implementation of the family. None for every registered implementation with ``default`` set.

    Raises:
      ValueError: for a name that matches no registered implementation.
    """

    def matches(requested: str, name: str) -> bool:
        return name == requested or name.split(":")[0] == requested

    unknown = [n for n in names or () if not any(matches(n, name) for name in REGISTRY)]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; registered: {list(REGISTRY)}")
    chosen, skipped = [], {}
    for name, impl in REGISTRY.items():
        if (names is None and not impl.default) or (names is not None and not any(matches(n, name) for n in names)):
            continue
        reason = impl.unavailable()
        if reason is None:
            chosen.append(impl)
        else:
            skipped[name] = reason
    return chosen, skipped
