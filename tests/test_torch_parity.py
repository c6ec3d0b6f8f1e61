"""PyTorch as the oracle: ``torch.nn.LSTM`` (with and without ``proj_size``), ``torch.nn.GRU`` and ``torch.nn.RNN``
(tanh and relu), their weights imported with :func:`lstm_jax.from_torch`.

Each case compares outputs, final states, and the gradients w.r.t. the input, the initial state and every torch
parameter of one scalar loss that weighs every output and every final state with its own random coefficient, so
that a wrong value anywhere (a swapped gate, a transposed kernel, a mis-ordered direction, a padded step that leaks)
changes the loss. Torch's gradients are mapped onto the lstm_jax leaves by name here, independently of
``from_torch``: ``weight_ih_l{k}{_reverse}.grad`` is ``grads[k][d].w_ih`` transposed, and so on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lstm_jax

# Sizes distinct per axis: I input, H hidden, P projection (B is 1 or 3, T is 1, 6 or 17).
INPUT_SIZE, HIDDEN_SIZE, PROJ_SIZE = 7, 5, 2

APPLY = {"lstm": lstm_jax.lstm, "gru": lstm_jax.gru, "rnn_tanh": lstm_jax.rnn, "rnn_relu": lstm_jax.rnn}


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # a key of APPLY
    num_layers: int
    bidirectional: bool
    steps: int  # T
    batch: int  # B
    batch_first: bool
    lengths: tuple[int, ...] | None  # packed sequence lengths, unsorted; None for full-length sequences
    initial_state: bool
    proj_size: int = 0

    @property
    def id(self) -> str:
        return "-".join(
            [
                self.kind + ("p" if self.proj_size else ""),
                f"L{self.num_layers}",
                "bi" if self.bidirectional else "uni",
                f"T{self.steps}",
                f"B{self.batch}",
                "batch_first" if self.batch_first else "time_major",
                "packed" if self.lengths else "full",
                "h0" if self.initial_state else "zero_state",
            ]
        )


CASES = [
    Case("lstm", 2, True, 17, 3, False, (9, 17, 1), True),
    Case("lstm", 2, True, 6, 3, True, (6, 1, 4), True, proj_size=PROJ_SIZE),
    Case("lstm", 1, False, 1, 1, False, None, False),
    Case("lstm", 1, True, 1, 3, True, (1, 1, 1), True, proj_size=PROJ_SIZE),
    Case("gru", 2, True, 6, 3, True, (2, 6, 1), True),
    Case("gru", 1, False, 17, 1, False, (9,), True),
    Case("gru", 1, False, 1, 1, True, None, False),
    Case("rnn_tanh", 2, True, 6, 3, False, (3, 1, 6), True),
    Case("rnn_tanh", 1, True, 1, 1, True, None, False),
    Case("rnn_relu", 2, True, 17, 3, True, (17, 5, 1), True),
    Case("rnn_relu", 1, False, 6, 1, False, None, True),
]


def make_torch_module(case: Case, *, dropout: float = 0.0) -> torch.nn.Module:
    kwargs = dict(
        num_layers=case.num_layers,
        bidirectional=case.bidirectional,
        batch_first=case.batch_first,
        dropout=dropout,
    )
    if case.kind == "lstm":
        return torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, proj_size=case.proj_size, **kwargs)
    if case.kind == "gru":
        return torch.nn.GRU(INPUT_SIZE, HIDDEN_SIZE, **kwargs)
    return torch.nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=case.kind.removeprefix("rnn_"), **kwargs)


def random_inputs(case: Case, rng: np.random.Generator, dtype) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """xs in the case's layout, and the initial state as a list of arrays (h_0[, c_0]) or None."""
    T, B = case.steps, case.batch
    xs = rng.standard_normal((B, T, INPUT_SIZE) if case.batch_first else (T, B, INPUT_SIZE)).astype(dtype)
    if not case.initial_state:
        return xs, None
    num_states = case.num_layers * (2 if case.bidirectional else 1)
    output_size = case.proj_size or HIDDEN_SIZE
    state = [rng.standard_normal((num_states, B, output_size)).astype(dtype)]
    if case.kind == "lstm":
        state.append(rng.standard_normal((num_states, B, HIDDEN_SIZE)).astype(dtype))
    return xs, state


def torch_forward(module, case: Case, xs: torch.Tensor, state: list[torch.Tensor] | None):
    """Runs the torch module as a user would: packed when there are lengths, padded back to T.

    Returns ``(ys, [h_n] or [h_n, c_n])``.
    """
    hx = None if state is None else (tuple(state) if case.kind == "lstm" else state[0])
    if case.lengths is None:
        ys, final = module(xs, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xs, torch.tensor(case.lengths), batch_first=case.batch_first, enforce_sorted=False
        )
        packed_ys, final = module(packed, hx)
        ys, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_ys, batch_first=case.batch_first, total_length=case.steps)
    return ys, list(final) if case.kind == "lstm" else [final]


def jax_forward(params, case: Case, xs, state, lengths):
    """lstm_jax's counterpart of :func:`torch_forward`: ``(ys, [h_n] or [h_n, c_n])``."""
    initial_state = None if state is None else (tuple(state) if case.kind == "lstm" else state[0])
    ys, final = APPLY[case.kind](params, xs, initial_state, seq_lengths=lengths, batch_first=case.batch_first)
    return ys, list(final) if case.kind == "lstm" else [final]


