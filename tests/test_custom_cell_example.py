"""examples/custom_cell.py: a user-written cell gets the driver's features and trains."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "custom_cell.py"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_cell", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cell_definition_is_short():
    source = EXAMPLE.read_text()
    cell = source[source.index("@dataclasses.dataclass") : source.index("# ----", source.index("class MGUCell"))]
    assert len(cell.strip().splitlines()) < 40


def test_custom_cell_gets_layers_directions_lengths_and_dropout():
    example = load_example()
    cell = example.MGUCell(5)
    params = lstm_jax.init_cell(cell, jax.random.key(0), 3, num_layers=2, bidirectional=True)
    assert params[1][0]["w_x"].shape == (10, 10)  # layer 2 reads both directions of layer 1
    xs = jax.random.normal(jax.random.key(1), (6, 4, 3))
    lengths = jnp.array([6, 1, 3, 4])
    ys, h_n = lstm_jax.scan_cell(cell, params, xs, seq_lengths=lengths, dropout=0.3, key=jax.random.key(2))
    assert ys.shape == (6, 4, 10) and h_n.shape == (4, 4, 5)
    assert np.all(np.asarray(ys)[1:, 1] == 0)
    # The forward final state of a sequence is its state at its last valid step, as for the built-in cells.
    _, h_alone = lstm_jax.scan_cell(cell, (params[0][:1],), xs[:3, 2:3])
    _, h_packed = lstm_jax.scan_cell(cell, (params[0][:1],), xs, seq_lengths=lengths)
    np.testing.assert_allclose(h_packed[0, 2], h_alone[0, 0], atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(lstm_jax.scan_cell(cell, p, xs, seq_lengths=lengths)[0]))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_custom_cell_trains_below_the_baseline():
    # 200 of the example's 800 steps already take the adding problem well below the mean-predictor's 1/6.
    assert load_example().train(steps=200, length=20) < 0.1
