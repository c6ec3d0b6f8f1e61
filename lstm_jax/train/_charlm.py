"""A character-level language model on ``pydoc_data.topics``, the help texts that ship with Python (~465k chars).

The topics are joined in sorted order; the first 90% is the training text, the last 10% the test text. Training
batches are ``--seq-len``-character windows at offsets drawn from ``default_rng([seed, step])``; the model
(embedding → recurrent stack → linear) predicts each next character. Score: bits per character on the test text
(non-overlapping windows, each from a zero state) against the unigram model of the training text (add-one
smoothed). Text is sampled one character at a time with the single-step cell API (:func:`lstm_jax.lstm_cell`,
``gru_cell``, ``rnn_cell``) under ``lax.scan``, from the trained module's weights.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lstm_jax

from .._typing import Array, PRNGKey
from ._errors import ConfigError
from ._task import Batch, Defaults, SequenceModel, Task, cross_entropy

TRAIN_FRACTION = 0.9
EMBED = 64
MAX_EVAL_WINDOWS = 256
PROMPT = "The "
CELL_STEPS = {"lstm": lstm_jax.lstm_cell, "gru": lstm_jax.gru_cell, "rnn": lstm_jax.rnn_cell}


def load_topics() -> str:
    """The text of ``pydoc_data.topics``, topics joined in sorted order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[name] for name in sorted(topics))


def unigram_bits(train_ids: np.ndarray, test_ids: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (bits/char) on ``test_ids`` of the add-one-smoothed character frequencies of ``train_ids``.

    >>> import numpy as np
    >>> from lstm_jax.train._charlm import unigram_bits
    >>> round(unigram_bits(np.array([0, 1, 0, 1]), np.array([0, 1]), 2), 6)  # a fair coin
    1.0
    """
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0
    log2_probs = np.log2(counts / counts.sum())
    return float(-np.mean(log2_probs[test_ids]))


def sample(model: SequenceModel, prompt: Array, length: int, key: PRNGKey, temperature: float = 1.0) -> Array:
    """Samples ``length`` tokens after ``prompt`` (P,) ints with the single-step cells, one character at a time.

    The module's weights are read out as plain arrays (``model.rnn.weights[layer][0]``, the embedding table and the
    head) and each step is ``cell(weights, carry, x) -> (carry, y)`` for every layer: the prompt is fed with one
    ``lax.scan``, and generation is a second scan whose carry holds the states, the next token's logits and the key.

    Args:
      model: a trained :class:`SequenceModel` with an embedding (``vocab_size``), unidirectional.
      prompt: (P,) int tokens to condition on, P ≥ 1.
      length: tokens to generate.
      key: PRNG key of the draws.
      temperature: divides the logits; 0 picks the most likely token (greedy).

    Returns:
      (length,) int32 tokens.
    """
    step = CELL_STEPS[model.cell]
    layers = [weights for (weights,) in model.rnn.weights]  # unidirectional: one direction per layer
    table, kernel, bias = model.embed.embedding[...], model.head.kernel[...], model.head.bias[...]
    H = layers[0].hidden_size

    def zero_state(weights):
        h = jnp.zeros((1, H), table.dtype)
        return lstm_jax.LSTMState(h, h) if model.cell == "lstm" else h

    def advance(states, token):
        x = table[token][None, :]  # (1, E)
        new_states = []
        for weights, state in zip(layers, states, strict=True):
            state, x = step(weights, state, x)
            new_states.append(state)
        return new_states, (x @ kernel + bias[None, :])[0]  # logits (V,)

    @functools.partial(jax.jit, static_argnums=2)
    def generate(prompt, key, length):
        states, logits = jax.lax.scan(advance, [zero_state(w) for w in layers], prompt)

        def draw(carry, _):
            states, logits, key = carry
            key, subkey = jax.random.split(key)
            if temperature == 0.0:
                token = jnp.argmax(logits)
            else:
                token = jax.random.categorical(subkey, logits / temperature)
            states, logits = advance(states, token)
            return (states, logits, key), token

        _, tokens = jax.lax.scan(draw, (states, logits[-1], key), None, length=length)
        return tokens

    return generate(jnp.asarray(prompt, jnp.int32), key, length)


class CharLM(Task):
    name = "charlm"
    description = "character-level LM on pydoc_data.topics; test bits/char vs unigram, sampled text"
    defaults = Defaults(steps=2000, hidden=256, lr=3e-3, batch=32, dropout=0.2, seq_len=128, eval_every=200)
    headline = "test_bits_per_char"

    def __init__(self, config):
        super().__init__(config)
        text = load_topics()
        self.vocab = sorted(set(text))
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        self.ids = np.array([lookup[ch] for ch in text], np.int32)
        split = int(len(self.ids) * TRAIN_FRACTION)
        self.train_ids, self.test_ids = self.ids[:split], self.ids[split:]
        T = config.seq_len
        if len(self.test_ids) < T + 1:
            raise ConfigError(f"--seq-len {T} is longer than the test text ({len(self.test_ids)} chars)")

    def decode(self, tokens) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.vocab.index(ch) for ch in text], np.int32)

    def model(self, rngs: nnx.Rngs) -> SequenceModel:
        c = self.config
        return SequenceModel(
            c.cell, EMBED, c.hidden, len(self.vocab), num_layers=c.layers, dropout=c.dropout,
            vocab_size=len(self.vocab), rngs=rngs,
        )  # fmt: skip

    def loss(self, model, batch):
        loss = cross_entropy(model(batch["x"]), batch["y"])
        return loss, {"bits_per_char": loss / math.log(2.0)}

    def train_batch(self, step: int) -> Batch:
        """``x`` (B, T) int32 characters at random offsets; ``y`` (B, T) the character after each."""
        T = self.config.seq_len
        starts = np.random.default_rng([self.config.seed, step]).integers(0, len(self.train_ids) - T, self.config.batch)
        index = starts[:, None] + np.arange(T + 1)[None, :]
        chunks = self.train_ids[index]
        return {"x": chunks[:, :-1], "y": chunks[:, 1:]}

    def eval_batch(self) -> Batch:
        T = self.config.seq_len
        windows = min((len(self.test_ids) - 1) // T, MAX_EVAL_WINDOWS)
        x = self.test_ids[: windows * T].reshape(windows, T)
        y = self.test_ids[1 : windows * T + 1].reshape(windows, T)
        return {"x": x, "y": y}

    @property
    def loss_baseline(self) -> float:
        return unigram_bits(self.train_ids, self.train_ids, len(self.vocab)) * math.log(2.0)

    def report(self, model, out: Path | None) -> dict[str, Any]:
        model.eval()
        batch = self.eval_batch()
        loss = float(nnx.jit(lambda model, x, y: cross_entropy(model(x), y))(model, batch["x"], batch["y"]))
        key = jax.random.key(self.config.seed)
        text = PROMPT + self.decode(sample(model, self.encode(PROMPT), 400, key, temperature=0.8))
        if out is not None:
            (out / "sample.txt").write_text(text + "\n")
        return {
            "test_bits_per_char": loss / math.log(2.0),
            "unigram_bits_per_char": unigram_bits(self.train_ids, self.test_ids, len(self.vocab)),
            "test_chars": int(batch["x"].size),
            "sample": text,
        }
