"""Results: the JSON document (its fields, documented and validated here), the CSV, and the rich tables.

One run writes ``<stem>.json`` and ``<stem>.csv`` (``stem = bench-YYYYmmdd-HHMMSS-<platform>``) into ``--out``.
The JSON holds every number; :data:`SCHEMA` lists its fields and :func:`validate` checks a document against it
(``--compare`` refuses anything else). Top level:

* ``schema``: ``"lstm_jax.bench/1"``. ``created``: ISO 8601 local time with offset. ``elapsed_s``: run wall time.
* ``command``: the argv of the run. ``config``: the exact configuration (sequence lengths, batch, input, hidden,
  layers, bidirectional, dtype, requested implementations, repeats, minimum time per timing, settle time before
  each timing, seeds, quick). Results written before ``bidirectional`` existed lack it; :func:`load` reads them
  as unidirectional; those written before ``settle_s`` existed did no settling, and :func:`load` records 0.
* ``environment``: ``platform`` (jax's default backend), ``device_kind``, ``device_count``, ``cpu_model``,
  ``cpu_count``, ``python``, ``jax``, ``jaxlib``, ``flax``, ``torch`` (None when absent), ``torch_threads``,
  ``numpy``, ``lstm_jax``, ``matmul_precision`` (``jax_default_matmul_precision``), ``xla_flags``,
  ``tuning_env`` (the set ``MALLOC_*``, ``LSTM_JAX_*``, ``OMP_*``, ``MKL_*`` and ``JAX_*`` variables; {} in runs from
  before it was recorded), ``os``,
  ``load_average`` (``start`` and ``end``: the OS's 1, 5 and 15-minute load averages, None where unknown; a
  load near or above ``cpu_count`` means other work shared the machine and the absolute times are inflated).
* ``peak``: the peak matmul rate, measured at the start, after each sequence length and at the end of the run
  (``measurements``: ``[{when, size, dtype, jax_gflops, torch_gflops, gflops}]``), and ``gflops``, the best of
  them, which ``peak_fraction`` divides by (other load on the machine can only lower a measurement).
* ``flops``: the counting convention of :mod:`lstm_jax.bench._flops`.
* ``implementations``: ``[{name, description, peer}]`` that ran; ``skipped``: ``{name: reason}`` for those that
  could not run here (cuDNN off GPU, torch not installed); ``failures``: ``[{impl, mode, seq_len, error}]`` for
  single points that raised (out of memory, say).
* ``throughput``: one row per (sequence length, mode, implementation) — see :data:`ROW_FIELDS`.
* ``gradnorm``: the gradient-norm experiment (:func:`lstm_jax.bench._gradnorm.run_gradnorm`): its ``config``,
  ``rnn_mean_field`` prediction, and per variant (``lstm``, ``lstm_fb0``, ``lstm_fb3``, ``lstm_peephole``,
  ``lstm_layernorm``, ``gru``, ``rnn``):
  ``input_grad_norm[T]`` = {geomean, min, max} lists indexed by distance T − t, ``param_grad_norm`` = {seq_len,
  geomean, min, max}, ``decay_per_step``; a null in these lists marks a float32 overflow (a growing gradient).
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import re
from typing import Any

SCHEMA_VERSION = "lstm_jax.bench/1"

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
OPTIONAL_STR = (str, type(None))

ROW_FIELDS: dict[str, Any] = {
    "impl": str,  # implementation name
    "mode": str,  # "forward" or "training"
    "seq_len": int,  # T
    "batch": int,  # B
    "input_size": int,  # I
    "hidden_size": int,  # H
    "num_layers": int,  # L
    "bidirectional": bool,  # D = 2 directions per layer
    "dtype": str,
    "calls_per_timing": int,  # calls averaged in each timing (short calls are timed in batches)
    "timings_ms": list,  # ms per call of each timed repeat, in run order
    "ms_median": NUMBER,  # the headline: median ms per call
    "ms_min": NUMBER,
    "ms_max": NUMBER,
    "tokens_per_s": NUMBER,  # B·T / median time
    "sequences_per_s": NUMBER,  # B / median time
    "gflop": NUMBER,  # flops per call (lstm_jax.bench._flops.recurrent_flops) / 1e9
    "gflops": NUMBER,  # achieved GFLOP/s at the median time
    "peak_fraction": NUMBER,  # gflops / peak.gflops
    "compile_s": OPTIONAL_NUMBER,  # trace + lower + compile; None where nothing is compiled (torch)
    "first_call_s": NUMBER,  # the untimed warm-up call
    "memory": (dict, type(None)),  # XLA memory analysis: temp_bytes, argument_bytes, output_bytes, peak_bytes
    "speedup_vs": dict,  # {other implementation: this row's throughput / that one's}, same T and mode
}
"""Fields of each ``throughput`` row: name → accepted type(s)."""

SCHEMA: dict[str, Any] = {
    "schema": str,
    "created": str,
    "elapsed_s": NUMBER,
    "command": list,
    "config": {
        "seq_lens": list,
        "batch": int,
        "input_size": int,
        "hidden_size": int,
        "num_layers": int,
        "bidirectional": bool,
        "dtype": str,
        "impls": (list, type(None)),
        "repeats": int,
        "point_budget_s": NUMBER,
        "min_time_s": NUMBER,
        "settle_s": NUMBER,
        "peak_size": (int, type(None)),
        "seeds": int,
        "grad_batch": int,
        "quick": bool,
    },
    "environment": {
        "platform": str,
        "device_kind": str,
        "device_count": int,
        "cpu_model": str,
        "cpu_count": int,
        "python": str,
        "jax": str,
        "jaxlib": str,
        "flax": str,
        "torch": OPTIONAL_STR,
        "torch_threads": (int, type(None)),
        "numpy": str,
        "lstm_jax": str,
        "matmul_precision": OPTIONAL_STR,
        "xla_flags": OPTIONAL_STR,
        "tuning_env": dict,
        "os": str,
        "load_average": dict,
    },
    "peak": {"gflops": NUMBER, "measurements": list},
    "flops": dict,
    "implementations": list,
    "skipped": dict,
    "failures": list,
    "throughput": [ROW_FIELDS],
    "gradnorm": {"config": dict, "rnn_mean_field": dict, "variants": dict},
}
"""The JSON's required fields: name → type(s), a nested dict for an object, ``[fields]`` for a list of objects."""


