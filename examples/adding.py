"""The adding problem at T = 200: an LSTM learns it, an Elman RNN stays at the 1/6 baseline.

Each sequence holds 200 random values, two of them marked (one in each half); the target is their sum. Predicting
the constant 1 scores MSE 1/6. The LSTM carries the first marked value across 100+ steps and reaches MSE < 0.01;
the Elman RNN's gradient vanishes over that span and it stays at the baseline.

Run from the repository root (a few minutes on 2 CPU cores):

    python examples/adding.py

Same as ``lstm-jax train adding --cell lstm`` and ``--cell rnn``, plus one figure with both loss curves.
"""

import json
from pathlib import Path

from lstm_jax.train import TrainConfig, train


def main(steps: int = 2000, seq_len: int = 200, hidden: int = 64, out: str = "results/train/adding") -> dict:
    results = {}
    for cell in ("lstm", "rnn"):
        config = TrainConfig("adding", steps=steps, seq_len=seq_len, hidden=hidden, cell=cell, out=f"{out}/{cell}")
        result = train(config)
        print(result.summary)
        results[cell] = result.report["test_mse"]
    print(f"test MSE at T={seq_len}: LSTM {results['lstm']:.4f}, Elman RNN {results['rnn']:.4f}, baseline 1/6 = 0.1667")
    plot(out, seq_len)
    return results


def plot(out: str, seq_len: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for cell, colour in (("lstm", "C0"), ("rnn", "C3")):
        records = [json.loads(line) for line in Path(f"{out}/{cell}/metrics.jsonl").read_text().splitlines()]
        held_out = [r for r in records if r["kind"] == "eval"]
        ax.plot([r["step"] for r in held_out], [r["loss"] for r in held_out], color=colour, label=cell.upper())
    ax.axhline(1 / 6, color="gray", linestyle=":", label="predict 1 (1/6)")
    ax.set(yscale="log", xlabel="step", ylabel="test MSE", title=f"Adding problem, T = {seq_len}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/adding.png")


if __name__ == "__main__":
    main()
