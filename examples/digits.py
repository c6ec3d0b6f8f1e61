"""Classifying scikit-learn's 8x8 digits with an LSTM that reads each image row by row (8 steps of 8 pixels).

Run from the repository root (a few minutes on 2 CPU cores):

    python examples/digits.py

Same as ``lstm-jax train digits``; prints the test accuracy on the 360 held-out images.
"""

from lstm_jax.train import TrainConfig, train


def main(steps: int = 1500, hidden: int = 128, out: str = "results/train/digits") -> float:
    result = train(TrainConfig("digits", steps=steps, hidden=hidden, out=out))
    print(result.summary)
    accuracy = result.report["test_accuracy"]
    print(f"test accuracy {accuracy:.1%} ({result.report['test_errors']} of {result.report['test_size']} wrong)")
    return accuracy


if __name__ == "__main__":
    main()
