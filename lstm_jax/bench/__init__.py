"""The lstm_jax benchmark suite, run by ``lstm-jax bench`` / ``python -m lstm_jax bench`` / ``make bench``.

Two parts, one run:

* throughput (:mod:`._throughput`): lstm_jax against its peers (:mod:`._impls`: Flax, PyTorch, cuDNN), forward
  and training, across sequence lengths, with achieved GFLOP/s (:mod:`._flops`) against the peak matmul rate
  measured in the same run (:mod:`._timing`);
* gradient norms (:mod:`._gradnorm`): at initialisation, how the gradient reaching x_t decays with the distance
  T − t for LSTM, GRU and Elman RNN.

Results go to a JSON (fields in :mod:`._report`), a CSV and PNGs (:mod:`._plots`). Nothing here is imported by
``import lstm_jax``; rich, matplotlib and torch are imported only when a run needs them.
"""

from ._config import DEFAULT as DEFAULT
from ._config import QUICK as QUICK
from ._config import BenchConfig as BenchConfig
from ._flops import recurrent_flops as recurrent_flops
from ._report import compare as compare
from ._report import load as load
from ._report import validate as validate
from ._suite import run as run
