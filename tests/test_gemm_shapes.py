"""benchmarks/gemm_shapes.py: the LSTM's matmuls timed in XLA and PyTorch (tiny sizes: the numbers, not speed)."""

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gemm_shapes.py"


@pytest.fixture(scope="module")
def gemm_shapes():
    spec = importlib.util.spec_from_file_location("gemm_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_report_each_matmul_with_its_flops_and_both_rates(gemm_shapes, tmp_path):
    out = tmp_path / "gemm.json"
    rows = gemm_shapes.main(
        ["--batch", "2", "--input", "3", "--hidden", "4", "--steps", "5", "--repeats", "2", "--json", str(out)]
    )
    assert [row["kind"] for row in rows] == ["recurrent", "input", "weight-grad"]
    # 2·m·k·n per matmul; the recurrent one runs once per step.
    assert [row["gflop"] * 1e9 for row in rows] == pytest.approx([2 * 2 * 4 * 16 * 5, 2 * 10 * 3 * 16, 2 * 4 * 10 * 16])
    for row in rows:
        assert row["xla_gflops"] > 0 and row["torch_gflops"] > 0
        assert row["xla_over_torch"] == pytest.approx(row["xla_gflops"] / row["torch_gflops"])
    saved = json.loads(out.read_text())
    assert saved["config"]["hidden"] == 4 and len(saved["rows"]) == 3
