"""benchmarks/kernel_tiles.py: the CPU kernel's own matmul loops, timed alone (tiny shapes: the numbers, not speed)."""

import importlib.util
import json
import math
import pathlib

import pytest

from lstm_jax import _kernel

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "kernel_tiles.py"
LOOPS = [
    "fma",
    "forward_input",
    "forward_input_block",
    "weight_gradient_step",
    "weight_gradient_block",
    "hidden_gradient",
]

pytestmark = pytest.mark.skipif(not _kernel.available(), reason="the CPU kernel cannot be built here")


def _has_avx512f() -> bool:
    try:
        return " avx512f" in pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's vector extensions from")


@pytest.fixture(scope="module")
def kernel_tiles():
    spec = importlib.util.spec_from_file_location("kernel_tiles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_loop_is_checked_and_timed_on_every_thread(kernel_tiles, tmp_path):
    # I = 40 and H = 20 leave partial chunks, tiles and unit blocks (20 is a multiple of neither 16 nor 8 units):
    # the loops' remainders run too.
    out = tmp_path / "tiles.json"
    rows = kernel_tiles.main(
        ["--batch", "7", "--input", "40", "--hidden", "20", "--threads", "2", "--seconds", "0.02", "--json", str(out)]
    )
    assert [row["key"] for row in rows] == LOOPS
    units = rows[0]["units"]  # 16 with AVX-512, else 8: the kernel's vector width
    assert all(row["units"] == units for row in rows)
    # The tiles follow the CPU (-march=native): 16-float tiles on a CPU without AVX-512 spilled their accumulators
    # and made a training step 10x as long.
    assert units == (16 if _has_avx512f() else 8)
    blocks = math.ceil(math.ceil(20 / units) / 2)  # the larger thread's share of H = 20's unit blocks
    columns = 4 * units  # a unit block's gate columns
    flop = {
        "forward_input": 2 * 7 * 40 * columns * blocks,
        "forward_input_block": 2 * 4 * 7 * 40 * columns * blocks,
        "weight_gradient_step": 2 * 7 * (40 + 20) * columns * blocks,
        "weight_gradient_block": 2 * 4 * 7 * (40 + 20) * columns * blocks,
        "hidden_gradient": 2 * 7 * (4 * 20) * units * blocks,
    }
    for row in rows:
        assert len(row["gflops_per_thread"]) == 2 and min(row["gflops_per_thread"]) > 0
        # Sustained: each thread's runs over all their time, added up over the threads (what the cores deliver
        # together); a thread's sustained rate averages its timings, so it cannot be far above its best one.
        assert len(row["sustained_gflops_per_thread"]) == 2 and min(row["sustained_gflops_per_thread"]) > 0
        assert row["sustained_gflops"] == pytest.approx(sum(row["sustained_gflops_per_thread"]))
        for best, sustained in zip(row["gflops_per_thread"], row["sustained_gflops_per_thread"], strict=True):
            assert sustained < 1.5 * best
        if row["key"] in flop:
            assert row["flop"] == flop[row["key"]]
            # Each loop's float32 result against a float64 loop over the same numbers.
            assert row["max_rel_error"] < 1e-4
    assert rows[0]["of_fma_peak"] == pytest.approx(1.0) == rows[0]["sustained_of_fma_peak"]
    saved = json.loads(out.read_text())
    assert saved["config"]["hidden"] == 20 and [row["key"] for row in saved["rows"]] == LOOPS


def test_a_wrong_result_would_be_reported(kernel_tiles, monkeypatch, tmp_path):
    # The check compares against an independent float64 loop: a kernel source whose tile drops its last k step
    # must show up as a large error, so that a passing check above means something.
    source = (kernel_tiles.KERNEL_DIR / "lstm_cpu.cc").read_text()
    loop = "for (int k = 0; k < n; ++k) {\n    vec b[NV];"
    broken = source.replace(loop, loop.replace("k < n", "k < n - 1"))
    assert broken != source
    (tmp_path / "lstm_cpu.cc").write_text(broken)
    monkeypatch.setattr(kernel_tiles, "KERNEL_DIR", tmp_path)
    rows = kernel_tiles.measure(batch=7, input_size=40, hidden=20, threads=1, seconds=0.01)
    errors = {row["key"]: row["max_rel_error"] for row in rows}
    assert errors["forward_input"] > 1e-2 and errors["hidden_gradient"] > 1e-2
    assert errors["forward_input_block"] > 1e-2
