"""Data parallelism with ``jax.sharding``: a 1-D ``Mesh`` over the devices, the batch sharded, the state replicated.

Every training step runs one SPMD program over the mesh: each device computes the loss and gradients of its slice
of the batch, XLA inserts the all-reduce that averages the gradients (the loss is a mean over the global batch), and
every device applies the same update to its replica of the parameters. With one device this is plain training; the
training loop uses all local devices by default, so data parallelism switches on by itself when there are several.

Several hosts (multi-host, e.g. a TPU pod slice or GPU nodes): call :func:`initialize_distributed` (which is
``jax.distributed.initialize``) at the start of every process, before anything else touches JAX; ``jax.devices()``
then lists the devices of all hosts, the mesh spans them, and :meth:`DataParallel.shard_batch` builds each global
batch from the slices that belong to the process's own devices. Every process computes the same global batch (the
data order is a function of seed and step), so no data moves between hosts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
"""Name of the mesh axis the batch is split over."""


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A mesh of devices along :data:`DATA_AXIS` and the two shardings data-parallel training needs."""

    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) axis split over the devices, other axes whole."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device (params, optimizer state, metrics)."""
        return NamedSharding(self.mesh, PartitionSpec())

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.num_devices:
            raise ValueError(
                f"--batch {batch_size} must be a multiple of the number of devices ({self.num_devices}) for "
                "data-parallel training"
            )

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Places a host batch (the global batch, leading axis B) on the mesh, split along B.

        ``jax.make_array_from_callback`` asks only for the slices of this process's devices, so the same call works
        on one host and on many.
        """
        sharding = self.batch_sharding
        return {
            name: jax.make_array_from_callback(array.shape, sharding, lambda index, array=array: array[index])
            for name, array in batch.items()
        }

    def place_eval_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Sharded like a training batch when the device count divides B, else replicated."""
        (size,) = {array.shape[0] for array in batch.values()}
        if size % self.num_devices == 0:
            return self.shard_batch(batch)
        return {
            name: jax.make_array_from_callback(array.shape, self.replicated, lambda index, array=array: array[index])
            for name, array in batch.items()
        }

    def replicate(self, tree: Any) -> Any:
        """Copies a pytree of arrays to every device of the mesh."""
        return jax.device_put(tree, self.replicated)


def data_parallel(num_devices: int | None = None) -> DataParallel:
    """A :class:`DataParallel` over the first ``num_devices`` of ``jax.devices()`` (all of them when None).

    >>> from lstm_jax.train import data_parallel
    >>> data_parallel(1).num_devices
    1
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(f"--devices must be an int in [1, {len(devices)}] (the devices JAX sees), got {num_devices!r}")
    return DataParallel(Mesh(np.array(devices[:num_devices]), (DATA_AXIS,)))


def initialize_distributed(**kwargs: Any) -> None:
    """Joins this process to a multi-host run: ``jax.distributed.initialize(**kwargs)``.

    On Cloud TPU, SLURM and Open MPI clusters the coordinator address, process count and process id are detected;
    elsewhere pass them: ``coordinator_address="host0:1234", num_processes=2, process_id=0`` (the address may also
    come from ``JAX_COORDINATOR_ADDRESS``). Must run before any other JAX call.
    """
    jax.distributed.initialize(**kwargs)
