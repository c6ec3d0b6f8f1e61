"""lstm_jax: a PyTorch-exact LSTM, GRU and Elman RNN for JAX, as pure functions and Flax NNX modules.

Shape notation (T time, B batch, I input, H hidden, P projection, D directions, L layers) is defined in
:mod:`lstm_jax._typing`. Gate order is PyTorch's: i, f, g, o for LSTM and r, z, n for GRU.
"""

from ._cells import LSTMState as LSTMState
from ._cells import gru_cell as gru_cell
from ._cells import lstm_cell as lstm_cell
from ._cells import rnn_cell as rnn_cell
from ._functional import gru as gru
from ._functional import lstm as lstm
from ._functional import rnn as rnn
from ._nnx import GRU as GRU
from ._nnx import LSTM as LSTM
from ._nnx import RNN as RNN
from ._params import GRU_GATES as GRU_GATES
from ._params import LSTM_GATES as LSTM_GATES
from ._params import GRUWeights as GRUWeights
from ._params import LSTMWeights as LSTMWeights
from ._params import RNNWeights as RNNWeights
from ._params import init_gru as init_gru
from ._params import init_lstm as init_lstm
from ._params import init_rnn as init_rnn
from ._torch import from_torch as from_torch
from ._torch import to_torch as to_torch

__version__ = "0.1.0"
