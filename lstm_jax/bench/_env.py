"""What a result was measured on: device, CPU, library versions and numerics settings."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask where the OS has one), which is what the libraries use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none): other work sharing the machine."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


TUNING_PREFIXES = ("MALLOC_", "LSTM_JAX_", "OMP_", "MKL_", "JAX_")
"""Environment variables that change the timings (glibc's allocator, the kernel's knobs, torch's threads, jax's
options such as ``JAX_DISABLE_MOST_OPTIMIZATIONS``, which the test suite sets): a run records those that are set,
so that two runs' numbers are comparable only when these match."""


def tuning_variables() -> dict[str, str]:
    """The set environment variables whose names start with one of :data:`TUNING_PREFIXES`."""
    return {name: value for name, value in sorted(os.environ.items()) if name.startswith(TUNING_PREFIXES)}


def environment() -> dict[str, Any]:
    """The ``environment`` section of the results JSON (fields documented in :mod:`lstm_jax.bench._report`)."""
    import jax

    devices = jax.devices()
    try:
        import torch

        torch_version, torch_threads = torch.__version__, torch.get_num_threads()
    except ImportError:
        torch_version, torch_threads = None, None
    precision = jax.config.jax_default_matmul_precision
    return {
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_model": cpu_model(),
        "cpu_count": cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib") or "unknown",
        "flax": _version("flax") or "unknown",
        "torch": torch_version,
        "torch_threads": torch_threads,
        "numpy": _version("numpy") or "unknown",
        "lstm_jax": _version("lstm_jax") or "unknown",
        "matmul_precision": None if precision is None else str(precision),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "tuning_env": tuning_variables(),
        "os": platform.platform(),
        "load_average": {"start": load_average(), "end": None},
    }
