"""The fused CPU kernel (Impl.KERNEL, lstm_jax/_kernel): that it is built and actually runs, its values and gradients
against the reference path on shapes that exercise every remainder of its tiling, its thread splits, and the
fallbacks where it does not apply. Parity with the naive reference and PyTorch is in test_impls.py (every path)."""

import concurrent.futures
import ctypes
import functools
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import random_initial_state, random_normal, random_params

import lstm_jax
from lstm_jax import _kernel


def _targets(fn, *args):
    """The FFI targets a function's jaxpr calls (forward and, under grad, backward)."""
    text = str(jax.make_jaxpr(fn)(*args))
    return {name for name in ("lstm_jax_forward", "lstm_jax_backward") if name in text}


def test_kernel_is_built_and_registered_here():
    # CI has a C++ compiler: if the build broke, every kernel test below would silently test the fallback.
    available, why = _kernel.status()
    assert available, why
    assert _kernel.available()


def _loss_and_grads(impl, params, xs, state, lengths, coefficients):
    def loss(params, xs, state):
        ys, (h_n, c_n) = lstm_jax.lstm(params, xs, state, seq_lengths=lengths, impl=impl)
        return jnp.sum(ys * coefficients) + jnp.sum(h_n**2) + jnp.sum(jnp.sin(c_n)), (ys, h_n, c_n)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)


# (T, B, I, H): B not a multiple of the tile's rows (6 with AVX-512, 3 without), and B = 13 split into tiles of
# unequal heights (6, 4, 3 rows; 3, 3, 3, 2, 2), H not a multiple of the unit block (16 units with AVX-512, 8
# without; H = 20 and 7 are neither), I + H and 4H across the 128-row chunks (the x/h boundary inside a chunk), one
# unit block only (H = 7: a second thread has nothing to do), T = 1. test_the_other_tiling_gives_the_same_results
# runs these with the other kind of CPU's tiles.
SHAPES = [(5, 5, 6, 20), (4, 6, 100, 40), (3, 1, 3, 7), (1, 4, 16, 16), (2, 13, 5, 24)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_kernel_matches_reference_path(shape, bidirectional, tol):
    T, B, I, H = shape
    rng = np.random.default_rng(sum(shape))
    params = random_params(rng, lstm_jax.init_lstm, I, H, num_layers=2, bidirectional=bidirectional)
    xs = random_normal(rng, (T, B, I))
    state = random_initial_state(rng, params, B)
    lengths = jnp.asarray(rng.integers(1, T + 1, size=B))
    D = 2 if bidirectional else 1
    coefficients = random_normal(rng, (T, B, D * H))
    assert _targets(lambda p, x, s: jax.grad(lambda p: lstm_jax.lstm(p, x, s, impl="kernel")[0].sum())(p), params,
                    xs, state) == {"lstm_jax_forward", "lstm_jax_backward"}  # fmt: skip
    for seq_lengths in (None, lengths):
        (_, got), got_grads = _loss_and_grads("kernel", params, xs, state, seq_lengths, coefficients)
        (_, want), want_grads = _loss_and_grads("scan", params, xs, state, seq_lengths, coefficients)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, **tol["float32"])
        for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
            np.testing.assert_allclose(g, w, **tol["float32_grad"])


def test_saved_activations_far_larger_than_the_caches_give_the_same_results(tol):
    """Saved activations of 21 MiB (more than four L2s of up to 4 MiB), beside a W_hh panel of 2 MiB per thread,
    are written with non-temporal stores."""
    T, B, I, H = 64, 32, 16, 512
    assert 4 * 5 * T * B * H > 4 * (4 << 20)
    rng = np.random.default_rng(11)
    # The default initialisation: random_params' larger weights make a 512-unit network amplify float32 rounding
    # over 64 steps beyond the tolerance, along any two summation orders.
    params = lstm_jax.init_lstm(jax.random.key(11), I, H)
    xs = random_normal(rng, (T, B, I))
    lengths = jnp.asarray(rng.integers(1, T + 1, size=B))
    coefficients = random_normal(rng, (T, B, H))
    for seq_lengths in (None, lengths):
        (_, got), got_grads = _loss_and_grads("kernel", params, xs, None, seq_lengths, coefficients)
        (_, want), want_grads = _loss_and_grads("scan", params, xs, None, seq_lengths, coefficients)
        for g, w in zip(jax.tree.leaves((got, got_grads)), jax.tree.leaves((want, want_grads)), strict=True):
            np.testing.assert_allclose(g, w, **tol["float32_grad"])


