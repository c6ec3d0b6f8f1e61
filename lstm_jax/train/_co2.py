"""Forecasting the Mauna Loa CO₂ series that ships with statsmodels (weekly, 1958-2001), monthly.

The weekly series is averaged per month (gaps interpolated), giving 526 months; the last 60 (1997-2001) are held out.
The model sees month-to-month differences, standardised with the training part's mean and deviation (differencing
makes the trending series stationary, so the model never has to extrapolate a level it has not seen). It is trained
to predict the next difference at every step of ``--seq-len``-month windows, and forecasts the held-out five years
autoregressively from the end of the training part, feeding back its own predictions; the forecast is the last
observed level plus the predicted differences, summed.

Baseline: the seasonal-naive forecast, which repeats the last observed year (ŷ[t + k] = y[t − 12 + k mod 12]).
Score: RMSE in ppm over the 60 held-out months, and a PNG of forecast vs actual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from ._errors import ConfigError
from ._task import Batch, Defaults, SequenceModel, Task, mean_squared_error

HORIZON = 60
"""Held-out months, forecast in one go from the end of the training part."""
SEASON = 12


def load_co2_monthly() -> tuple[np.ndarray, np.ndarray]:
    """``(months, ppm)``: month starts (datetime64[M]) and monthly mean CO₂ (float64), gaps interpolated."""
    try:
        from statsmodels.datasets import co2
    except ImportError as error:
        raise ImportError("the co2 task needs statsmodels: pip install 'lstm_jax[examples]'") from error
    weekly = co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate()
    return monthly.index.values.astype("datetime64[M]"), monthly.to_numpy(dtype=np.float64)


def seasonal_naive(history: np.ndarray, horizon: int, season: int = SEASON) -> np.ndarray:
    """Repeats the last observed season: ŷ[k] = history[-season + k mod season].

    >>> import numpy as np
    >>> from lstm_jax.train._co2 import seasonal_naive
    >>> seasonal_naive(np.arange(6.0), 5, season=3)
    array([3., 4., 5., 3., 4.])
    """
    last = history[-season:]
    return last[np.arange(horizon) % season]


class CO2(Task):
    name = "co2"
    description = "Mauna Loa CO2 (statsmodels), monthly; 60-month forecast RMSE vs seasonal naive"
    defaults = Defaults(steps=1500, hidden=64, lr=3e-3, batch=32, dropout=0.2, seq_len=48, eval_every=100)
    headline = "forecast_rmse_ppm"

    def __init__(self, config):
        super().__init__(config)
        self.months, self.ppm = load_co2_monthly()
        self.split = len(self.ppm) - HORIZON  # months of the training part
        diffs = np.diff(self.ppm)
        train_diffs = diffs[: self.split - 1]
        self.mean, self.std = float(train_diffs.mean()), float(train_diffs.std())
        self.z = ((diffs - self.mean) / self.std).astype(np.float32)
        self.num_windows = self.split - 1 - config.seq_len  # windows whose targets lie in the training part
        if self.num_windows < 1:
            raise ConfigError(f"--seq-len {config.seq_len} leaves no training window in {self.split} months")

    def model(self, rngs: nnx.Rngs) -> SequenceModel:
        c = self.config
        return SequenceModel(c.cell, 1, c.hidden, 1, num_layers=c.layers, dropout=c.dropout, rngs=rngs)

    def loss(self, model, batch):
        return mean_squared_error(model(batch["x"])[..., 0], batch["y"]), {}

    def _windows(self, starts: np.ndarray) -> Batch:
        """``x`` (N, W, 1): standardised differences from each start; ``y`` (N, W): the difference after each."""
        W = self.config.seq_len
        index = starts[:, None] + np.arange(W)[None, :]
        return {"x": self.z[index][..., None], "y": self.z[index + 1]}

    def train_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.config.seed, step])
        return self._windows(rng.integers(0, self.num_windows, self.config.batch))

    def eval_batch(self) -> Batch:
        # Teacher-forced one-step predictions of the held-out differences (the forecast itself is in report()).
        W = self.config.seq_len
        return self._windows(np.arange(self.split - 1 - W, len(self.z) - W))

    @property
    def loss_baseline(self) -> float:
        return 1.0  # predicting the mean difference: the variance of the standardised differences

    def forecast(self, model: SequenceModel, horizon: int = HORIZON) -> np.ndarray:
        """The model's ``horizon``-month forecast (ppm) from the end of the training part, autoregressive."""
        W = self.config.seq_len
        model.eval()
        predict = nnx.jit(lambda model, window: model(window)[0, -1, 0])
        window = list(self.z[: self.split - 1][-W:])
        predicted = []
        for _ in range(horizon):
            z_next = float(predict(model, np.asarray(window[-W:], np.float32)[None, :, None]))
            predicted.append(z_next)
            window.append(z_next)
        diffs = np.asarray(predicted) * self.std + self.mean
        return self.ppm[self.split - 1] + np.cumsum(diffs)

    def report(self, model, out: Path | None) -> dict[str, Any]:
        actual = self.ppm[self.split :]
        forecast = self.forecast(model)
        naive = seasonal_naive(self.ppm[: self.split], HORIZON)
        result = {
            "forecast_rmse_ppm": float(np.sqrt(np.mean((forecast - actual) ** 2))),
            "seasonal_naive_rmse_ppm": float(np.sqrt(np.mean((naive - actual) ** 2))),
            "forecast_mae_ppm": float(np.mean(np.abs(forecast - actual))),
            "seasonal_naive_mae_ppm": float(np.mean(np.abs(naive - actual))),
            "held_out": f"{self.months[self.split]}..{self.months[-1]}",
        }
        if out is not None:
            from ._plots import plot_forecast

            plot_forecast(
                out / "forecast.png",
                self.months,
                self.ppm,
                self.split,
                {
                    "LSTM forecast" if self.config.cell == "lstm" else f"{self.config.cell.upper()} forecast": forecast,
                    "seasonal naive": naive,
                },
                title=f"Mauna Loa CO₂, {HORIZON}-month forecast from {self.months[self.split - 1]}",
            )
        return result
