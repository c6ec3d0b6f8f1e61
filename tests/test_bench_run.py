"""The quick sweep end to end through the command line: JSON (validated against the documented fields), CSV,
PNGs, the tables, ``--compare``; and the command-line parsing. Structure only: timings are never asserted."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from lstm_jax._cli import bench_config, build_parser, main
from lstm_jax.bench import QUICK, load, recurrent_flops, validate
from lstm_jax.bench._gradnorm import VARIANTS
from lstm_jax.bench._impls import MODES, REGISTRY, resolve
from lstm_jax.bench._plots import COLORS, PLOTS, _palette, _subtitle
from lstm_jax.bench._report import CSV_COLUMNS, ROW_FIELDS, environment_line
from lstm_jax.bench._throughput import run_throughput


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    (json_path,) = out.glob("*.json")
    return out, json_path, json.loads(json_path.read_text())


def test_json_has_every_documented_field(quick_run):
    _, _, doc = quick_run
    validate(doc)
    assert doc["config"]["seq_lens"] == list(QUICK.seq_lens)
    assert doc["config"]["quick"] is True
    env = doc["environment"]
    assert env["platform"] == "cpu" and env["device_count"] >= 1 and env["cpu_count"] >= 1
    assert env["jax"] and env["jaxlib"] and env["flax"] and env["torch"]
    peaks = doc["peak"]["measurements"]
    assert [p["when"] for p in peaks] == ["start", *(f"after T={t}" for t in QUICK.seq_lens), "end"]
    assert doc["peak"]["gflops"] == max(p["gflops"] for p in peaks) > 0
    assert {p["size"] for p in peaks} == {QUICK.peak_size} == {512}  # the quick sweep's small peak matmul


def test_every_available_implementation_is_timed_at_every_point(quick_run):
    _, _, doc = quick_run
    names = [impl["name"] for impl in doc["implementations"]]
    # Every default implementation ran or was skipped with a reason; the cell:* variants run only with --cell.
    assert set(names) | set(doc["skipped"]) == {name for name, impl in REGISTRY.items() if impl.default}
    assert {"torch", "flax"} <= set(names) and any(name.startswith("lstm_jax:") for name in names)
    assert "cudnn" in doc["skipped"] and "gpu" in doc["skipped"]["cudnn"]  # said explicitly, not silently dropped
    assert doc["failures"] == []
    points = {(row["seq_len"], row["mode"], row["impl"]) for row in doc["throughput"]}
    assert points == {(t, mode, name) for t in QUICK.seq_lens for mode in MODES for name in names}
    for row in doc["throughput"]:
        assert set(row) == set(ROW_FIELDS)
        assert len(row["timings_ms"]) == QUICK.repeats
        assert row["ms_min"] <= row["ms_median"] <= row["ms_max"]
        assert row["tokens_per_s"] == pytest.approx(row["sequences_per_s"] * row["seq_len"])
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / doc["peak"]["gflops"])
        assert set(row["speedup_vs"]) == set(names) - {row["impl"]}
        if row["impl"] == "torch":
            assert row["compile_s"] is None and row["memory"] is None
        else:  # compiled by XLA: compile time apart, and the memory analysis of the compiled step
            assert row["compile_s"] > 0 and row["memory"]["temp_bytes"] >= 0


def test_training_temp_memory_grows_with_sequence_length(quick_run):
    # BPTT keeps per-step residuals: the compiled training step's temp buffers scale with T, inference's do not.
    _, _, doc = quick_run
    temp = {(r["impl"], r["mode"], r["seq_len"]): r["memory"]["temp_bytes"] for r in doc["throughput"] if r["memory"]}
    short, long = min(QUICK.seq_lens), max(QUICK.seq_lens)
    for impl, mode, seq_len in temp:
        if mode == "training" and seq_len == long:
            assert temp[impl, mode, long] > temp[impl, mode, short]


def test_gradnorm_section(quick_run):
    _, _, doc = quick_run
    grad = doc["gradnorm"]
    assert set(grad["variants"]) == {"lstm", "lstm_fb0", "lstm_fb3", "lstm_peephole", "lstm_layernorm", "gru", "rnn"}
    for variant in grad["variants"].values():
        for seq_len in QUICK.seq_lens:
            curve = variant["input_grad_norm"][str(seq_len)]
            assert len(curve["geomean"]) == len(curve["min"]) == len(curve["max"]) == seq_len
        assert variant["param_grad_norm"]["seq_len"] == list(QUICK.seq_lens)
        assert 0 < variant["decay_per_step"]
    # Without normalisation every network is contractive at initialisation. Layer norm is not bound by that: it
    # rescales the pre-activations, so its per-step Jacobian can have norm above 1 and the gradient can grow.
    for name, variant in grad["variants"].items():
        if name != "lstm_layernorm":
            assert variant["decay_per_step"] <= 1.01, name


def test_csv_and_pngs(quick_run):
    out, json_path, doc = quick_run
    stem = json_path.stem
    with (out / f"{stem}.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(doc["throughput"])
    assert set(CSV_COLUMNS) <= set(rows[0])
    assert {f"speedup_vs_{impl['name']}" for impl in doc["implementations"]} <= set(rows[0])
    for suffix in PLOTS:
        png = (out / f"{stem}-{suffix}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000, suffix


@pytest.mark.parametrize("names", [list(REGISTRY), list(VARIANTS)], ids=["implementations", "gradnorm-networks"])
def test_every_line_of_a_figure_has_a_colour_of_its_own(names):
    """All registered implementations in one throughput figure (every lstm_jax path, the cells), or every gradient-norm
    network, plus two unknown names: no two lines share a colour, and the ones named in COLORS keep theirs."""
    names = [*names, "unknown-a", "unknown-b"]
    colors = _palette(names)
    assert len(set(colors.values())) == len(names), colors
    assert all(colors[name] == COLORS[name] for name in names if name in COLORS)


def test_compare_prints_runs_side_by_side(quick_run, tmp_path, capsys):
    _, json_path, doc = quick_run
    other = tmp_path / "other-machine.json"
    shutil.copy(json_path, other)
    capsys.readouterr()
    assert main(["bench", "--compare", str(json_path), str(other)]) == 0
    printed = capsys.readouterr().out
    assert "Runs compared" in printed and "other-machine" in printed and doc["environment"]["cpu_model"] in printed
    assert "1.00×" in printed  # the same run against itself
    for impl in doc["implementations"]:
        assert impl["name"] in printed


def test_compare_reads_runs_from_before_bidirectional_as_unidirectional(quick_run, tmp_path, capsys):
    """... runs from before settle_s as timed without settling, from before tuning_env with none recorded, and from
    before peak_size with the platform's default peak matmul."""
    _, _, doc = quick_run
    old = json.loads(json.dumps(doc))
    del old["config"]["bidirectional"]
    del old["config"]["settle_s"]
    del old["config"]["peak_size"]
    del old["environment"]["tuning_env"]
    for row in old["throughput"]:
        del row["bidirectional"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    loaded = load(path)
    assert loaded["config"]["bidirectional"] is False and loaded["config"]["settle_s"] == 0.0
    assert loaded["config"]["peak_size"] is None
    assert loaded["environment"]["tuning_env"] == {}
    assert all(row["bidirectional"] is False for row in loaded["throughput"])
    assert main(["bench", "--compare", str(path)]) == 0


def test_compare_rejects_a_foreign_json(tmp_path, capsys):
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps({"schema": "something else"}))
    assert main(["bench", "--compare", str(path)]) == 1
    assert "environment is missing" in capsys.readouterr().out