@pytest.mark.parametrize("threads", [1, 3])
def test_any_thread_count_gives_the_same_results(threads, monkeypatch, tol):
    """One thread runs both directions in turn; three split 4 unit blocks unevenly (and 2 directions as 2 + 1)."""
    T, B, I, H = 4, 3, 5, 64
    rng = np.random.default_rng(threads)
    params = random_params(rng, lstm_jax.init_lstm, I, H, bidirectional=True)
    xs = random_normal(rng, (T, B, I))
    lengths = jnp.array([4, 2, 1])
    coefficients = random_normal(rng, (T, B, 2 * H))
    (_, want), want_grads = _loss_and_grads("scan", params, xs, None, lengths, coefficients)
    monkeypatch.setattr(_kernel, "_threads", lambda: threads)
    (_, got), got_grads = _loss_and_grads("kernel", params, xs, None, lengths, coefficients)
    for g, w in zip(jax.tree.leaves((got, got_grads)), jax.tree.leaves((want, want_grads)), strict=True):
        np.testing.assert_allclose(g, w, **tol["float32_grad"])


# The kernel's work in blocks of several steps, each forced by its knob: the forward's x·W_ih part (done so when a
# thread's weights outgrow its L2) and the backward's weight-gradient update with ∂x (when its gradient panels
# outgrow the L2, or ∂x is formed).
BLOCKED_WORK = {"input": "_input_steps", "gradient": "_gradient_steps"}


@pytest.mark.parametrize("work", BLOCKED_WORK)
@pytest.mark.parametrize("steps", [3, 8])
def test_work_in_blocks_of_steps_gives_the_same_results(work, steps, monkeypatch, tol):
    """Blocks that do not divide T and one block longer than T, both directions, variable lengths, ∂x formed, one
    and two threads: the same values and gradients as the reference path."""
    T, B, I, H = 7, 5, 6, 40
    rng = np.random.default_rng(steps)
    params = random_params(rng, lstm_jax.init_lstm, I, H, bidirectional=True)
    xs = random_normal(rng, (T, B, I))
    lengths = jnp.array([7, 5, 1, 3, 6])
    coefficients = random_normal(rng, (T, B, 2 * H))
    (_, want), want_grads = _loss_and_grads("scan", params, xs, None, lengths, coefficients)
    monkeypatch.setattr(_kernel, BLOCKED_WORK[work], lambda: steps)
    for threads in (1, 2):
        monkeypatch.setattr(_kernel, "_threads", lambda threads=threads: threads)
        (_, got), got_grads = _loss_and_grads("kernel", params, xs, None, lengths, coefficients)
        for g, w in zip(jax.tree.leaves((got, got_grads)), jax.tree.leaves((want, want_grads)), strict=True):
            np.testing.assert_allclose(g, w, **tol["float32_grad"])


