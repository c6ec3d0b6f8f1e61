"""Flax NNX modules: thin owners of the functional params that call :func:`lstm_jax.lstm` / ``gru`` / ``rnn``.

A module's ``layers`` attribute is the ``params[layer][direction]`` pytree with every leaf an ``nnx.Param``, so
``nnx.grad``, ``nnx.jit`` and ``nnx.Optimizer`` see the same arrays the functional core uses, and :attr:`weights`
hands them back as a plain pytree (for :func:`lstm_jax.to_torch`, say).

Dropout follows ``nnx.Dropout``: active in training mode (the default; ``model.train()``), off after
``model.eval()`` or for one call with ``deterministic=True``, with keys drawn from the ``dropout`` stream of the
``rngs`` given at construction.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from ._functional import gru, init_gru, init_lstm, init_rnn, lstm, rnn
from ._params import GRUWeights, LSTMWeights, RNNWeights
from ._typing import DType
from ._validate import check_params


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


class _Recurrent(nnx.Module):
    """Shared plumbing: parameter storage, dropout mode and keys, and the call into the functional core."""

    _apply = staticmethod(lstm)
    _weights_type = LSTMWeights

    def __init__(self, params, *, dropout: float, batch_first: bool, rngs: nnx.Rngs | None):
        check_params(type(self).__name__.lower(), params, self._weights_type)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if dropout > 0.0 and len(params) == 1:
            warnings.warn(
                "dropout acts between stacked layers (as in PyTorch), so it has no effect with num_layers=1",
                stacklevel=3,
            )
        if dropout > 0.0 and rngs is None:
            raise ValueError(f"dropout={dropout} needs rngs with a 'dropout' (or 'default') stream")
        self.layers = nnx.data(jax.tree.map(nnx.Param, params))
        self.dropout = dropout
        self.batch_first = batch_first
        self.deterministic = False
        self.rngs = rngs["dropout"].fork() if dropout > 0.0 else nnx.data(None)

    @property
    def weights(self):
        """The params as a plain ``params[layer][direction]`` pytree of arrays (what the functional core takes)."""
        return jax.tree.map(lambda p: p[...], self.layers, is_leaf=_is_variable)

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(self, xs, initial_state=None, *, seq_lengths=None, deterministic: bool | None = None):
        """Runs the recurrence; ``deterministic`` (if given) overrides the train/eval mode for this call."""
        deterministic = self.deterministic if deterministic is None else deterministic
        active = self.dropout > 0.0 and not deterministic
        return type(self)._apply(
            self.weights,
            xs,
            initial_state,
            seq_lengths=seq_lengths,
            batch_first=self.batch_first,
            dropout=self.dropout if active else 0.0,
            key=self.rngs() if active else None,
        )

    @classmethod
    def from_params(cls, params, *, dropout: float = 0.0, batch_first: bool = False, rngs: nnx.Rngs | None = None):
        """Wraps existing functional params (e.g. ``lstm_jax.from_torch(torch_module)``) in a module.

        The architecture (sizes, layers, directions, projection, nonlinearity, dtype) is read from ``params``.
        ``rngs`` is needed only for dropout.
        """
        check_params(cls.__name__.lower(), params, cls._weights_type)
        if dropout and rngs is None:
            raise ValueError(f"dropout={dropout} needs rngs with a 'dropout' (or 'default') stream")
        # Build through the normal constructor (NNX modules must be created by their metaclass), then swap in the
        # given arrays; the throwaway initialisation is cheap next to any use of the module.
        module = cls(**cls._config(params), dropout=dropout, batch_first=batch_first, rngs=rngs or nnx.Rngs(0))
        module.layers = nnx.data(jax.tree.map(nnx.Param, params))
        return module

    @staticmethod
    def _config(params) -> dict:
        weights = params[0][0]
        return dict(
            input_size=weights.w_ih.shape[0],
            hidden_size=weights.hidden_size,
            num_layers=len(params),
            bidirectional=len(params[0]) == 2,
            dtype=weights.w_ih.dtype,
        )


class LSTM(_Recurrent):
    """A (stacked, bidirectional, projected) LSTM layer with ``torch.nn.LSTM``'s arguments and outputs.

    ``model(xs, initial_state=None, *, seq_lengths=None)`` returns ``(ys, LSTMState(h_n, c_n))``, exactly as
    :func:`lstm_jax.lstm` with this module's params (see there for shapes and semantics).

    Args:
      input_size: I.
      hidden_size: H.
      num_layers: L.
      bidirectional: D = 2 when True.
      proj_size: LSTMP projection width P (0 for none).
      dropout: rate between layers, active in training mode.
      batch_first: xs and ys are (B, T, ·).
      dtype: parameter dtype.
      rngs: ``nnx.Rngs``; ``params`` stream for init, ``dropout`` stream for dropout.

    >>> import jax, lstm_jax
    >>> from flax import nnx
    >>> model = lstm_jax.LSTM(3, 8, num_layers=2, dropout=0.1, batch_first=True, rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> ys, (h_n, c_n) = model(jax.random.normal(jax.random.key(1), (4, 5, 3)))
    >>> ys.shape, h_n.shape
    ((4, 5, 8), (2, 4, 8))
    """

    _apply = staticmethod(lstm)
    _weights_type = LSTMWeights

    @staticmethod
    def _config(params) -> dict:
        weights = params[0][0]
        proj_size = 0 if weights.w_hr is None else weights.w_hr.shape[-1]
        return dict(_Recurrent._config(params), proj_size=proj_size)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        proj_size: int = 0,
        dropout: float = 0.0,
        batch_first: bool = False,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = init_lstm(
            rngs.params(),
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            proj_size=proj_size,
            dtype=dtype,
        )
        super().__init__(params, dropout=dropout, batch_first=batch_first, rngs=rngs)


class GRU(_Recurrent):
    """A (stacked, bidirectional) GRU with ``torch.nn.GRU``'s arguments; ``model(xs, h0=None, *, seq_lengths=None)``
    returns ``(ys, h_n)`` as :func:`lstm_jax.gru`. Arguments as :class:`LSTM`, without ``proj_size``.

    >>> import jax, lstm_jax
    >>> from flax import nnx
    >>> ys, h_n = lstm_jax.GRU(3, 8, rngs=nnx.Rngs(0))(jax.random.normal(jax.random.key(1), (5, 4, 3)))
    >>> ys.shape, h_n.shape
    ((5, 4, 8), (1, 4, 8))
    """

    _apply = staticmethod(gru)
    _weights_type = GRUWeights

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        batch_first: bool = False,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = init_gru(
            rngs.params(), input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype
        )
        super().__init__(params, dropout=dropout, batch_first=batch_first, rngs=rngs)


class RNN(_Recurrent):
    """A (stacked, bidirectional) Elman RNN with ``torch.nn.RNN``'s arguments (``nonlinearity`` "tanh" or "relu");
    called as :class:`GRU`, returning ``(ys, h_n)`` as :func:`lstm_jax.rnn`.

    >>> import jax, lstm_jax
    >>> from flax import nnx
    >>> model = lstm_jax.RNN(3, 8, nonlinearity="relu", rngs=nnx.Rngs(0))
    >>> model(jax.random.normal(jax.random.key(1), (5, 4, 3)))[0].shape
    (5, 4, 8)
    """

    _apply = staticmethod(rnn)
    _weights_type = RNNWeights

    @staticmethod
    def _config(params) -> dict:
        return dict(_Recurrent._config(params), nonlinearity=params[0][0].nonlinearity)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        nonlinearity: str = "tanh",
        dropout: float = 0.0,
        batch_first: bool = False,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = init_rnn(
            rngs.params(),
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            nonlinearity=nonlinearity,
            dtype=dtype,
        )
        super().__init__(params, dropout=dropout, batch_first=batch_first, rngs=rngs)
