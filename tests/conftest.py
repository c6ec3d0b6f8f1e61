"""Test configuration: XLA's quick compile mode, strict JAX numerics, and the table of tolerances every test uses."""

import os

# Most of the suite's time on 2 cores is XLA compiling programs that then run for microseconds, so the tests
# compile with LLVM's optimisation off (jax's `jax_disable_most_optimizations`: backend optimisation level 0, no
# expensive LLVM passes). It changes how the machine code is generated, not the program: XLA's HLO passes, and so
# the fusions, buffers and custom calls that the HLO tests read, are the same, and the arithmetic is IEEE float
# either way (XLA:CPU's fast-math is off by default). Set in the environment, before jax is imported, so that every
# subprocess a test starts (the CLI, training runs) inherits it. A benchmark run records it (`tuning_env`) and says
# that its XLA timings do not count (`lstm_jax.bench._suite.cautions`); `make bench` runs without it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # after the environment above, which jax reads when it is imported
import pytest

# jax may already have been imported (by a doctest's module) before this file: set the option directly too.
# (Read as jax reads it, so that JAX_DISABLE_MOST_OPTIMIZATIONS=0 or =false runs the tests fully optimised.)
_quick_compile = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "t", "yes", "y", "on")
jax.config.update("jax_disable_most_optimizations", _quick_compile)

# Implicit rank promotion hides shape bugs (a (4H,) bias silently broadcast against the wrong axis); the library
# must be correct with it forbidden.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Full float32 matmuls wherever the suite may run (on GPU the default precision would be TF32).
jax.config.update("jax_default_matmul_precision", "float32")

# Absolute/relative tolerances by comparison. float32 on CPU: the library and the oracles sum the same products
# in different orders, so errors of a few ulps accumulate over time steps; 1e-5 holds with margin at the sizes
# tested. float64 comparisons are against the naive reference with identical maths.
TOLERANCES = {
    "float32": dict(atol=1e-5, rtol=1e-5),
    "float32_grad": dict(atol=5e-5, rtol=5e-5),
    "float64": dict(atol=1e-10, rtol=1e-10),
    # jax.test_util.check_grads compares autodiff with central finite differences (step 1e-4): their O(eps²)
    # truncation error, not rounding, sets the bar, so this is check_grads' own float64 default, kept explicit.
    "float64_finite_difference": dict(atol=1e-5, rtol=1e-5),
}


@pytest.fixture
def tol():
    return TOLERANCES