def test_validate_names_the_missing_field(quick_run):
    _, _, doc = quick_run
    broken = json.loads(json.dumps(doc))
    del broken["environment"]["cpu_model"]
    broken["throughput"][0]["gflops"] = "fast"
    with pytest.raises(ValueError, match=r"environment\.cpu_model is missing(.|\n)*throughput\[0\]\.gflops"):
        validate(broken)


def test_arguments_build_the_configuration():
    parser = build_parser()
    config = bench_config(parser.parse_args(["bench", "--quick", "--seq-lens", "32,8", "16", "--impls", "lstm_jax"]))
    assert config.seq_lens == (8, 16, 32) and config.impls == ("lstm_jax",) and config.batch == QUICK.batch
    config = bench_config(parser.parse_args(["bench", "--batch", "4", "--hidden", "16", "--layers", "2"]))
    assert (config.batch, config.hidden_size, config.num_layers, config.quick) == (4, 16, 2, False)
    assert config.seq_lens[0] <= 16 and config.seq_lens[-1] >= 4096
    assert config.bidirectional is False and QUICK.bidirectional is False
    config = bench_config(parser.parse_args(["bench", "--quick", "--layers", "2", "--bidirectional"]))
    assert (config.num_layers, config.bidirectional, config.batch) == (2, True, QUICK.batch)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--impls", "tensorflow"], "unknown implementation"),
        (["bench", "--batch", "0"], "positive integer"),
        (["bench", "--dtype", "int8"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_are_reported(argv, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_importing_the_library_needs_none_of_the_bench_extras():
    # (rich is not checked: flax itself depends on it.)
    code = (
        "import sys, lstm_jax, lstm_jax._cli, lstm_jax.bench; "
        "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cell_variants_are_benchmarked_against_the_plain_lstm():
    """--cell adds cell:<name> implementations next to cell:lstm; their cost column is ms(cell) / ms(cell:lstm)."""
    from lstm_jax._cli import bench_config, build_parser
    from lstm_jax.bench._report import cell_cost

    args = build_parser().parse_args(
        ["bench", "--quick", "--seq-lens", "8", "--impls", "lstm_jax:bptt", "--cell", "peephole", "zoneout", "gru"]
    )
    config = bench_config(args)
    assert config.impls == ("lstm_jax:bptt", "cell:lstm", "cell:peephole", "cell:zoneout", "cell:gru")
    # The throughput part alone: gradient norms, peak and plots do not depend on --cell.
    config = dataclasses.replace(config, repeats=1, min_time_s=0.0)
    impls, _ = resolve(config.impls)
    throughput, failures = run_throughput(config, impls)
    assert failures == []
    rows = {(row["impl"], row["mode"]): row for row in throughput}
    for name in ("cell:peephole", "cell:zoneout", "cell:gru"):
        for mode in ("forward", "training"):
            row, base = rows[name, mode], rows["cell:lstm", mode]
            assert cell_cost(row) == f"{row['ms_median'] / base['ms_median']:.2f}×"
    with pytest.raises(SystemExit, match="unknown --cell"):
        bench_config(build_parser().parse_args(["bench", "--cell", "nosuch"]))


def test_bidirectional_stacks_are_benchmarked_side_by_side():
    """--bidirectional --layers 2: every implementation runs the same two-direction stack, and its flops are
    counted as such (the throughput part alone: the rest of a run does not depend on the flag)."""
    argv = "bench --quick --seq-lens 4 --layers 2 --bidirectional --impls lstm_jax:bptt flax torch".split()
    config = dataclasses.replace(bench_config(build_parser().parse_args(argv)), repeats=1, min_time_s=0.0)
    impls, _ = resolve(config.impls)
    rows, failures = run_throughput(config, impls)
    assert failures == []
    assert {(row["impl"], row["mode"]) for row in rows} == {(impl.name, mode) for impl in impls for mode in MODES}
    for row in rows:
        assert row["bidirectional"] is True and row["num_layers"] == 2
        training = row["mode"] == "training"
        flop = recurrent_flops(
            4, config.batch, config.input_size, config.hidden_size, 2, training=training, bidirectional=True
        )
        assert row["gflop"] == flop / 1e9


def test_bidirectional_runs_say_so(quick_run):
    _, _, doc = quick_run
    doc = json.loads(json.dumps(doc))
    doc["config"].update(num_layers=2, bidirectional=True)
    assert "L=2 bidirectional" in environment_line(doc)
    assert "L=2 bidirectional" in _subtitle(doc)


def test_settle_calls_for_at_least_the_given_time(monkeypatch):
    """settle: untimed calls until the time is up, and always at least one (the --quick sweep's settle_s = 0).
    Each call advances a fake clock by 4 ms, so the count is exact whatever the machine's load."""
    from lstm_jax.bench import _timing

    now = [0.0]
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: now[0])

    def call():
        now[0] += 0.004

    assert _timing.settle(call, 0.0) == 1
    assert _timing.settle(call, 0.03) == 8  # 7 calls are 28 ms, the 8th reaches 32


def test_peak_matmul_size_is_the_platforms_unless_given():
    from lstm_jax.bench import _timing

    assert _timing._peak_size("cpu") == 2048 and _timing._peak_size("gpu") == 8192
    peak = _timing.measure_peak("float32", "cpu", repeats=1, size=96)
    assert peak["size"] == 96 and peak["dtype"] == "float32" and peak["gflops"] > 0
    assert peak["gflops"] == max(peak["jax_gflops"], peak["torch_gflops"] or 0.0)


def test_tuning_environment_is_recorded(monkeypatch):
    """Allocator, thread and jax settings change the timings, so a run records the ones that are set, and only
    those."""
    from lstm_jax.bench._env import TUNING_PREFIXES, environment

    for name in [n for n in os.environ if n.startswith(TUNING_PREFIXES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "1")
    monkeypatch.setenv("LSTM_JAX_KERNEL_INPUT_STEPS", "4")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    assert environment()["tuning_env"] == {
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "LSTM_JAX_KERNEL_INPUT_STEPS": "4",
        "MALLOC_ARENA_MAX": "1",
    }


def test_a_busy_machine_and_unoptimised_xla_are_called_out():
    """The run says when its timings are not representative: a loaded machine, or XLA without its optimisations (the
    test suite's own setting; a plain run of the benchmark has it off)."""
    import jax

    from lstm_jax.bench._suite import cautions

    busy, idle, unknown = (
        {"load_average": {"start": load}, "cpu_count": 2} for load in ([1.9, 1, 1], [1.0, 1, 1], None)
    )
    previous = jax.config.values["jax_disable_most_optimizations"]  # on, unless the environment turned it off
    try:
        jax.config.update("jax_disable_most_optimizations", True)
        assert [("busy" in c, "optimisations off" in c) for c in cautions(busy)] == [(True, False), (False, True)]
        assert [("busy" in c, "optimisations off" in c) for c in cautions(idle)] == [(False, True)]
        jax.config.update("jax_disable_most_optimizations", False)
        assert len(cautions(busy)) == 1 and "busy" in cautions(busy)[0]
        assert cautions(idle) == cautions(unknown) == []
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def test_torch_on_the_cpu_is_not_compared_with_jax_on_a_gpu(monkeypatch):
    """`make bench` installs a CPU build of torch; on a GPU machine timing it beside jax on the GPU would compare
    two processors, so the run skips torch with the reason instead."""
    import jax
    import torch

    torch_impl = REGISTRY["torch"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_impl.unavailable() is None  # on the CPU both run on the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "install a CUDA build of torch" in torch_impl.unavailable()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_impl.unavailable() is None