def test_concurrent_calls_and_vmap_agree_with_one_at_a_time():
    """Calls from several Python threads at once share nothing (the scratch pool hands each its own buffers), and
    jax.vmap runs the kernel once per batch element. Gradients too: a training step's forward call returns before
    its work is done, and XLA goes on with the backward call on the thread that finishes it."""
    rng = np.random.default_rng(7)
    params = random_params(rng, lstm_jax.init_lstm, 8, 24)
    batches = jnp.stack([random_normal(rng, (6, 5, 8)) for _ in range(4)])
    run = jax.jit(lambda xs: lstm_jax.lstm(params, xs)[0])
    grad = jax.jit(jax.grad(lambda p, xs: jnp.sum(jnp.sin(lstm_jax.lstm(p, xs)[0]))))
    one_at_a_time = [np.asarray(run(xs)) for xs in batches]
    grads_one_at_a_time = [grad(params, xs) for xs in batches]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda xs: np.asarray(run(xs)), batches))
        grads_together = list(pool.map(lambda xs: grad(params, xs), batches))
    vmapped = jax.jit(jax.vmap(lambda xs: lstm_jax.lstm(params, xs)[0]))(batches)
    for i, want in enumerate(one_at_a_time):
        np.testing.assert_array_equal(together[i], want)
        np.testing.assert_array_equal(vmapped[i], want)
        for g, w in zip(jax.tree.leaves(grads_together[i]), jax.tree.leaves(grads_one_at_a_time[i]), strict=True):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("call", ["forward", "backward"])
def test_inconsistent_shapes_are_an_error_not_a_crash(call):
    """The handlers check the shapes the Python side builds; a mismatch comes back as an error from the call."""
    T, B, I, H = 3, 2, 4, 5
    zeros = functools.partial(jnp.zeros, dtype=jnp.float32)
    w_ih, w_hh_wrong, b = (zeros((I, 4 * H)),), (zeros((H + 1, 4 * H)),), (zeros((4 * H,)),)
    xs, state, lengths = zeros((T, B, I)), zeros((1, B, H)), jnp.full((B,), T, jnp.int32)
    if call == "forward":
        run = lambda: _kernel._forward(w_ih, w_hh_wrong, b, b, state, state, xs, lengths, 0, False, save=True)  # noqa: E731
    else:
        ys, cs, acts = zeros((T, B, H)), zeros((1, T, B, H)), zeros((1, T, B, 4 * H))
        wanted = _kernel._Wanted(inputs=True, weights=True, state=True)
        residuals = (w_ih, w_hh_wrong, state, state, xs, lengths, ys, cs, acts, wanted)
        run = lambda: _kernel._layer_bwd(0, False, residuals, (ys, state, state))  # noqa: E731
    with pytest.raises(Exception, match="inconsistent shapes"):
        jax.block_until_ready(jax.jit(run)())


@pytest.mark.parametrize(
    "case",
    [
        dict(kwargs=dict(proj_size=3)),
        dict(kwargs=dict(peephole=True)),
        dict(dtype=jnp.float64),
        dict(matmul_dtype=jnp.bfloat16),
    ],
    ids=["projection", "peephole", "float64", "bf16"],
)
def test_falls_back_where_it_does_not_apply(case):
    with jax.enable_x64(case.get("dtype") == jnp.float64):
        rng = np.random.default_rng(3)
        params = random_params(rng, lstm_jax.init_lstm, 4, 6, **case.get("kwargs", {}))
        xs = random_normal(rng, (3, 2, 4))
        if "dtype" in case:
            params, xs = jax.tree.map(lambda a: a.astype(case["dtype"]), (params, xs))

        def run(impl):
            return lstm_jax.lstm(params, xs, impl=impl, matmul_dtype=case.get("matmul_dtype"))[0]

        assert not _targets(lambda: run("kernel"))
        np.testing.assert_array_equal(jax.jit(lambda: run("kernel"))(), jax.jit(lambda: run("bptt"))())


def _cpu_units() -> int:
    with open("/proc/cpuinfo") as cpuinfo:
        return 16 if " avx512f" in cpuinfo.read() else 8


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="tile widths are chosen for x86-64")
def test_tiles_follow_the_cpu_unless_told_otherwise():
    # -march=native: 16-float vectors on a CPU without AVX-512 take two registers each, and the tiles' accumulators
    # spilled to the stack (a training step 7x as long as torch's on an AVX2 EPYC).
    want = int(os.environ.get("LSTM_JAX_KERNEL_UNITS") or _cpu_units())
    assert _kernel.units() == want
    assert f"blocks of {want} hidden units" in _kernel.status()[1]


