"""The training run behind ``lstm-jax train TASK``: steps, progress, metrics, checkpoints, resume and the summary.

A run is a function of its configuration. Initialisation and dropout keys come from ``--seed`` (split once into an
init key and a dropout key, whose ``fold_in(·, step)`` is each step's key), batch ``step`` from
``(seed, step)``, and the state from the checkpoint on ``--resume``; so stopping a run anywhere (SIGKILL included)
and resuming it gives parameters bit-identical to an uninterrupted run's. ``params_sha256`` in the summary line is
how to check.

Outputs with ``--out DIR``: ``metrics.jsonl`` (one record per step: loss, gradient norm, task metrics, tokens/s;
one per held-out evaluation; a final one with the report), ``loss.png``, ``summary.json`` and the task's own files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from ._checkpoint import Checkpointer, tree_sha256
from ._config import TASKS, TrainConfig, config_from_args, resolve
from ._errors import CheckpointError, ConfigError
from ._parallel import data_parallel, initialize_distributed
from ._step import default_optimizer, from_nnx, init_state, make_eval_step, make_train_step
from ._task import Task


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`train` returns.

    Attributes:
      config: the resolved configuration.
      report: the task's final metrics against its baseline (e.g. ``test_mse`` and ``baseline_mse``).
      final_loss: training loss of the last step.
      params_sha256: SHA-256 of the final parameters' bytes (equal for bit-identical runs).
      train_s: wall time of this process's training steps (compilation included), excluding the final report.
      compile_s: wall time of the first step (compilation plus one step).
      devices: devices the batch was sharded over.
      model: the trained NNX model (eval mode).
      task: the task object (its data, vocabulary, ...).
      summary: the one-line summary ``run`` prints last.
    """

    config: TrainConfig
    report: dict[str, Any]
    final_loss: float
    params_sha256: str
    train_s: float
    compile_s: float
    devices: int
    model: nnx.Module
    task: Task
    summary: str


