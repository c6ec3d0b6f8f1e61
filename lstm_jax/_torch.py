"""Exact weight import/export with ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN``.

Torch is imported only inside these functions, so ``lstm_jax`` imports and runs without it. The mapping is a
transpose per kernel (PyTorch stores ``weight_ih_l{k}`` as (G·H, I); lstm_jax stores ``w_ih`` as (I, G·H)) with the
gate blocks already in the same order, so values round-trip bit for bit.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._params import GRUWeights, LSTMWeights, RNNWeights
from ._validate import check_params


def _kind(module):
    import torch

    # LSTM and GRU subclass RNNBase, not RNN, so the order of the checks does not matter.
    for cls, weights_type in ((torch.nn.LSTM, LSTMWeights), (torch.nn.GRU, GRUWeights), (torch.nn.RNN, RNNWeights)):
        if isinstance(module, cls):
            return weights_type
    raise ValueError(
        f"module must be a torch.nn.LSTM, torch.nn.GRU or torch.nn.RNN, got {type(module).__name__} "
        "(single-step torch cells such as LSTMCell are not supported)"
    )


def _check_supported(module) -> None:
    if not module.bias:
        raise ValueError(
            "torch module has bias=False, which lstm_jax does not support; create it with bias=True "
            "(the default) or zero its biases"
        )


def _suffixes(module):
    """(layer, direction, PyTorch parameter-name suffix) in params[layer][direction] order."""
    directions = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        for direction in range(directions):
            yield layer, direction, f"_l{layer}" + ("_reverse" if direction else "")


def _to_jax(tensor):
    return jnp.asarray(tensor.detach().cpu().numpy())


def from_torch(module):
    """Reads the weights of a ``torch.nn.LSTM``, ``torch.nn.GRU`` or ``torch.nn.RNN`` into lstm_jax params.

    ``proj_size`` and the RNN's ``nonlinearity`` are carried over; ``batch_first`` and ``dropout`` are call-time
    arguments in lstm_jax (``lstm(params, xs, batch_first=..., dropout=..., key=...)``), so pass them there.

    Args:
      module: the torch module.

    Returns:
      ``params[layer][direction]`` for :func:`lstm_jax.lstm`, :func:`lstm_jax.gru` or :func:`lstm_jax.rnn`,
      in the torch parameters' dtype.

    Raises:
      ValueError: for another module type, or ``bias=False``.

    >>> import torch, lstm_jax
    >>> params = lstm_jax.from_torch(torch.nn.LSTM(3, 8, num_layers=2, proj_size=4))
    >>> params[1][0].w_ih.shape, params[1][0].w_hr.shape
    ((4, 32), (8, 4))
    """
    weights_type = _kind(module)
    _check_supported(module)
    layers: list[list] = [[] for _ in range(module.num_layers)]
    for layer, _, suffix in _suffixes(module):
        tensors = {name: getattr(module, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        fields = dict(
            w_ih=_to_jax(tensors["weight_ih"]).T,
            w_hh=_to_jax(tensors["weight_hh"]).T,
            b_ih=_to_jax(tensors["bias_ih"]),
            b_hh=_to_jax(tensors["bias_hh"]),
        )
        if weights_type is LSTMWeights and module.proj_size > 0:
            fields["w_hr"] = _to_jax(getattr(module, "weight_hr" + suffix)).T
        if weights_type is RNNWeights:
            fields["nonlinearity"] = module.nonlinearity
        layers[layer].append(weights_type(**fields))
    return tuple(tuple(layer) for layer in layers)


def to_torch(params, module):
    """Copies lstm_jax params into an existing torch module of the same architecture, in place.

    Args:
      params: ``params[layer][direction]`` from :func:`init_lstm` / :func:`init_gru` / :func:`init_rnn` (or
        :func:`from_torch`).
      module: a ``torch.nn.LSTM``/``GRU``/``RNN`` with matching sizes, layers, directions and ``proj_size``.

    Returns:
      The same ``module``, for chaining.

    Raises:
      ValueError: when the module's type, layers, directions, nonlinearity or any weight shape differ from
        ``params``, or the params hold a variant torch cannot represent (peepholes, layer norm). The module is
        left untouched then.

    >>> import jax, torch, lstm_jax
    >>> params = lstm_jax.init_gru(jax.random.key(0), 3, 8)
    >>> module = lstm_jax.to_torch(params, torch.nn.GRU(3, 8))
    >>> bool((module.weight_hh_l0.detach().numpy() == params[0][0].w_hh.T).all())
    True
    """
    import torch

    weights_type = _kind(module)
    _check_supported(module)
    check_params(type(module).__name__.lower(), params, None)
    for weights in (w for layer in params for w in layer):
        if not isinstance(weights, weights_type):
            raise ValueError(f"params hold {type(weights).__name__}, but the torch module is a {type(module).__name__}")
    directions = 2 if module.bidirectional else 1
    if len(params) != module.num_layers or len(params[0]) != directions:
        raise ValueError(
            f"params have {len(params)} layers x {len(params[0])} directions, but the torch module has "
            f"{module.num_layers} layers x {directions} directions"
        )
    # Check everything before copying anything, so that a mismatch leaves the module untouched.
    copies = []
    for layer, direction, suffix in _suffixes(module):
        weights = params[layer][direction]
        if weights_type is RNNWeights and weights.nonlinearity != module.nonlinearity:
            raise ValueError(
                f"params use nonlinearity={weights.nonlinearity!r}, the torch module {module.nonlinearity!r}"
            )
        pairs = [("weight_ih", weights.w_ih.T), ("weight_hh", weights.w_hh.T)]
        pairs += [("bias_ih", weights.b_ih), ("bias_hh", weights.b_hh)]
        if weights_type is LSTMWeights:
            for variant in ("peephole", "layer_norm"):
                if getattr(weights, variant) is not None:
                    raise ValueError(
                        f"params hold the {variant} variant, which torch.nn.LSTM cannot represent; "
                        "only plain and projected LSTMs export to torch"
                    )
            has_projection = weights.w_hr is not None
            if has_projection != (module.proj_size > 0):
                raise ValueError(
                    f"params {'have' if has_projection else 'lack'} a projection w_hr, but the torch module has "
                    f"proj_size={module.proj_size}"
                )
            if has_projection:
                pairs.append(("weight_hr", weights.w_hr.T))
        for name, value in pairs:
            target = getattr(module, name + suffix)
            value = np.array(value, order="C")  # a writable copy: torch.from_numpy rejects read-only arrays
            if tuple(target.shape) != value.shape:
                raise ValueError(
                    f"{name + suffix}: the torch module expects shape {tuple(target.shape)}, params give {value.shape}"
                )
            copies.append((target, value))
    with torch.no_grad():
        for target, value in copies:
            target.copy_(torch.from_numpy(value).to(target.dtype))
    return module