@pytest.mark.skipif("LSTM_JAX_KERNEL_UNITS" in os.environ, reason="runs the tests with the other tiling itself")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="tile widths are chosen for x86-64")
def test_the_other_tiling_gives_the_same_results():
    """The kernel built with the other kind of CPU's tiles (``$LSTM_JAX_KERNEL_UNITS``): on an AVX2 machine the
    AVX-512 tiling (16-unit blocks, 6-row tiles, 4-row weight-gradient tiles), in pairs of registers, and the other
    way round, through the tests of values and gradients above, in a process of its own (the build is per process)."""
    other = 24 - _cpu_units()
    # Bidirectional only: each direction's unit blocks on a thread of their own, the same tiles as one direction's
    # split between threads (which test_any_thread_count_gives_the_same_results covers, 3 threads on 4 blocks).
    groups = ["tiles_follow", "matches_reference_path", "thread_count", "blocks_of_steps"]
    tests = "tiles_follow or (matches_reference_path and bi) or thread_count or blocks_of_steps"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", __file__, "-k", tests],
        env={**os.environ, "LSTM_JAX_KERNEL_UNITS": str(other)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    # Every group ran (a renamed test would otherwise drop out of the selection silently).
    passed = [line for line in result.stdout.splitlines() if line.endswith("PASSED") or " PASSED " in line]
    for group in groups:
        assert any(group in line for line in passed), f"no {group} test ran:\n{result.stdout[-3000:]}"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="tile widths are chosen for x86-64")