def torch_suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def assert_weight_grads_match(module, case: Case, grads, tolerance) -> None:
    """Compares torch's ``.grad`` of every parameter with the lstm_jax gradient leaf it maps to."""
    torch_names = {name for name, _ in module.named_parameters()}
    compared = set()
    # PyTorch name -> (lstm_jax field, whether lstm_jax stores it transposed).
    mapping = {"weight_ih": ("w_ih", True), "weight_hh": ("w_hh", True), "bias_ih": ("b_ih", False)}
    mapping["bias_hh"] = ("b_hh", False)
    if case.proj_size:
        mapping["weight_hr"] = ("w_hr", True)
    for layer in range(case.num_layers):
        for direction in range(2 if case.bidirectional else 1):
            for torch_name, (field, transposed) in mapping.items():
                name = torch_name + torch_suffix(layer, direction)
                expected = getattr(module, name).grad.numpy()
                actual = np.asarray(getattr(grads[layer][direction], field))
                np.testing.assert_allclose(
                    actual.T if transposed else actual, expected, **tolerance, err_msg=f"d loss / d {name}"
                )
                compared.add(name)
    assert compared == torch_names


def check_parity(case: Case, *, dtype, value_tol, grad_tol, seed: int) -> None:
    torch.manual_seed(seed)
    module = make_torch_module(case).to(torch.float64 if dtype == np.float64 else torch.float32)
    params = lstm_jax.from_torch(module)
    rng = np.random.default_rng(seed)
    xs, state = random_inputs(case, rng, dtype)

    # torch: one loss over ys and every final state, each weighted by random coefficients.
    xs_t = torch.tensor(xs, requires_grad=True)
    state_t = None if state is None else [torch.tensor(s, requires_grad=True) for s in state]
    ys_t, final_t = torch_forward(module, case, xs_t, state_t)
    coefficients = [rng.standard_normal(tuple(a.shape)).astype(dtype) for a in [ys_t, *final_t]]
    loss_t = sum((a * torch.tensor(w)).sum() for a, w in zip([ys_t, *final_t], coefficients, strict=True))
    loss_t.backward()

    def loss(params, xs, state, lengths):
        ys, final = jax_forward(params, case, xs, state, lengths)
        return sum(jnp.vdot(w, a) for a, w in zip([ys, *final], coefficients, strict=True)), (ys, final)

    (loss_j, (ys_j, final_j)), (grad_params, grad_xs, grad_state) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    )(params, xs, state, None if case.lengths is None else np.asarray(case.lengths, np.int32))

    np.testing.assert_allclose(ys_j, ys_t.detach().numpy(), **value_tol, err_msg="ys")
    for name, actual, expected in zip(["h_n", "c_n"], final_j, final_t, strict=False):
        np.testing.assert_allclose(actual, expected.detach().numpy(), **value_tol, err_msg=name)
    np.testing.assert_allclose(loss_j, loss_t.item(), **value_tol, err_msg="loss")

    np.testing.assert_allclose(grad_xs, xs_t.grad.numpy(), **grad_tol, err_msg="d loss / d xs")
    if state is not None:
        for name, actual, expected in zip(["h_0", "c_0"], grad_state, state_t, strict=False):
            np.testing.assert_allclose(actual, expected.grad.numpy(), **grad_tol, err_msg=f"d loss / d {name}")
    assert_weight_grads_match(module, case, grad_params, grad_tol)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_torch_float32(case, tol):
    check_parity(case, dtype=np.float32, value_tol=tol["float32"], grad_tol=tol["float32_grad"], seed=0)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id)
        for c in [
            Case("lstm", 2, True, 6, 3, True, (6, 1, 4), True, proj_size=PROJ_SIZE),
            Case("gru", 2, True, 6, 3, False, (2, 6, 1), True),
        ]
    ],
)
def test_matches_torch_float64(case, tol):
    # In float64 the float32 rounding noise vanishes, so a tolerance of 1e-10 would expose any real discrepancy
    # that the float32 tolerances could hide.
    with jax.enable_x64(True):
        check_parity(case, dtype=np.float64, value_tol=tol["float64"], grad_tol=tol["float64"], seed=1)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_torch_eval_mode_dropout_equals_no_dropout(kind, tol):
    """Torch's dropout draws from its own RNG, so only its eval mode (dropout off) can be compared bitwise-ish:
    a torch module built with dropout > 0, in eval mode, is lstm_jax with dropout=0."""
    case = Case(kind, 2, True, 6, 3, True, None, False)
    torch.manual_seed(2)
    module = make_torch_module(case, dropout=0.4).eval()
    xs = np.random.default_rng(2).standard_normal((case.batch, case.steps, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        ys_t, final_t = torch_forward(module, case, torch.tensor(xs), None)
    ys_j, final_j = jax_forward(lstm_jax.from_torch(module), case, xs, None, None)
    np.testing.assert_allclose(ys_j, ys_t.numpy(), **tol["float32"], err_msg="ys")
    for name, actual, expected in zip(["h_n", "c_n"], final_j, final_t, strict=False):
        np.testing.assert_allclose(actual, expected.numpy(), **tol["float32"], err_msg=name)
