"""The scripts in examples/ run as written: each main() with a few steps of a tiny model."""

from __future__ import annotations

import importlib.util

import pytest
from test_train import ROOT

TINY = {
    "adding": dict(steps=4, seq_len=8, hidden=8),
    "digits": dict(steps=4, hidden=8),
    "co2": dict(steps=4, hidden=8),
    "charlm": dict(steps=2, hidden=8),
}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_runs(name, tmp_path, capsys):
    load(name).main(**TINY[name], out=str(tmp_path))
    printed = capsys.readouterr().out
    assert f"train {name} " in printed and "params_sha256=" in printed
    expected = {
        "adding": ["lstm/loss.png", "rnn/metrics.jsonl", "adding.png"],
        "digits": ["loss.png", "metrics.jsonl"],
        "co2": ["loss.png", "forecast.png"],
        "charlm": ["loss.png", "sample.txt"],
    }[name]
    for path in expected:
        assert (tmp_path / path).is_file(), path
