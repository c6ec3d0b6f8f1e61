"""lstm_jax: a PyTorch-exact LSTM, GRU and Elman RNN for JAX, as pure functions and Flax NNX modules.

Shape notation (T time, B batch, I input, H hidden, P projection, D directions, L layers) is defined in
:mod:`lstm_jax._typing`. Gate order is PyTorch's: i, f, g, o for LSTM and r, z, n for GRU.
"""

from ._cells import Cell as Cell
from ._cells import GRUCell as GRUCell
from ._cells import LSTMCell as LSTMCell
from ._cells import LSTMState as LSTMState
from ._cells import RNNCell as RNNCell
from ._cells import gru_cell as gru_cell
from ._cells import lstm_cell as lstm_cell
from ._cells import matmul as matmul
from ._cells import rnn_cell as rnn_cell
from ._driver import Impl as Impl
from ._functional import gru as gru
from ._functional import init_cell as init_cell
from ._functional import init_gru as init_gru
from ._functional import init_lstm as init_lstm
from ._functional import init_rnn as init_rnn
from ._functional import lstm as lstm
from ._functional import rnn as rnn
from ._functional import scan_cell as scan_cell
from ._nnx import GRU as GRU
from ._nnx import LSTM as LSTM
from ._nnx import RNN as RNN
from ._params import GRU_GATES as GRU_GATES
from ._params import LSTM_GATES as LSTM_GATES
from ._params import GRUWeights as GRUWeights
from ._params import LayerNormWeights as LayerNormWeights
from ._params import LSTMWeights as LSTMWeights
from ._params import RNNWeights as RNNWeights
from ._tbptt import truncated_bptt as truncated_bptt
from ._torch import from_torch as from_torch
from ._torch import to_torch as to_torch

__version__ = "0.1.0"
