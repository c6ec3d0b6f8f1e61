"""Checkpoints that lose nothing: orbax saves, written atomically, verified on restore, with fallback.

A checkpoint is the directory ``DIR/<step>`` holding two orbax items and a manifest:

* ``state``: every leaf of the :class:`~lstm_jax.train.TrainState` (params, optimizer state, step), in
  ``jax.tree.leaves`` order; the structure comes from the code that restores it, which rebuilds the same model;
* ``meta`` (JSON): the step, the SHA-256 of the state's bytes, and what the caller adds (the run's configuration,
  its RNG key and its data position);
* ``MANIFEST.json``: the SHA-256 of every file orbax wrote, added once orbax has finished.

Orbax writes a checkpoint into a temporary directory and renames it into place when complete, so a run killed while
saving (SIGKILL included) leaves no half-written ``DIR/<step>``, only a temporary directory that is ignored and
cleaned up; one killed between that rename and the manifest leaves a checkpoint without a manifest, which counts as
incomplete. On restore, the files are checked against the manifest before orbax reads them, and the arrays against
their SHA-256 after. A checkpoint that fails (a file truncated, overwritten or removed, unreadable metadata) is
reported, moved aside to ``DIR/<step>.corrupt``, and the previous one is tried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._errors import CheckpointError

FORMAT = 1
"""Version of the checkpoint layout above; a checkpoint of another version is refused, not misread."""
MANIFEST = "MANIFEST.json"

# Orbax logs every save and restore at INFO through absl; a training run prints its own, shorter account.
logging.getLogger("absl").setLevel(logging.WARNING)


def host_array(x: Any) -> np.ndarray:
    """A NumPy copy of an array; for a replicated array, one device's copy (the only kind every host can read)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def tree_sha256(tree: Any) -> str:
    """SHA-256 of a pytree's leaves (dtype, shape and bytes, in ``jax.tree.leaves`` order): equal hashes mean
    bit-identical trees.

    >>> import numpy as np
    >>> from lstm_jax.train import tree_sha256
    >>> tree_sha256({"w": np.zeros(3, np.float32)}) == tree_sha256({"w": np.zeros(3, np.float32)})
    True
    >>> tree_sha256({"w": np.zeros(3, np.float32)}) == tree_sha256({"w": -np.zeros(3, np.float32)})
    False
    """
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.ascontiguousarray(host_array(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class Checkpointer:
    """Saves and restores :class:`~lstm_jax.train.TrainState` pytrees under one directory.

    Args:
      directory: where ``<step>`` checkpoints live; created when missing.
      max_to_keep: the newest checkpoints kept (older ones are deleted); at least 2, so that a damaged newest one
        has a previous one to fall back to.
      log: receives the human-readable reports (a corrupt checkpoint skipped, ...); default: ``print``.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, log: Callable[[str], None] = print):
        try:
            import orbax.checkpoint as ocp  # deferred: orbax is only needed by runs that checkpoint
        except ImportError as error:
            raise ImportError("checkpoints need orbax-checkpoint: pip install 'lstm_jax[examples]'") from error

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 2:
            raise ValueError(f"max_to_keep must be an int ≥ 2 (one to fall back to), got {max_to_keep!r}")
        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self._log = log
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, state: Any, meta: dict[str, Any] | None = None) -> Path:
        """Writes ``state`` as checkpoint ``int(state.step)`` and returns its directory once it is on disk.

        Args:
          state: a :class:`~lstm_jax.train.TrainState` (any pytree with a ``step`` leaf works).
          meta: JSON-serialisable extras stored beside it (configuration, RNG key, data position).
        """
        ocp = self._ocp
        step = int(host_array(state.step))
        leaves = jax.tree.leaves(state)
        meta = {**(meta or {}), "format": FORMAT, "step": step, "sha256": tree_sha256(leaves)}
        args = ocp.args.Composite(state=ocp.args.StandardSave({"leaves": leaves}), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        path = self.directory / str(step)
        if jax.process_index() == 0:
            _write_manifest(path)
        return path

    def restore(
        self,
        like: Any,
        sharding: jax.sharding.Sharding | None = None,
        *,
        accept: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Restores the newest checkpoint that loads and verifies, skipping (and reporting) damaged ones.

        Args:
          like: a state with the structure, shapes and dtypes to restore (e.g. a freshly initialised one).
          sharding: where to put the restored arrays (e.g. replicated over a mesh); default: the default device.
          accept: called with a checkpoint's metadata before its arrays are read; whatever it raises (a run
            configured differently, say) propagates, and the checkpoint is left alone.

        Returns:
          ``(state, meta)``.

        Raises:
          CheckpointError: when the directory holds no checkpoint, or none that is usable.
        """
        ocp = self._ocp
        leaves, treedef = jax.tree.flatten(like)
        abstract = {"leaves": [jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding) for x in leaves]}
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        skipped = []
        for step in reversed(steps):
            try:
                _check_manifest(self.directory / str(step))
                meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                _check_meta(meta, step)
            except Exception as error:  # any failure to read means the same: this checkpoint is unusable
                self._skip(step, error)
                skipped.append(step)
                continue
            if accept is not None:
                accept(meta)
            try:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )["state"]["leaves"]
                _check_digest(meta, restored)
            except Exception as error:
                self._skip(step, error)
                skipped.append(step)
                continue
            if skipped:
                self._log(f"falling back to the previous good checkpoint, step {step}")
            return jax.tree.unflatten(treedef, restored), meta
        raise CheckpointError(f"no usable checkpoint in {self.directory}: steps {skipped} are all corrupt")

    def _skip(self, step: int, error: Exception) -> None:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        self._log(f"checkpoint {self.directory / str(step)} is corrupt or incomplete ({reason}); skipping it")
        self._set_aside(step)

    def close(self) -> None:
        """Waits for pending writes and releases orbax's resources."""
        self._manager.close()

    def _set_aside(self, step: int) -> None:
        # Out of the way (a later save of the same step would collide with it) but kept for inspection.
        source = self.directory / str(step)
        target = self.directory / f"{step}.corrupt"
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.directory / f"{step}.corrupt{suffix}"
        if source.exists():
            source.rename(target)
        self._manager.reload()


def _file_digests(path: Path) -> dict[str, str]:
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != MANIFEST
    }


def _write_manifest(path: Path) -> None:
    # Written beside and renamed into place, so a manifest is either absent or whole.
    partial = path / (MANIFEST + ".partial")
    partial.write_text(json.dumps(_file_digests(path), indent=0))
    os.replace(partial, path / MANIFEST)


def _check_manifest(path: Path) -> None:
    """Raises unless every file of the checkpoint is there, unchanged, with nothing added."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"no {MANIFEST}: the run stopped before the checkpoint was finished")
    expected, found = json.loads(manifest.read_text()), _file_digests(path)
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            raise ValueError(f"file {name} is missing")
        if name not in expected:
            raise ValueError(f"file {name} was not part of the checkpoint")
        if found[name] != expected[name]:
            raise ValueError(f"file {name} changed since it was written")


def _check_meta(meta: dict[str, Any], step: int) -> None:
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {FORMAT}")
    if meta.get("step") != step:
        raise ValueError(f"metadata says step {meta.get('step')!r}, directory says {step}")


def _check_digest(meta: dict[str, Any], leaves: list[Any]) -> None:
    digest = tree_sha256(leaves)
    if meta.get("sha256") != digest:
        raise ValueError(f"SHA-256 mismatch: stored {meta.get('sha256')!r}, data has {digest!r}")
