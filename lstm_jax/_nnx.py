"""Flax NNX modules: thin owners of the functional params that call :func:`lstm_jax.lstm` / ``gru`` / ``rnn``.

A module's ``layers`` attribute is the ``params[layer][direction]`` pytree with every leaf an ``nnx.Param``, so
``nnx.grad``, ``nnx.jit`` and ``nnx.Optimizer`` see the same arrays the functional core uses, and :attr:`weights`
hands them back as a plain pytree (for :func:`lstm_jax.to_torch`, say).

Dropout follows ``nnx.Dropout``: active in training mode (the default; ``model.train()``), off after
``model.eval()`` or for one call with ``deterministic=True``, with keys drawn from the ``dropout`` stream of the
``rngs`` given at construction.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from ._functional import gru, init_gru, init_lstm, init_rnn, lstm, rnn
from ._params import GRUWeights, LSTMWeights, RNNWeights
from ._regularizers import Regularizers
from ._typing import DType
from ._validate import check_params, check_rate


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


class _Recurrent(nnx.Module):
    """Shared plumbing: parameter storage, dropout mode and keys, and the call into the functional core."""

    _apply = staticmethod(lstm)
    _weights_type = LSTMWeights

    def __init__(
        self,
        params,
        *,
        dropout: float,
        batch_first: bool,
        rngs: nnx.Rngs | None,
        regularizers: Regularizers | None = None,
        matmul_dtype: DType | None = None,
        impl: str | None = None,
    ):
        check_params(type(self).__name__.lower(), params, self._weights_type)
        regularizers = regularizers or Regularizers()
        check_rate("dropout", dropout)
        if dropout > 0.0 and len(params) == 1:
            warnings.warn(
                "dropout acts between stacked layers (as in PyTorch), so it has no effect with num_layers=1",
                stacklevel=3,
            )
        stochastic = dropout > 0.0 or regularizers.active
        if stochastic and rngs is None:
            raise ValueError(f"dropout={dropout} / {regularizers} need rngs with a 'dropout' (or 'default') stream")
        self.layers = nnx.data(jax.tree.map(nnx.Param, params))
        self.dropout = dropout
        self.regularizers = regularizers
        self.matmul_dtype = matmul_dtype
        self.impl = impl
        self.batch_first = batch_first
        self.deterministic = False
        self.rngs = rngs["dropout"].fork() if stochastic else nnx.data(None)

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
        active = (self.dropout > 0.0 or self.regularizers.active) and not deterministic
        options = dict(batch_first=self.batch_first, matmul_dtype=self.matmul_dtype)
        if self.impl is not None:
            options.update(impl=self.impl)
        if active:
            options.update(dropout=self.dropout, key=self.rngs())
            if self.regularizers.active:
                options.update(dataclasses.asdict(self.regularizers))
        return type(self)._apply(self.weights, xs, initial_state, seq_lengths=seq_lengths, **options)

    @classmethod
    def from_params(
        cls, params, *, dropout: float = 0.0, batch_first: bool = False, rngs: nnx.Rngs | None = None, **options
    ):
        """Wraps existing functional params (e.g. ``lstm_jax.from_torch(torch_module)``) in a module.

        The architecture (sizes, layers, directions, projection, variants, nonlinearity, dtype) is read from
        ``params``; ``options`` are the constructor's other keywords (regularisers, ``matmul_dtype``). ``rngs`` is
        needed only for dropout and the regularisers.
        """
        check_params(cls.__name__.lower(), params, cls._weights_type)
        if dropout and rngs is None:
            raise ValueError(f"dropout={dropout} needs rngs with a 'dropout' (or 'default') stream")
        # Build through the normal constructor (NNX modules must be created by their metaclass), then swap in the
        # given arrays; the throwaway initialisation is cheap next to any use of the module.
        module = cls(
            **cls._config(params), dropout=dropout, batch_first=batch_first, rngs=rngs or nnx.Rngs(0), **options
        )
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
      peephole: peephole connections (Gers & Schmidhuber 2000).
      layer_norm: layer-normalised LSTM (Ba et al. 2016).
      dropout: rate between layers, active in training mode.
      input_dropout, recurrent_dropout: variational dropout (Gal & Ghahramani 2016), active in training mode.
      zoneout: zoneout rate, or (z_h, z_c) (Krueger et al. 2017), active in training mode.
      weight_dropout: DropConnect on W_hh (Merity et al. 2018), active in training mode.
      matmul_dtype: e.g. ``jnp.bfloat16`` for bf16 matmuls with float32 accumulation and cell state.
      impl: implementation path (:class:`lstm_jax.Impl`), as in :func:`lstm_jax.lstm`.
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
        return dict(
            _Recurrent._config(params),
            proj_size=0 if weights.w_hr is None else weights.w_hr.shape[-1],
            peephole=weights.peephole is not None,
            layer_norm=weights.layer_norm is not None,
        )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        proj_size: int = 0,
        peephole: bool = False,
        layer_norm: bool = False,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_dropout: float = 0.0,
        matmul_dtype: DType | None = None,
        impl: str = "kernel",
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
            peephole=peephole,
            layer_norm=layer_norm,
            dtype=dtype,
        )
        regularizers = Regularizers.make(
            input_dropout=input_dropout,
            recurrent_dropout=recurrent_dropout,
            zoneout=zoneout,
            weight_dropout=weight_dropout,
        )
        super().__init__(
            params,
            dropout=dropout,
            batch_first=batch_first,
            rngs=rngs,
            regularizers=regularizers,
            matmul_dtype=matmul_dtype,
            impl=impl,
        )


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
        matmul_dtype: DType | None = None,
        batch_first: bool = False,
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        params = init_gru(
            rngs.params(), input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype
        )
        super().__init__(params, dropout=dropout, batch_first=batch_first, rngs=rngs, matmul_dtype=matmul_dtype)


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
        matmul_dtype: DType | None = None,
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
        super().__init__(params, dropout=dropout, batch_first=batch_first, rngs=rngs, matmul_dtype=matmul_dtype)