@pytest.mark.parametrize("march", ["haswell", "skylake-avx512"], ids=["avx2", "avx512"])
def test_the_source_compiles_for_either_kind_of_cpu(march):
    """Each CPU compiles only its own branches (the vector width, the non-temporal stores' intrinsics): the tests
    above run the other kind's tiles, this type-checks the other kind's own code, as ``-march`` there would build it."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        pytest.skip("no C++ compiler")
    flags = ["-fsyntax-only", f"-march={march}", "-std=c++17", f"-I{jax.ffi.include_dir()}"]
    result = subprocess.run([compiler, *flags, str(_kernel.SOURCE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_an_unknown_tile_width_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("LSTM_JAX_KERNEL_UNITS", "12")
    available, why = _kernel._load()
    assert not available and "LSTM_JAX_KERNEL_UNITS must be 8 or 16" in why and "'12'" in why
    assert not list(tmp_path.glob("*.so"))


def test_unavailable_kernel_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("LSTM_JAX_KERNEL", "0")
    assert _kernel._load() == (False, "turned off by LSTM_JAX_KERNEL=0")
    monkeypatch.delenv("LSTM_JAX_KERNEL")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    available, why = _kernel._load()
    assert not available and "no C++ compiler found" in why
    monkeypatch.setenv("CXX", "false")  # found, but fails
    available, why = _kernel._load()
    assert not available and "could not be built" in why
    assert not list(tmp_path.glob("*.so"))


def test_unavailable_kernel_falls_back_to_bptt(monkeypatch):
    rng = np.random.default_rng(5)
    params = random_params(rng, lstm_jax.init_lstm, 4, 6, bidirectional=True)
    xs = random_normal(rng, (3, 2, 4))
    monkeypatch.setattr(_kernel, "_status", (False, "test"))
    assert not _targets(lambda: lstm_jax.lstm(params, xs, impl="kernel")[0])
    with pytest.raises(RuntimeError, match="kernel is not available: test"):
        zeros = jnp.zeros((2, 6))
        _kernel.lstm_direction(params[0][0], lstm_jax.LSTMState(zeros, zeros), xs)


def test_bidirectional_weights_and_outputs_are_not_stacked():
    """A bidirectional layer's call reads each direction's weights where they are and writes both directions'
    outputs side by side into one (T, B, 2H) array: no stacked (2, ·, 4H) copy of the weights is made for the call,
    none of the weight gradients is sliced out of one, and the layer's output is the kernel's own array."""
    T, B, I, H = 4, 3, 5, 16
    rng = np.random.default_rng(12)
    params = random_params(rng, lstm_jax.init_lstm, I, H, bidirectional=True)
    xs = random_normal(rng, (T, B, I))

    def loss(params):
        return jnp.sum(lstm_jax.lstm(params, xs, impl="kernel")[0] ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    for target in ("lstm_jax_forward", "lstm_jax_backward"):
        assert hlo.count(f'custom_call_target="{target}"') == 1
    for stacked in (f"f32[2,{I},{4 * H}]", f"f32[2,{H},{4 * H}]", f"f32[2,{4 * H}]"):
        assert stacked not in hlo, stacked
    assert "concatenate" not in hlo  # the driver's concatenation of the two halves folds back into ys
    weight_shapes = (f"f32[{I},{4 * H}]", f"f32[{H},{4 * H}]")
    copies = [line for line in hlo.splitlines() if " slice(" in line or " copy(" in line]
    assert not [line for line in copies if any(f"= {shape}" in line for shape in weight_shapes)], copies


@pytest.mark.parametrize("wrt", ["params", "xs", "state"])
def test_gradients_nobody_asked_for_are_skipped(wrt, tol):
    """Differentiating only some arguments: the others' gradients are not formed (empty kernel outputs, e.g. no
    ∂x when training on data), and the ones asked for still match the reference path."""
    T, B, I, H = 5, 3, 4, 20
    rng = np.random.default_rng(11)
    params = random_params(rng, lstm_jax.init_lstm, I, H, num_layers=2, bidirectional=True)
    xs = random_normal(rng, (T, B, I))
    state = random_initial_state(rng, params, B)
    argnum = ["params", "xs", "state"].index(wrt)

    def grad(impl):
        def loss(*args):
            ys, (h_n, _) = lstm_jax.lstm(*args, impl=impl)
            return jnp.sum(ys**2) + jnp.sum(h_n)

        return jax.grad(loss, argnums=argnum)

    text = str(jax.make_jaxpr(grad("kernel"))(params, xs, state))
    # Only the first layer reads xs; the second's input is the first's output, which depends on the params.
    assert ("f32[2,0,0,0]" in text) == (wrt != "xs")  # no ∂x for layer 1 unless xs is differentiated
    assert ("f32[0,0]" in text) == (wrt != "params")  # no weight gradients unless the params are (one per direction)
    got, want = jax.jit(grad("kernel"))(params, xs, state), jax.jit(grad("scan"))(params, xs, state)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, **tol["float32_grad"])


# Run in a fresh process: a buffer that glibc carves out of a large free chunk of its heap (possible once earlier
# tests have grown the heap) would carry any advice given to that range before, whichever buffer it was for.
_HUGE_PAGE_PROBE = """
import json, os, sys
import jax.numpy as jnp, numpy as np
from lstm_jax import _kernel

def vm_flags(address):  # the VmFlags of the mapping that holds address (/proc/self/smaps)
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(bound, 16) for bound in first.split("-"))
                inside = start <= address < end
            elif inside and first == "VmFlags:":
                return set(line.split()[1:])
    raise LookupError(hex(address))

