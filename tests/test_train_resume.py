"""Checkpoints that lose nothing: a run SIGKILLed mid-way and resumed ends bit-identical to an uninterrupted one;
damaged or partial checkpoints are reported and skipped in favour of the previous good one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from test_train import ROOT, TINY, parse

from lstm_jax.train import Checkpointer, CheckpointError, TrainState, run
from lstm_jax.train._checkpoint import _write_manifest

# Long enough (a second or two of steps after compiling) to be killed in the middle, small enough to be quick.
KILLABLE = ["adding", "--steps", "600", "--seq-len", "10", "--hidden", "8", "--batch", "8", "--dropout", "0.1"]
KILLABLE += ["--ckpt-every", "100", "--no-progress", "--log-every", "50"]


def train_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "lstm_jax.train", *argv]


def summary_sha(stdout: str) -> str:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("train adding "), last
    return last.rsplit("params_sha256=", 1)[1]


def complete_steps(ckpt: Path) -> list[int]:
    """Checkpoints that are finished: renamed into place by orbax and given their manifest."""
    if not ckpt.exists():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "MANIFEST.json").is_file())


def test_sigkilled_run_resumes_bit_identical(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The uninterrupted reference runs alongside.
    reference = subprocess.Popen(
        train_command(*KILLABLE, "--ckpt-dir", str(tmp_path / "ckpt2"), "--out", str(tmp_path / "out2")),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    victim = subprocess.Popen(
        train_command(*KILLABLE, "--ckpt-dir", str(ckpt), "--out", str(out)),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not complete_steps(ckpt) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{stderr}"
    killed_at = complete_steps(ckpt)
    assert killed_at and killed_at[-1] < 600, killed_at

    resumed = subprocess.run(
        train_command(*KILLABLE, "--ckpt-dir", str(ckpt), "--out", str(out), "--resume"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpt / str(killed_at[-1])} at step {killed_at[-1]}" in resumed.stderr
    reference_out, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err
    assert summary_sha(resumed.stdout) == summary_sha(reference_out)

    # The metrics log holds one trajectory: the killed run's records past its checkpoint were replaced.
    def losses(path):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]

    assert losses(out / "metrics.jsonl") == losses(tmp_path / "out2" / "metrics.jsonl")


def damage(step_dir: Path) -> None:
    """Overwrites every array file of a checkpoint with zeros of the same length (a bad disk, a torn copy)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(bytes(path.stat().st_size))


def test_corrupt_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    args = ["adding", *TINY, "--ckpt-every", "4"]  # 12 steps: checkpoints 4, 8, 12
    run(parse(*args, "--ckpt-dir", str(ckpt)))
    reference = summary_sha(capsys.readouterr().out)
    assert complete_steps(ckpt) == [4, 8, 12]
    damage(ckpt / "12")
    (ckpt / "12.orbax-checkpoint-tmp-1").mkdir()  # what a save killed half-way leaves behind: ignored

    run(parse(*args, "--ckpt-dir", str(ckpt), "--resume"))
    captured = capsys.readouterr()
    report = captured.err
    assert f"checkpoint {ckpt / '12'} is corrupt or incomplete" in report
    assert "falling back to the previous good checkpoint, step 8" in report
    assert f"resumed from {ckpt / '8'} at step 8" in report
    assert summary_sha(captured.out) == reference  # steps 9-12 recomputed, bit for bit
    assert (ckpt / "12.corrupt").is_dir() and complete_steps(ckpt) == [4, 8, 12]


def test_all_checkpoints_corrupt(tmp_path):
    state = TrainState({"w": jnp.arange(3.0)}, (), jnp.zeros((), jnp.int32))
    messages = []
    checkpointer = Checkpointer(tmp_path, log=messages.append)
    for step in (1, 2, 3):
        checkpointer.save(state._replace(step=jnp.full((), step, jnp.int32)))
    (tmp_path / "3" / "MANIFEST.json").unlink()  # as if killed right after orbax's rename
    (tmp_path / "2" / "meta" / "metadata").write_text("{not json")  # damaged metadata
    damage(tmp_path / "1")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*: steps \[3, 2, 1\] are all corrupt"):
        checkpointer.restore(state)
    assert "no MANIFEST.json: the run stopped before the checkpoint was finished" in messages[0]
    assert "file meta/metadata changed since it was written" in messages[1]
    assert "changed since it was written" in messages[2]
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in"):
        Checkpointer(tmp_path / "empty").restore(state)


def test_checkpoint_round_trip_and_tampering_is_detected(tmp_path):
    """A checkpoint restores bit-identical; one whose bytes changed but still decode fails its SHA-256."""
    state = TrainState({"w": jnp.linspace(-1.0, 1.0, 5)}, (jnp.ones(2),), jnp.full((), 3, jnp.int32))
    messages = []
    checkpointer = Checkpointer(tmp_path, log=messages.append)
    checkpointer.save(state, {"note": "first"})
    restored, meta = checkpointer.restore(state)
    assert meta["note"] == "first" and meta["step"] == 3
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])

    # A file changed after the save: caught by the manifest before orbax reads anything.
    checkpointer.save(state._replace(step=jnp.full((), 4, jnp.int32)), {"note": "second"})
    meta_path = tmp_path / "4" / "meta" / "metadata"
    meta_path.write_text(meta_path.read_text().replace("second", "Second"))
    restored, meta = checkpointer.restore(state)
    assert meta["note"] == "first"
    assert "file meta/metadata changed since it was written" in messages[-2]

    # Files as written, but arrays that do not match the digest recorded beside them: caught after reading.
    checkpointer.save(state._replace(step=jnp.full((), 5, jnp.int32)), {"note": "third"})
    meta_path = tmp_path / "5" / "meta" / "metadata"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "sha256": "0" * 64}))
    _write_manifest(tmp_path / "5")
    restored, meta = checkpointer.restore(state)
    assert meta["note"] == "first"
    assert "SHA-256 mismatch" in messages[-2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4.corrupt", "5.corrupt"]
