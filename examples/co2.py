"""Forecasting five years of Mauna Loa CO2 (statsmodels' bundled series) with an LSTM, against seasonal naive.

The model learns month-to-month differences and forecasts 1997-2001 autoregressively from the end of 1996;
``results/train/co2/forecast.png`` shows the forecast against the actual series.

Run from the repository root (a few minutes on 2 CPU cores):

    python examples/co2.py

Same as ``lstm-jax train co2``.
"""

from lstm_jax.train import TrainConfig, train


def main(steps: int = 1500, hidden: int = 64, out: str = "results/train/co2") -> dict:
    result = train(TrainConfig("co2", steps=steps, hidden=hidden, out=out))
    print(result.summary)
    report = result.report
    print(
        f"60-month forecast RMSE: LSTM {report['forecast_rmse_ppm']:.2f} ppm, "
        f"seasonal naive {report['seasonal_naive_rmse_ppm']:.2f} ppm; figure: {out}/forecast.png"
    )
    return report


if __name__ == "__main__":
    main()