B, I, H = 32, 8, 1024
rng = np.random.default_rng(0)
shapes = [(I, 4 * H), (H, 4 * H), (4 * H,)]
w_ih, w_hh, b = ((jnp.asarray(rng.standard_normal(s, np.float32) * 0.05),) for s in shapes)  # one direction
h0 = c0 = jnp.zeros((1, B, H))
advised = []
for T, setting in json.loads(sys.argv[1]):
    os.environ["LSTM_JAX_KERNEL_HUGE_PAGES"] = setting
    xs = jnp.asarray(rng.standard_normal((T, B, I), np.float32))
    acts = _kernel._forward(w_ih, w_hh, b, b, h0, c0, xs, jnp.zeros(B, jnp.int32), 0, False, save=True)[4]
    acts.block_until_ready()
    assert acts.nbytes == T << 19, acts.nbytes  # gate activations, T·B·4H floats
    # The middle of the buffer: its unaligned ends stay in mappings of their own, without the advice.
    advised.append("hg" in vm_flags(acts.unsafe_buffer_pointer() + acts.nbytes // 2))
    del acts
print(json.dumps(advised))
"""


@pytest.mark.skipif(
    not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"), reason="no transparent huge pages here"
)
def test_huge_pages_only_when_asked_for():
    """With LSTM_JAX_KERNEL_HUGE_PAGES=1, saved outputs of 2 MiB and more get MADV_HUGEPAGE (smaps flag ``hg``)
    before the kernel writes them; by default, or under 2 MiB, they do not."""
    assert _kernel.available()
    # 4 MiB of gate activations, by default and with the setting at 0; 1 MiB with it at 1; 4 MiB with it at 1. The
    # advised case comes last: a later buffer carved out of that range of glibc's heap would carry the advice.
    cases = [(8, ""), (8, "0"), (2, "1"), (8, "1")]
    result = subprocess.run(
        [sys.executable, "-c", _HUGE_PAGE_PROBE, json.dumps(cases)], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, False, False, True]


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_large_outputs_are_mapped_in_before_they_are_written(parts):
    """prefault() maps in every whole page of a fresh buffer of 2 MiB or more, the parts (one per thread) together
    covering it; a smaller buffer is left alone, and so is a part whose first page is mapped already (memory
    glibc hands out again). Checked with mincore on fresh anonymous mappings."""
    assert _kernel.available()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    prefault = _kernel._library.LstmJaxPrefault
    prefault.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    page, mapped = mmap.PAGESIZE, 16 << 20

    def resident_after_prefault(offset, size, touched=()):  # residency of the pages, mapped fresh but for `touched`
        base = libc.mmap(None, mapped, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert base not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            for page_index in touched:
                ctypes.c_char.from_address(base + page_index * page).value = b"x"
            for part in range(parts):
                prefault(base + offset, size, part, parts)
            pages = ctypes.create_string_buffer(mapped // page)
            assert libc.mincore(base, mapped, pages) == 0, ctypes.get_errno()
            return [byte & 1 for byte in pages.raw]
        finally:
            libc.munmap(base, mapped)

    offset, size = 3 * page + 100, (7 << 20) + 5000  # neither end on a page boundary
    resident = resident_after_prefault(offset, size)
    first, last = -(-offset // page), (offset + size) // page  # the buffer's whole pages
    assert all(resident[first:last])
    assert not any(resident[: first - 1]) and not any(resident[last + 1 :])  # nothing outside the buffer
    assert not any(resident_after_prefault(offset, (2 << 20) - page))  # under 2 MiB: left alone
    if parts == 1:  # the first whole page mapped already: the rest is left to fault in as written
        assert sum(resident_after_prefault(offset, size, touched=[first])) == 1


@pytest.mark.parametrize("floats", [1, 1000, 40_000, 1 << 20])
def test_scratch_buffers_start_on_cache_lines(floats):
    """The kernel's scratch buffers (weight panels, states, gradient panels) start on 64-byte boundaries, so its
    64-byte vector loads never straddle two cache lines (with operator new's 16-byte alignment they did wherever
    the allocator placed a buffer 16 bytes past a line, and the same code ran up to 10 % slower)."""
    assert _kernel.available()
    misalignment = _kernel._library.LstmJaxScratchMisalignment
    misalignment.argtypes, misalignment.restype = [ctypes.c_int64], ctypes.c_int
    assert misalignment(floats) == 0
