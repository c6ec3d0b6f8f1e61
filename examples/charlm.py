"""A character-level LSTM language model on the help texts that ship with Python (``pydoc_data.topics``).

Trains with ``lstm_jax.train``, then generates text one character at a time with the single-step cell API:
``lstm_jax.lstm_cell(weights, state, x) -> (state, h)`` for each layer, the weights read out of the trained NNX
module as plain arrays.

Run from the repository root (several minutes on 2 CPU cores):

    python examples/charlm.py

Same as ``lstm-jax train charlm``, plus the sampling loop below.
"""

import jax
import jax.numpy as jnp

import lstm_jax
from lstm_jax.train import TrainConfig, train


def generate(model, vocab: list[str], prompt: str, length: int, seed: int = 0, temperature: float = 0.8) -> str:
    """Feeds ``prompt``, then samples ``length`` characters, one ``lstm_cell`` step per layer per character."""
    layers = [weights for (weights,) in model.rnn.weights]  # params[layer][direction], one direction
    table, kernel, bias = model.embed.embedding[...], model.head.kernel[...], model.head.bias[...]

    @jax.jit
    def step(states, token):
        x = table[token][None, :]  # (1, E): a batch of one
        new_states = []
        for weights, state in zip(layers, states, strict=True):
            state, x = lstm_jax.lstm_cell(weights, state, x)
            new_states.append(state)
        return new_states, (x @ kernel + bias[None, :])[0]

    zeros = jnp.zeros((1, layers[0].hidden_size))
    states = [lstm_jax.LSTMState(h=zeros, c=zeros) for _ in layers]
    for ch in prompt:
        states, logits = step(states, vocab.index(ch))
    key, text = jax.random.key(seed), prompt
    for _ in range(length):
        key, subkey = jax.random.split(key)
        token = int(jax.random.categorical(subkey, logits / temperature))
        text += vocab[token]
        states, logits = step(states, token)
    return text


def main(steps: int = 2000, hidden: int = 256, out: str = "results/train/charlm") -> str:
    result = train(TrainConfig("charlm", steps=steps, hidden=hidden, out=out))
    print(result.summary)
    report = result.report
    print(f"test {report['test_bits_per_char']:.3f} bits/char; unigram {report['unigram_bits_per_char']:.3f}")
    text = generate(result.model, result.task.vocab, "The with statement ", 300)
    print(text)
    return text


if __name__ == "__main__":
    main()
