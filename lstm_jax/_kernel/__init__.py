"""The fused CPU kernel: the ``Impl.KERNEL`` path of :mod:`lstm_jax._driver`.

A plain float32 LSTM layer (one direction, or both of a bidirectional layer at once) runs as one XLA FFI call into
``lstm_cpu.cc``: the time loop, the per-step matmuls and the gate maths in C++, on threads that live for the whole
sequence (the file's header says why XLA:CPU's own loop is slower). The backward pass is a second call that runs the
reverse loop (dz_t, dh_{t-1}, and the weight gradients accumulated step by step); its maths is the ``Impl.BPTT``
path's (:mod:`lstm_jax._bptt`).

The kernel is compiled from source on first use with the system's C++ compiler (``$CXX``, else ``c++``), for the
machine it runs on (``-march=native``), and cached in ``$LSTM_JAX_CACHE`` (default ``~/.cache/lstm_jax``). Where
it cannot be built or does not apply — no compiler, a non-CPU default backend, float64 or bf16 kernels, projections,
peepholes, layer norm — the driver runs the ``Impl.BPTT`` path instead; :func:`status` says which and why.
``LSTM_JAX_KERNEL=0`` turns the kernel off. Its register tiles follow the CPU: blocks of 16 hidden units with
AVX-512, else 8 (:func:`units`); ``LSTM_JAX_KERNEL_UNITS=8`` or ``16`` builds either on any x86-64 CPU, which is how
the tests check the AVX-512 tiling on a machine without it (16-float vectors then take two AVX registers each,
several times slower: a test setting, not a tuning knob).

More environment variables tune it: ``LSTM_JAX_KERNEL_INPUT_STEPS`` (time steps per block of its input-side
work; see :func:`_input_steps`), ``LSTM_JAX_KERNEL_GRADIENT_STEPS`` (time steps per weight-gradient update of the
backward pass; see :func:`_gradient_steps`) and ``LSTM_JAX_KERNEL_HUGE_PAGES=1``, which asks Linux for transparent
huge pages for outputs of 2 MiB and more (the saved activations, which XLA allocates afresh for every call). Off by
default: on the benchmark machine, a VM, huge pages made a third or more of the timed training calls 1.3-1.7x
slower (``lstm_cpu.cc``, ``prefault``, says why and what they save). Such outputs, where fresh, are mapped in
before they are written (``MADV_POPULATE_WRITE``) in any case.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._bptt import _as_mask
from .._cells import LSTMState
from .._params import LSTMWeights, is_plain_float32_lstm, same_shapes
from .._typing import Array

SOURCE = Path(__file__).with_name("lstm_cpu.cc")
_TARGETS = {"lstm_jax_forward": "LstmJaxForward", "lstm_jax_backward": "LstmJaxBackward"}
_lock = threading.Lock()
_status: tuple[bool, str] | None = None
_library: ctypes.CDLL | None = None  # the loaded kernel, once status() has built it


def _cache_dir() -> Path:
    if "LSTM_JAX_CACHE" in os.environ:
        return Path(os.environ["LSTM_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm_jax"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: a library built on one CPU may not run on another sharing the cache."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor() + platform.machine()


def _units_flags() -> list[str]:
    """The build's tile width, from ``$LSTM_JAX_KERNEL_UNITS``: unset or empty lets the source choose by the CPU."""
    units = os.environ.get("LSTM_JAX_KERNEL_UNITS", "")
    if units == "":
        return []
    if units not in ("8", "16"):
        raise ValueError(f"LSTM_JAX_KERNEL_UNITS must be 8 or 16 (hidden units per block), not {units!r}")
    return [f"-DLSTM_JAX_UNITS={units}"]


