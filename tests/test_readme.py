"""The README's examples run as written: every ```python block, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_examples_run():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4, "the README should show functional, NNX, bridge and torch examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # Spot-check that the examples computed what they claim.
    assert namespace["logits"].shape == (8, 10)
    assert namespace["ys"].shape == (20, 8, 2 * 4)  # the last block: bidirectional LSTM with proj_size=4


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make bench" in text and "make test" in text
