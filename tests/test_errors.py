"""Every error the library promises: a ValueError whose message names the argument and, for shapes, the expected
and the given shape. Nothing here runs a recurrence, so the file costs no compilation beyond parameter init."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import lstm_jax

# Sizes distinct per axis: T time, B batch, I input, H hidden, P projection; L = 2 layers, D = 2 directions.
T, B, I, H, P = 4, 3, 7, 5, 2
L, D = 2, 2


def raises(message: str):
    """pytest.raises(ValueError) on a literal fragment of the message."""
    return pytest.raises(ValueError, match=re.escape(message))


@pytest.fixture(scope="module")
def lstm_params():
    return lstm_jax.init_lstm(jax.random.key(0), I, H, num_layers=L, bidirectional=True)


@pytest.fixture(scope="module")
def lstmp_params():
    return lstm_jax.init_lstm(jax.random.key(1), I, H, num_layers=L, bidirectional=True, proj_size=P)


@pytest.fixture(scope="module")
def gru_params():
    return lstm_jax.init_gru(jax.random.key(2), I, H, num_layers=L, bidirectional=True)


@pytest.fixture(scope="module")
def rnn_params():
    return lstm_jax.init_rnn(jax.random.key(3), I, H, num_layers=L, bidirectional=True, nonlinearity="relu")


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)


# --- xs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, batch_first, message",
    [
        ((T, I), False, f"xs must have rank 3 (T, B, I) with batch_first=False, got shape ({T}, {I})"),
        ((B, T, 1, I), True, f"xs must have rank 3 (B, T, I) with batch_first=True, got shape ({B}, {T}, 1, {I})"),
    ],
    ids=["rank_2", "rank_4_batch_first"],
)
def test_xs_of_wrong_rank(lstm_params, shape, batch_first, message):
    with raises(message):
        lstm_jax.lstm(lstm_params, np.zeros(shape, np.float32), batch_first=batch_first)


def test_xs_input_size_not_matching_params(lstm_params):
    with raises(f"xs has input size {I + 1} (last axis), but params expect input_size={I}"):
        lstm_jax.lstm(lstm_params, np.zeros((T, B, I + 1), np.float32))


@pytest.mark.parametrize("shape", [(0, B, I), (T, 0, I)], ids=["no_steps", "no_sequences"])
def test_xs_empty(lstm_params, shape):
    with raises(f"xs must have at least one time step and one sequence, got shape {shape}"):
        lstm_jax.lstm(lstm_params, np.zeros(shape, np.float32))


# --- initial state ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h0_shape, c0_shape, message",
    [
        ((L * D, B + 1, H), (L * D, B, H), f"initial_state h_0 must have shape ({L * D}, {B}, {H})"),
        ((L, B, H), (L * D, B, H), f"initial_state h_0 must have shape ({L * D}, {B}, {H})"),
        ((L * D, B, H), (L * D, 1, H), f"initial_state c_0 must have shape ({L * D}, {B}, {H})"),
        ((L * D, B, H), (L * D, B, H + 1), f"initial_state c_0 must have shape ({L * D}, {B}, {H})"),
    ],
    ids=["h0_batch", "h0_layers", "c0_batch", "c0_hidden"],
)
def test_lstm_initial_state_of_wrong_shape(lstm_params, xs, h0_shape, c0_shape, message):
    given = h0_shape if "h_0" in message else c0_shape
    with raises(f"{message} (L·D, B, features), got {given}"):
        lstm_jax.lstm(lstm_params, xs, (np.zeros(h0_shape, np.float32), np.zeros(c0_shape, np.float32)))


def test_lstmp_h0_must_have_the_projected_width(lstmp_params, xs):
    """With proj_size, h is (…, P) but c stays (…, H): an h_0 of width H is wrong."""
    h0, c0 = np.zeros((L * D, B, H), np.float32), np.zeros((L * D, B, H), np.float32)
    with raises(f"initial_state h_0 must have shape ({L * D}, {B}, {P}) (L·D, B, features), got ({L * D}, {B}, {H})"):
        lstm_jax.lstm(lstmp_params, xs, (h0, c0))


def test_lstm_initial_state_must_be_a_pair(lstm_params, xs):
    with raises("initial_state must be a pair (h_0, c_0)"):
        lstm_jax.lstm(lstm_params, xs, np.zeros((L * D, B, H), np.float32))


@pytest.mark.parametrize("apply", ["gru", "rnn"])
@pytest.mark.parametrize("shape", [(L * D, 1, H), (L * D, B, H + 1), (L, B, H)], ids=["batch", "hidden", "layers"])
def test_single_state_h0_of_wrong_shape(apply, shape, gru_params, rnn_params, xs):
    params = gru_params if apply == "gru" else rnn_params
    with raises(f"h0 must have shape ({L * D}, {B}, {H}) (L·D, B, features), got {shape}"):
        getattr(lstm_jax, apply)(params, xs, np.zeros(shape, np.float32))


# --- seq_lengths ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [np.ones((B + 1,), np.int32), np.ones((B, 1), np.int32), np.int32(T)])
def test_seq_lengths_of_wrong_shape(lstm_params, xs, lengths):
    with raises(f"seq_lengths must have shape (B,) = ({B},), got {np.shape(lengths)}"):
        lstm_jax.lstm(lstm_params, xs, seq_lengths=lengths)


@pytest.mark.parametrize("lengths", [np.full((B,), 2.0, np.float32), np.ones((B,), bool)], ids=["float", "bool"])
def test_seq_lengths_of_non_integer_dtype(lstm_params, xs, lengths):
    with raises(f"seq_lengths must have an integer dtype, got {lengths.dtype}"):
        lstm_jax.lstm(lstm_params, xs, seq_lengths=lengths)


@pytest.mark.parametrize("lengths, low, high", [((0, 2, T), 0, T), ((1, T + 1, 2), 1, T + 1)], ids=["zero", "beyond_T"])
def test_seq_lengths_outside_one_to_T(gru_params, xs, lengths, low, high):
    with raises(f"seq_lengths must lie in [1, T={T}], got min {low} and max {high}"):
        lstm_jax.gru(gru_params, xs, seq_lengths=np.array(lengths, np.int32))


def test_concrete_seq_lengths_are_checked_inside_jit(gru_params, xs):
    """Lengths closed over by a jitted function are concrete (a tuple, a numpy array): they are validated and
    used, not converted to a tracer and then handed to numpy."""

    def run(lengths):
        return jax.jit(lambda xs: lstm_jax.gru(gru_params, xs, seq_lengths=lengths)[0])(xs)

    assert run(np.array([1, T, 2], np.int32)).shape == (T, B, D * H)
    assert run((1, T, 2)).shape == (T, B, D * H)
    with raises(f"seq_lengths must lie in [1, T={T}], got min 0 and max {T}"):
        run(np.array([0, T, 2], np.int32))


# --- dropout ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("apply", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_outside_zero_to_one(apply, dropout, lstm_params, gru_params, rnn_params, xs):
    params = {"lstm": lstm_params, "gru": gru_params, "rnn": rnn_params}[apply]
    with raises(f"dropout must be a float in [0, 1), got {dropout!r}"):
        getattr(lstm_jax, apply)(params, xs, dropout=dropout, key=jax.random.key(0))


def test_dropout_without_key(lstm_params, xs):
    with raises("dropout=0.5 needs a PRNG key"):
        lstm_jax.lstm(lstm_params, xs, dropout=0.5)


# --- params -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "apply, given, expected, given_name",
    [
        ("lstm", "gru", "LSTMWeights", "GRUWeights"),
        ("gru", "lstm", "GRUWeights", "LSTMWeights"),
        ("rnn", "gru", "RNNWeights", "GRUWeights"),
    ],
)
def test_params_of_the_wrong_kind(apply, given, expected, given_name, lstm_params, gru_params, xs):
    params = {"lstm": lstm_params, "gru": gru_params}[given]
    with raises(f"params for {apply} must hold {expected}, got {given_name}"):
        getattr(lstm_jax, apply)(params, xs)


def test_params_not_nested_by_layer_and_direction(lstm_params, xs):
    with raises("params must be params[layer][direction]"):
        lstm_jax.lstm(lstm_params[0][0], xs)


# --- from_torch / to_torch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_type", [torch.nn.Linear, torch.nn.LSTMCell], ids=lambda m: m.__name__)
def test_from_torch_of_an_unsupported_module(module_type):
    with raises(f"module must be a torch.nn.LSTM, torch.nn.GRU or torch.nn.RNN, got {module_type.__name__}"):
        lstm_jax.from_torch(module_type(I, H))


@pytest.mark.parametrize("module_type", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
def test_from_torch_without_bias(module_type):
    with raises("torch module has bias=False"):
        lstm_jax.from_torch(module_type(I, H, bias=False))


def test_to_torch_into_an_unsupported_module(gru_params):
    with raises("module must be a torch.nn.LSTM, torch.nn.GRU or torch.nn.RNN, got Linear"):
        lstm_jax.to_torch(gru_params, torch.nn.Linear(I, H))


def test_to_torch_into_a_module_without_bias(gru_params):
    with raises("torch module has bias=False"):
        lstm_jax.to_torch(gru_params, torch.nn.GRU(I, H, num_layers=L, bidirectional=True, bias=False))


@pytest.mark.parametrize(
    "module, message",
    [
        (
            torch.nn.GRU(I, H, num_layers=1, bidirectional=True),
            f"params have {L} layers x {D} directions, but the torch module has 1 layers x {D} directions",
        ),
        (
            torch.nn.GRU(I, H, num_layers=L),
            f"params have {L} layers x {D} directions, but the torch module has {L} layers x 1 directions",
        ),
        (
            torch.nn.GRU(I, H + 1, num_layers=L, bidirectional=True),
            f"weight_ih_l0: the torch module expects shape ({3 * (H + 1)}, {I}), params give ({3 * H}, {I})",
        ),
        (
            torch.nn.GRU(I + 1, H, num_layers=L, bidirectional=True),
            f"weight_ih_l0: the torch module expects shape ({3 * H}, {I + 1}), params give ({3 * H}, {I})",
        ),
        (
            torch.nn.LSTM(I, H, num_layers=L, bidirectional=True),
            "params hold GRUWeights, but the torch module is a LSTM",
        ),
    ],
    ids=["layers", "directions", "hidden_size", "input_size", "type"],
)
def test_to_torch_into_a_mismatched_module(gru_params, module, message):
    with raises(message):
        lstm_jax.to_torch(gru_params, module)


def test_to_torch_proj_size_mismatch(lstm_params, lstmp_params):
    with raises(f"params lack a projection w_hr, but the torch module has proj_size={P}"):
        lstm_jax.to_torch(lstm_params, torch.nn.LSTM(I, H, num_layers=L, bidirectional=True, proj_size=P))
    with raises("params have a projection w_hr, but the torch module has proj_size=0"):
        lstm_jax.to_torch(lstmp_params, torch.nn.LSTM(I, H, num_layers=L, bidirectional=True))
    with raises(f"weight_hh_l0: the torch module expects shape ({4 * H}, {P + 1}), params give ({4 * H}, {P})"):
        lstm_jax.to_torch(lstmp_params, torch.nn.LSTM(I, H, num_layers=L, bidirectional=True, proj_size=P + 1))


def test_to_torch_nonlinearity_mismatch(rnn_params):
    with raises("params use nonlinearity='relu', the torch module 'tanh'"):
        lstm_jax.to_torch(rnn_params, torch.nn.RNN(I, H, num_layers=L, bidirectional=True, nonlinearity="tanh"))


@pytest.mark.parametrize("variant", ["peephole", "layer_norm"])
def test_to_torch_of_params_torch_cannot_represent(variant):
    """torch.nn.LSTM has no peepholes and no layer norm: writing such params would silently drop weights."""
    params = lstm_jax.init_lstm(jax.random.key(0), I, H, **{variant: True})
    with pytest.raises(ValueError, match=variant):
        lstm_jax.to_torch(params, torch.nn.LSTM(I, H))


def test_to_torch_of_empty_params():
    """No layers at all is a ValueError about params, not an IndexError from inside the message formatting."""
    with pytest.raises(ValueError, match="params"):
        lstm_jax.to_torch((), torch.nn.GRU(I, H))


def test_failed_to_torch_leaves_the_module_untouched(gru_params):
    """to_torch validates every layer before writing any, so a mismatch deep in the stack (here layer 1's input
    kernel) does not leave the module half overwritten."""
    bad_layer = tuple(lstm_jax.GRUWeights(w.w_ih[: D * H - 1], w.w_hh, w.b_ih, w.b_hh) for w in gru_params[1])
    module = torch.nn.GRU(I, H, num_layers=L, bidirectional=True)
    before = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    with raises(f"weight_ih_l1: the torch module expects shape ({3 * H}, {D * H}), params give ({3 * H}, {D * H - 1})"):
        lstm_jax.to_torch((gru_params[0], bad_layer), module)
    changed = [name for name, tensor in module.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed == []


# --- init_* -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", [lstm_jax.init_lstm, lstm_jax.init_gru, lstm_jax.init_rnn], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "input_size, hidden_size, num_layers, message",
    [
        (I, 0, 1, "hidden_size must be a positive int, got 0"),
        (I, 5.0, 1, "hidden_size must be a positive int, got 5.0"),
        (I, True, 1, "hidden_size must be a positive int, got True"),
        (0, H, 1, "input_size must be a positive int, got 0"),
        (I, H, 0, "num_layers must be a positive int, got 0"),
    ],
)
def test_init_with_invalid_sizes(init, input_size, hidden_size, num_layers, message):
    with raises(message):
        init(jax.random.key(0), input_size, hidden_size, num_layers=num_layers)


@pytest.mark.parametrize("proj_size", [H, H + 1, -1])
def test_init_lstm_with_invalid_proj_size(proj_size):
    with raises(f"proj_size must be an int in [0, hidden_size={H}), got {proj_size}"):
        lstm_jax.init_lstm(jax.random.key(0), I, H, proj_size=proj_size)


def test_init_rnn_with_unknown_nonlinearity():
    with raises("nonlinearity must be one of ('tanh', 'relu'), got 'sigmoid'"):
        lstm_jax.init_rnn(jax.random.key(0), I, H, nonlinearity="sigmoid")


# --- NNX modules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_type", [lstm_jax.LSTM, lstm_jax.GRU, lstm_jax.RNN], ids=lambda m: m.__name__)
@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_nnx_module_with_bad_dropout(module_type, dropout):
    with raises(f"dropout must be a float in [0, 1), got {dropout!r}"):
        module_type(I, H, num_layers=L, dropout=dropout, rngs=nnx.Rngs(0))


def test_nnx_from_params_with_dropout_but_no_rngs(lstm_params):
    with raises("dropout=0.5 needs rngs with a 'dropout' (or 'default') stream"):
        lstm_jax.LSTM.from_params(lstm_params, dropout=0.5)


def test_nnx_from_params_of_the_wrong_kind(gru_params):
    with raises("params for lstm must hold LSTMWeights, got GRUWeights"):
        lstm_jax.LSTM.from_params(gru_params)


def test_nnx_rnn_with_unknown_nonlinearity():
    with raises("nonlinearity must be one of ('tanh', 'relu'), got 'gelu'"):
        lstm_jax.RNN(I, H, nonlinearity="gelu", rngs=nnx.Rngs(0))


def test_nnx_lstm_with_invalid_proj_size():
    with raises(f"proj_size must be an int in [0, hidden_size={H}), got {H}"):
        lstm_jax.LSTM(I, H, proj_size=H, rngs=nnx.Rngs(0))