def _compile(compiler: str) -> Path:
    flags = ["-O3", "-march=native", *_units_flags(), "-std=c++17", "-shared", "-fPIC", "-pthread"]
    flags.append(f"-I{jax.ffi.include_dir()}")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(
        "\n".join([SOURCE.read_text(), " ".join(flags), version, jax.__version__, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    library = _cache_dir() / f"lstm_cpu-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: another process may be building or loading the same file.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build {SOURCE.name}:\n{result.stderr[-2000:]}")
        os.replace(built, library)
    return library


def _load() -> tuple[bool, str]:
    if os.environ.get("LSTM_JAX_KERNEL", "1") == "0":
        return False, "turned off by LSTM_JAX_KERNEL=0"
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        return False, f"no C++ compiler found ({os.environ.get('CXX', 'c++')!r}; set CXX)"
    try:
        library = ctypes.CDLL(str(_compile(compiler)))
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
        return False, f"the kernel could not be built: {error}"
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    global _library
    _library = library
    return True, f"built with {compiler} (blocks of {library.LstmJaxUnits()} hidden units), loaded from {library._name}"


def status() -> tuple[bool, str]:
    """``(available, why)``: whether the kernel is built and registered with XLA (building it on first call)."""
    global _status
    with _lock:
        if _status is None:
            _status = _load()
        return _status


def units() -> int | None:
    """Hidden units per block of the built kernel, its register tiles' vector width: 16 where the CPU has
    AVX-512, else 8, unless ``$LSTM_JAX_KERNEL_UNITS`` (8 or 16) says otherwise; None where it is not available."""
    return _library.LstmJaxUnits() if status()[0] else None


def available() -> bool:
    """Whether the kernel can run here: built, and JAX's default backend is the CPU it was built for."""
    return jax.default_backend() == "cpu" and status()[0]


def supports(weights: Any, carry: Any, xs: Any) -> bool:
    """Whether this path runs a direction with ``weights``: a plain float32 LSTM, float32 state and inputs."""
    return is_plain_float32_lstm(weights, carry, xs) and available()


def supports_bidirectional(forward: Any, backward: Any, carries: Any, xs: Any) -> bool:
    """Whether both directions of a layer run in one call: both supported, with weights of one shape."""
    return supports(forward, carries[0], xs) and supports(backward, carries[1], xs) and same_shapes(forward, backward)


def _threads() -> int:
    """Threads per kernel call: the CPUs this process may use, shared among the CPU devices XLA runs in parallel
    (``--xla_force_host_platform_device_count``), whose kernel calls would otherwise fight over the cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, jax.local_device_count("cpu")))


def _input_steps() -> int:
    """Time steps per block of the forward's x·W_ih part (``$LSTM_JAX_KERNEL_INPUT_STEPS``); 0, the default, lets
    the kernel choose: one step where a thread's weights fit half its core's L2, else blocks of ~128 rows."""
    return int(os.environ.get("LSTM_JAX_KERNEL_INPUT_STEPS", "0"))


def _gradient_steps() -> int:
    """Time steps per weight-gradient update of the backward pass (``$LSTM_JAX_KERNEL_GRADIENT_STEPS``); 0, the
    default, lets the kernel choose: every step where a thread's gradient panels fit half its core's L2, else every
    4 steps, over their rows at once."""
    return int(os.environ.get("LSTM_JAX_KERNEL_GRADIENT_STEPS", "0"))


def _call(target: str, outputs, *args, reverse_bits: int, masked: bool, **attributes):
    available, why = status()
    if not available:
        raise RuntimeError(f"the lstm_jax CPU kernel is not available: {why}")
    call = jax.ffi.ffi_call(target, outputs, vmap_method="sequential")
    return call(*args, reverse_bits=np.int64(reverse_bits), masked=masked, threads=np.int64(_threads()), **attributes)


def _two(per_direction):
    """The kernel's two weight operands of one kind: both directions', or the one direction's twice (the same
    buffer; the kernel reads only the first)."""
    return per_direction if len(per_direction) == 2 else (per_direction[0], per_direction[0])


def _forward(w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths, reverse_bits, masked, save):
    D, T, (B, H) = len(w_ih), xs.shape[0], h0.shape[1:]
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    saved = (T, B, H) if save else (0, 0, 0)
    outputs = (
        f32((T, B, D * H)),
        f32((D, B, H)),
        f32((D, B, H)),
        f32((D, *saved)),
        f32((D, *saved[:2], 4 * saved[2])),
    )
    return _call(
        "lstm_jax_forward", outputs, xs, *_two(w_ih), *_two(w_hh), *_two(b_ih), *_two(b_hh), h0, c0, lengths,
        reverse_bits=reverse_bits, masked=masked, input_steps=np.int64(_input_steps()),
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _layer(w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths, reverse_bits, masked):
    """D directions over xs (T, B, I); weights are tuples of D arrays, (I, 4H), (H, 4H), (4H,) and (4H,), states
    (D, B, H); bit d of ``reverse_bits`` runs direction d from t = T-1 down. Returns ys (T, B, D·H), direction d in
    columns d·H to (d+1)·H, and h_T, c_T (D, B, H).

    The two biases go in apart and their (equal) gradients come out apart: summed in XLA before the call, the add
    alone took ~90 us of a one-layer T = 16 inference call of 1.8 ms (XLA dispatches it as an operation of its own),
    and one gradient returned for both cost XLA a copy at the end of the training step."""
    ys, h, c, _, _ = _forward(w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths, reverse_bits, masked, save=False)
    return ys, h, c


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Wanted:
    """Which gradients the backward pass must form: known in the forward pass from what is being differentiated
    (``symbolic_zeros``), carried to the backward as static residual data."""

    inputs: bool
    weights: bool
    state: bool


def _perturbed(*primals) -> bool:
    return any(primal.perturbed for primal in jax.tree.leaves(primals, is_leaf=lambda p: hasattr(p, "perturbed")))


def _value(primal):
    return jax.tree.map(lambda p: p.value, primal, is_leaf=lambda p: hasattr(p, "perturbed"))


def _layer_fwd(w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths, reverse_bits, masked):
    wanted = _Wanted(inputs=_perturbed(xs), weights=_perturbed(w_ih, w_hh, b_ih, b_hh), state=_perturbed(h0, c0))
    w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths = (_value(p) for p in (w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths))
    ys, h, c, cs, acts = _forward(w_ih, w_hh, b_ih, b_hh, h0, c0, xs, lengths, reverse_bits, masked, save=True)
    return (ys, h, c), (w_ih, w_hh, h0, c0, xs, lengths, ys, cs, acts, wanted)


def _dense(cotangent):
    if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
        return jnp.zeros(cotangent.shape, cotangent.dtype)
    return cotangent


def _layer_bwd(reverse_bits, masked, residuals, cotangents):
    w_ih, w_hh, h0, c0, xs, lengths, ys, cs, acts, wanted = residuals
    d_ys, d_h, d_c = (_dense(cotangent) for cotangent in cotangents)
    D, T, B, H = cs.shape
    I = xs.shape[-1]
    steps = jnp.arange(T, dtype=jnp.int32)
    if masked:  # outputs were constant zeros at invalid steps: their cotangents must not reach the state
        valid = (steps[:, None] < lengths[None, :])[:, :, None]
        d_ys = jnp.where(valid, d_ys, jnp.zeros_like(d_ys))
    # An empty output tells the kernel that gradient is not wanted: it skips its share of the work. The weight
    # gradients come one output per direction, the second empty for one direction.
    shapes = [(D, T, B, I) if wanted.inputs else (D, 0, 0, 0)]
    for shape in ((I, 4 * H), (H, 4 * H), (4 * H,), (4 * H,)):
        shapes += [shape if wanted.weights and d < D else (0,) * len(shape) for d in range(2)]
    shapes += [(D, B, H), (D, B, H)]
    d_xs, *d_weights, dh0, dc0 = _call(
        "lstm_jax_backward", tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes),
        xs, *_two(w_ih), *_two(w_hh), h0, c0, ys, cs, acts, d_ys, d_h, d_c, lengths,
        reverse_bits=reverse_bits, masked=masked, gradient_steps=np.int64(_gradient_steps()),
    )  # fmt: skip
    d_w_ih, d_w_hh, d_b_ih, d_b_hh = (tuple(d_weights[2 * kind : 2 * kind + D]) for kind in range(4))
    if wanted.inputs:
        # An add, not jnp.sum over the direction axis: XLA:CPU lowers that reduction to a kernel that ran at ~2 GB/s
        # (5 % of a bidirectional training step in perf).
        d_xs = d_xs[0] if D == 1 else d_xs[0] + d_xs[1]
    d_lengths = np.zeros(lengths.shape, dtype=jax.dtypes.float0)
    return (
        d_w_ih if wanted.weights else None,
        d_w_hh if wanted.weights else None,
        d_b_ih if wanted.weights else None,
        d_b_hh if wanted.weights else None,
        dh0 if wanted.state else None,
        dc0 if wanted.state else None,
        d_xs if wanted.inputs else None,
        d_lengths,
    )


_layer.defvjp(_layer_fwd, _layer_bwd, symbolic_zeros=True)


def _run(weights, carries, xs, lengths, reverse_bits):
    """The layer over xs: ys (T, B, D·H) with the directions side by side, h_T and c_T (D, B, H)."""
    masked, lengths = _as_mask(lengths, xs)
    return _layer(
        tuple(w.w_ih for w in weights),
        tuple(w.w_hh for w in weights),
        tuple(w.b_ih for w in weights),
        tuple(w.b_hh for w in weights),
        jnp.stack([carry.h for carry in carries]),
        jnp.stack([carry.c for carry in carries]),
        xs,
        lengths,
        reverse_bits,
        masked,
    )


def lstm_direction(
    weights: LSTMWeights, carry: LSTMState, xs: Array, *, lengths: Array | None = None, reverse: bool = False
) -> tuple[LSTMState, Array]:
    """One direction of one plain LSTM layer in the fused kernel: ``(state, ys)``.

    Same contract as ``scan_direction(partial(lstm_cell, weights), carry, xs, lengths=..., reverse=...)``.
    """
    ys, h, c = _run((weights,), (carry,), xs, lengths, int(reverse))
    return LSTMState(h[0], c[0]), ys


def lstm_bidirectional(
    weights: tuple[LSTMWeights, LSTMWeights],
    carries: tuple[LSTMState, LSTMState],
    xs: Array,
    *,
    lengths: Array | None = None,
) -> tuple[tuple[LSTMState, LSTMState], tuple[Array, Array]]:
    """Both directions of one plain LSTM layer in one kernel call, each on its own threads, reading the same xs:
    ``((final_fw, final_bw), (ys_fw, ys_bw))``, the same results as two :func:`lstm_direction` calls."""
    ys, h, c = _run(tuple(weights), tuple(carries), xs, lengths, 0b10)
    H = h.shape[-1]
    # The driver concatenates the two halves again, which XLA folds back into ys: no copy is made.
    return (LSTMState(h[0], c[0]), LSTMState(h[1], c[1])), (ys[..., :H], ys[..., H:])