def validate(doc: Any, schema: Any = SCHEMA, where: str = "result") -> None:
    """Checks a results document against :data:`SCHEMA`.

    Raises:
      ValueError: naming every missing field and every field of the wrong type.
    """
    problems = _problems(doc, schema, where)
    if problems:
        raise ValueError("not an lstm_jax benchmark result:\n  " + "\n  ".join(problems))


def _problems(value: Any, schema: Any, where: str) -> list[str]:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where} should be an object, got {type(value).__name__}"]
        found = []
        for key, sub in schema.items():
            if key not in value:
                found.append(f"{where}.{key} is missing")
            else:
                found += _problems(value[key], sub, f"{where}.{key}")
        return found
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where} should be a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in _problems(item, schema[0], f"{where}[{i}]")]
    types = schema if isinstance(schema, tuple) else (schema,)
    # bool is an int in Python; only accept it where bool is asked for.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        return [f"{where} should be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}"]
    return []


def write_json(doc: dict[str, Any], path: pathlib.Path) -> None:
    """Validates and writes ``doc``: indented objects, but each list of plain values on one line (the gradient
    curves hold thousands of numbers)."""
    validate(doc)
    text = json.dumps(doc, indent=1, allow_nan=False)
    # A list with no nested list, object or string holds only numbers, booleans and nulls: drop its whitespace.
    text = re.sub(r"\[[^\[\]{}\"]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text)
    path.write_text(text + "\n")


def load(path: str | pathlib.Path) -> dict[str, Any]:
    """Reads and validates a results JSON; one written before ``bidirectional`` (``settle_s``, ``tuning_env``,
    ``peak_size``) was recorded gets it as False (0: no settling; {}: none recorded; None: the platform's default)."""
    doc = json.loads(pathlib.Path(path).read_text())
    # Every run before the fields existed was unidirectional and timed without settling.
    if isinstance(doc, dict):
        if isinstance(doc.get("config"), dict):
            doc["config"].setdefault("settle_s", 0.0)
            doc["config"].setdefault("peak_size", None)
        if isinstance(doc.get("environment"), dict):
            doc["environment"].setdefault("tuning_env", {})
        for fields in [doc.get("config"), *(doc.get("throughput") or [])]:
            if isinstance(fields, dict):
                fields.setdefault("bidirectional", False)
    validate(doc, where=str(path))
    return doc


CSV_COLUMNS = [
    "seq_len",
    "mode",
    "impl",
    "batch",
    "input_size",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "dtype",
    "ms_median",
    "ms_min",
    "ms_max",
    "tokens_per_s",
    "sequences_per_s",
    "gflop",
    "gflops",
    "peak_fraction",
    "compile_s",
    "first_call_s",
    "temp_bytes",
    "calls_per_timing",
    "timings_ms",
]


def write_csv(doc: dict[str, Any], path: pathlib.Path) -> None:
    """The throughput table, one row per (T, mode, implementation), with a ``speedup_vs_<impl>`` column per
    implementation."""
    names = [impl["name"] for impl in doc["implementations"]]
    columns = CSV_COLUMNS + [f"speedup_vs_{name}" for name in names]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in doc["throughput"]:
            flat = {key: row[key] for key in CSV_COLUMNS if key in row}
            flat["temp_bytes"] = (row["memory"] or {}).get("temp_bytes")
            flat["timings_ms"] = ";".join(f"{t:.4g}" for t in row["timings_ms"])
            for name, ratio in row["speedup_vs"].items():
                flat[f"speedup_vs_{name}"] = ratio
            writer.writerow(flat)


# --- Tables ---------------------------------------------------------------------------------------------------


def _si(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    if value is None:
        return "—"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def layers(config: dict[str, Any]) -> str:
    """The layer count of a run's configuration, with the directions when there are two: ``"2 bidirectional"``."""
    return f"{config['num_layers']}{' bidirectional' if config['bidirectional'] else ''}"


def environment_line(doc: dict[str, Any]) -> str:
    env, cfg = doc["environment"], doc["config"]
    torch = f", torch {env['torch']} ({env['torch_threads']} threads)" if env["torch"] else ""
    return (
        f"{env['platform']} ({env['device_kind']} × {env['device_count']}), {env['cpu_model']} ({env['cpu_count']} "
        f"cores); jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}{torch}; {cfg['dtype']}, "
        f"B={cfg['batch']} I={cfg['input_size']} H={cfg['hidden_size']} L={layers(cfg)}; "
        f"peak matmul {doc['peak']['gflops']:.0f} GFLOP/s"
    )


def throughput_table(doc: dict[str, Any]):
    """The rich table of every throughput row, with a speed ratio column per peer implementation."""
    from rich.table import Table

    peers = [impl["name"] for impl in doc["implementations"] if impl["peer"]]
    table = Table(title="Throughput (median of timed runs)", caption=environment_line(doc), caption_justify="left")
    for header in ("T", "mode", "impl", "ms/call", "tokens/s", "seq/s", "GFLOP/s", "% peak", "compile s", "temp"):
        table.add_column(header, justify="left" if header in ("mode", "impl") else "right")
    for peer in peers:
        table.add_column(f"vs {peer}", justify="right")
    # With --cell, each cell's time relative to the plain LSTM run the same way (cell:lstm) in the same point.
    with_cells = any(impl["name"] == "cell:lstm" for impl in doc["implementations"])
    if with_cells:
        table.add_column("cost vs cell:lstm", justify="right")
    previous = None
    for row in doc["throughput"]:
        key = (row["seq_len"], row["mode"])
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        memory = row["memory"] or {}
        ratios = [
            "—" if peer == row["impl"] or peer not in row["speedup_vs"] else f"{row['speedup_vs'][peer]:.2f}×"
            for peer in peers
        ]
        table.add_row(
            str(row["seq_len"]),
            row["mode"],
            row["impl"],
            _ms(row["ms_median"]),
            _si(row["tokens_per_s"]),
            _si(row["sequences_per_s"]),
            f"{row['gflops']:.1f}",
            f"{100 * row['peak_fraction']:.1f}",
            "—" if row["compile_s"] is None else f"{row['compile_s']:.2f}",
            _si(memory.get("temp_bytes"), "B") if memory.get("temp_bytes") is not None else "—",
            *ratios,
            *([cell_cost(row)] if with_cells else []),
        )
    return table


def cell_cost(row: dict[str, Any]) -> str:
    """ms per call of a ``cell:*`` row over that of ``cell:lstm`` at the same T and mode, as text."""
    if not row["impl"].startswith("cell:") or row["impl"] == "cell:lstm" or "cell:lstm" not in row["speedup_vs"]:
        return "—"
    return f"{1.0 / row['speedup_vs']['cell:lstm']:.2f}×"


GRADNORM_DISTANCES = (0, 16, 64, 256, 1024)


def gradnorm_table(doc: dict[str, Any]):
    """Per network: the fitted per-step decay and ‖∂L/∂x_t‖ at a few distances for the longest sequence."""
    from rich.table import Table

    grad = doc["gradnorm"]
    longest = str(max(grad["config"]["seq_lens"]))
    distances = [d for d in GRADNORM_DISTANCES if d < int(longest)]
    start, stop = grad["decay_window"]
    table = Table(
        title=f"Gradient norms at initialisation, T={longest} (geometric mean over {grad['config']['seeds']} seeds)",
        caption=(
            f"decay/step: exponential fit over distances {start}–{stop}; the tanh RNN's mean-field prediction is "
            f"{grad['rnn_mean_field']['rate']:.3f}. 0 = below float32's range."
        ),
        caption_justify="left",
    )
    table.add_column("network")
    table.add_column("decay/step", justify="right")
    for d in distances:
        table.add_column(f"‖∂L/∂x‖ at T−t={d}", justify="right")
    table.add_column(f"‖∂L/∂θ‖ at T={longest}", justify="right")
    for variant in grad["variants"].values():
        curve = variant["input_grad_norm"][longest]["geomean"]
        rate = variant["decay_per_step"]
        table.add_row(
            variant["label"],
            "—" if rate is None else f"{rate:.3f}",
            *("overflow" if curve[d] is None else f"{curve[d]:.2e}" for d in distances),
            _maybe(variant["param_grad_norm"]["geomean"][-1], ".3g"),
        )
    return table


def _maybe(value: float | None, spec: str) -> str:
    return "overflow" if value is None else format(value, spec)


def print_report(doc: dict[str, Any], console) -> None:
    """Prints the end-of-run tables and the skipped implementations."""
    for name, reason in doc["skipped"].items():
        console.print(f"[yellow]skipped[/] {name}: {reason}")
    for failure in doc["failures"]:
        first_line = failure["error"].split("\\n")[0]  # repr() escapes newlines; the JSON has the whole message
        console.print(f"[red]failed[/] {failure['impl']} {failure['mode']} T={failure['seq_len']}: {first_line}")
    if doc["throughput"]:
        console.print(throughput_table(doc))
    if doc["gradnorm"]["variants"]:
        console.print(gradnorm_table(doc))


# --- --compare ------------------------------------------------------------------------------------------------


def compare_table(docs: list[dict[str, Any]], labels: list[str]):
    """Side by side: tokens/s and % of each run's own peak per (mode, implementation, T), and each run's
    throughput relative to the first run's."""
    from rich.table import Table

    table = Table(title="Throughput, side by side (tokens/s, % of that run's peak matmul, × the first run)")
    table.add_column("mode")
    table.add_column("impl")
    table.add_column("T", justify="right")
    for label in labels:
        table.add_column(label, justify="right")
    keys: list[tuple[str, str, int]] = []
    for doc in docs:
        for row in doc["throughput"]:
            key = (row["mode"], row["impl"], row["seq_len"])
            if key not in keys:
                keys.append(key)
    keys.sort(key=lambda k: (k[0] != "forward", k[1], k[2]))
    indexed = [{(r["mode"], r["impl"], r["seq_len"]): r for r in doc["throughput"]} for doc in docs]
    previous = None
    for key in keys:
        if previous is not None and key[:2] != previous:
            table.add_section()
        previous = key[:2]
        base = indexed[0].get(key)
        cells = []
        for rows in indexed:
            row = rows.get(key)
            if row is None:
                cells.append("—")
                continue
            cell = f"{_si(row['tokens_per_s'])} ({100 * row['peak_fraction']:.0f}%)"
            if base is not None and rows is not indexed[0]:
                cell += f" {row['tokens_per_s'] / base['tokens_per_s']:.2f}×"
            cells.append(cell)
        table.add_row(key[0], key[1], str(key[2]), *cells)
    return table


def runs_table(docs: list[dict[str, Any]], labels: list[str]):
    """One line per run: when, where, with what, and the configuration, so differences are visible first."""
    from rich.table import Table

    table = Table(title="Runs compared")
    for header in ("run", "created", "device", "CPU", "jax / jaxlib", "torch", "dtype", "B / I / H / L", "peak"):
        table.add_column(header)
    for label, doc in zip(labels, docs, strict=True):
        env, cfg = doc["environment"], doc["config"]
        table.add_row(
            label,
            doc["created"][:19],
            f"{env['platform']}: {env['device_kind']} × {env['device_count']}",
            f"{env['cpu_model']} ({env['cpu_count']})",
            f"{env['jax']} / {env['jaxlib']}",
            env["torch"] or "—",
            cfg["dtype"],
            f"{cfg['batch']} / {cfg['input_size']} / {cfg['hidden_size']} / {layers(cfg)}",
            f"{doc['peak']['gflops']:.0f} GFLOP/s",
        )
    return table


def compare(paths: list[str], console) -> None:
    """Prints the runs and their side-by-side throughput table (``lstm-jax bench --compare A.json B.json …``)."""
    docs = [load(path) for path in paths]
    labels = [pathlib.Path(path).stem for path in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i}: {label}" for i, label in enumerate(labels, 1)]
    sizes = {
        tuple(doc["config"][k] for k in ("batch", "input_size", "hidden_size", "num_layers", "bidirectional", "dtype"))
        for doc in docs
    }
    console.print(runs_table(docs, labels))
    if len(sizes) > 1:
        console.print("[yellow]The runs used different sizes, directions or dtypes; compare their ratios with care.[/]")
    console.print(compare_table(docs, labels))


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity: None stands for them."""
    return value if math.isfinite(value) else None