class _MetricsLog:
    """``metrics.jsonl``; on resume, the records past the checkpoint's step (written by the run that died after
    it) are dropped, so the file holds one trajectory."""

    def __init__(self, path: Path | None, resume_step: int | None):
        self.path = path
        if path is None:
            return
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the kill
                    continue
                if record.get("kind") != "final" and record.get("step", 0) <= resume_step:
                    kept.append(line + "\n")
        path.write_text("".join(kept))

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.path is not None and records:
            with self.path.open("a") as file:
                file.writelines(json.dumps(record) + "\n" for record in records)

    def read(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def _scalar(value: Any) -> Any:
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def _progress(console, enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def train(config: TrainConfig) -> RunResult:
    """Runs ``config`` to ``config.steps`` steps (from its checkpoint with ``resume``) and reports.

    Progress and messages go to stderr; nothing goes to stdout (``run`` prints the summary there).

    Raises:
      ConfigError: invalid configuration, a checkpoint directory that does not exist (``resume``) or that already
        holds another run's checkpoints (no ``resume``), or a checkpoint written with other hyperparameters.
      CheckpointError: ``resume`` found no usable checkpoint.
    """
    try:
        from rich.console import Console
    except ImportError as error:
        raise ImportError("training needs rich (and orbax-checkpoint): pip install 'lstm_jax[examples]'") from error

    config = resolve(config)
    if config.distributed:
        initialize_distributed(
            coordinator_address=config.coordinator, num_processes=config.num_processes, process_id=config.process_id
        )
    primary = jax.process_index() == 0
    # Plain text, never wrapped: messages hold paths, which rich would otherwise split or read as markup.
    console = Console(stderr=True, quiet=not primary, soft_wrap=True, markup=False, highlight=False)
    ckpt_dir = Path(config.ckpt_dir) if config.ckpt_dir is not None else None
    if config.resume and not ckpt_dir.is_dir():
        raise ConfigError(f"--resume: checkpoint directory {ckpt_dir} does not exist")
    try:
        parallel = data_parallel(config.devices)
        parallel.check_batch_size(config.batch)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    task = TASKS[config.task](config)
    out = Path(config.out) if config.out is not None and primary else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    model = task.model(nnx.Rngs(params=init_key, dropout=0))
    params, loss_fn, merge = from_nnx(model, task.loss)
    optimizer = default_optimizer(config.lr, weight_decay=config.weight_decay, clip_norm=config.clip_norm)
    state = parallel.replicate(init_state(params, optimizer))

    checkpointer = None
    start = 0
    if ckpt_dir is not None:
        checkpointer = Checkpointer(ckpt_dir, max_to_keep=config.keep, log=console.print)
        if config.resume:
            state, meta = checkpointer.restore(
                state, parallel.replicated, accept=lambda meta: _check_resume(config, task, meta, ckpt_dir)
            )
            start = int(np.asarray(state.step.addressable_data(0)))
            dropout_key = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
            console.print(f"resumed from {ckpt_dir / str(start)} at step {start}")
        elif checkpointer.steps():
            raise ConfigError(
                f"{ckpt_dir} already holds checkpoints (latest step {checkpointer.steps()[-1]}); pass --resume to "
                "continue that run, or choose an empty directory"
            )
    dropout_key = parallel.replicate(dropout_key)
    if parallel.num_devices > 1:
        console.print(f"data parallel over {parallel.num_devices} devices ({jax.devices()[0].platform})")

    train_step = make_train_step(loss_fn, optimizer, parallel=parallel)
    eval_step = make_eval_step(loss_fn, parallel=parallel)
    eval_batch = parallel.place_eval_batch(task.eval_batch())
    log = _MetricsLog(out / "metrics.jsonl" if out else None, start if config.resume else None)
    tokens_per_step = config.batch * task.seq_len

    pending: list[tuple[int, dict[str, jax.Array]]] = []
    clock = {"last": time.perf_counter(), "compile_s": 0.0}
    started = time.perf_counter()
    final_loss = float("nan")

    def flush(progress, bar) -> None:
        nonlocal final_loss
        if not pending:
            return
        host = jax.device_get([metrics for _, metrics in pending])
        now = time.perf_counter()
        first = pending[0][0] == start + 1
        rate = None if first else tokens_per_step * len(pending) / (now - clock["last"])
        if first:
            clock["compile_s"] = now - started
        records = [
            {
                "kind": "train",
                "step": step,
                **{k: _scalar(v) for k, v in metrics.items()},
                "tokens_per_s": rate,
                "elapsed_s": round(now - started, 3),
            }
            for (step, _), metrics in zip(pending, host, strict=True)
        ]
        log.write(records)
        final_loss = records[-1]["loss"]
        progress.update(
            bar, completed=records[-1]["step"], loss=f"{final_loss:.4g}", rate="…" if rate is None else f"{rate:,.0f}"
        )
        clock["last"] = now
        pending.clear()

    with _progress(console, config.progress and primary) as progress:
        bar = progress.add_task(f"{config.task} {config.cell}", total=config.steps, completed=start, loss="…", rate="…")
        for step in range(start, config.steps):
            batch = parallel.shard_batch(task.train_batch(step))
            state, metrics = train_step(state, batch, dropout_key)
            done = step + 1
            pending.append((done, metrics))
            if done == start + 1 or done % config.log_every == 0 or done == config.steps:
                flush(progress, bar)
            if done % config.eval_every == 0 or done == config.steps:
                held_out = jax.device_get(eval_step(state.params, eval_batch))
                log.write([{"kind": "eval", "step": done, **{k: _scalar(v) for k, v in held_out.items()}}])
            if checkpointer is not None and (done % config.ckpt_every == 0 or done == config.steps):
                flush(progress, bar)
                meta = {
                    "config": config.trajectory(),
                    "rng": np.asarray(jax.random.key_data(dropout_key)).tolist(),
                    "data_position": task.data_position(done),
                }
                path = checkpointer.save(state, meta)
                progress.console.print(f"checkpoint step {done}: {path}")
    train_s = time.perf_counter() - started
    if checkpointer is not None:
        checkpointer.close()

    model = merge(state.params)
    model.eval()
    report = task.report(model, out)
    params_sha256 = tree_sha256(state.params)
    scalars = {k: v for k, v in report.items() if isinstance(v, (int, float))}
    for name, value in report.items():
        if isinstance(value, str) and ("\n" in value or len(value) > 80):
            console.print(f"{name}:\n{value}")
    fields = {
        "steps": config.steps,
        task.headline: scalars.pop(task.headline),
        **scalars,
        "final_loss": final_loss,
        "train_s": round(train_s, 1),
        "compile_s": round(clock["compile_s"], 1),
        "devices": parallel.num_devices,
        "params_sha256": params_sha256,
    }
    summary = f"train {config.task} cell={config.cell} " + " ".join(f"{k}={_format(v)}" for k, v in fields.items())
    if out is not None:
        log.write([{"kind": "final", "step": config.steps, **fields}])
        _write_outputs(out, config, task, log.read(), fields, report)
    return RunResult(
        config=config,
        report=report,
        final_loss=final_loss,
        params_sha256=params_sha256,
        train_s=train_s,
        compile_s=clock["compile_s"],
        devices=parallel.num_devices,
        model=model,
        task=task,
        summary=summary,
    )


def _check_resume(config: TrainConfig, task, meta: dict[str, Any], ckpt_dir: Path) -> None:
    """Refuses a checkpoint written by a differently configured run, before its arrays are read."""
    start = meta["step"]
    saved = meta.get("config", {})
    differ = [name for name, value in config.trajectory().items() if saved.get(name) != value]
    if differ:
        was = ", ".join(f"--{name.replace('_', '-')} {saved.get(name)!r}" for name in differ)
        now = ", ".join(f"--{name.replace('_', '-')} {getattr(config, name)!r}" for name in differ)
        raise ConfigError(f"--resume: the checkpoint in {ckpt_dir} was written with {was}; this run has {now}")
    if meta.get("data_position") != task.data_position(start):
        raise CheckpointError(
            f"checkpoint step {start} in {ckpt_dir} records data position {meta.get('data_position')}, "
            f"expected {task.data_position(start)}"
        )
    if start > config.steps:
        raise ConfigError(f"--steps {config.steps} is behind the checkpoint in {ckpt_dir} (step {start})")


def _write_outputs(out: Path, config, task, records, fields, report) -> None:
    from ._plots import plot_loss

    plot_loss(
        out / "loss.png",
        {f"{config.task} {config.cell}": records},
        title=f"{config.task}: {config.cell.upper()} H={config.hidden} L={config.layers} B={config.batch}",
        baseline=task.loss_baseline,
        log_scale=config.task in ("adding", "co2"),
    )
    summary = {"config": dataclasses.asdict(config), "summary": fields, "report": report}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    """Trains from a namespace parsed with :func:`~lstm_jax.train.add_arguments`; prints the summary line last on
    stdout and returns the exit status 0.

    Raises:
      TrainError: (``ConfigError``, ``CheckpointError``) with a message for the user; a command line prints it
        and exits with status 2.
    """
    result = train(config_from_args(args))
    print(result.summary, flush=True)
    return 0
