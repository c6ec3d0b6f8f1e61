"""The ``lstm-jax`` dispatcher: both subcommands are reachable, errors give exit status 2."""

import subprocess
import sys

from lstm_jax._cli import main


def test_train_subcommand_runs(tmp_path, capsys):
    status = main(["train", "digits", "--steps", "3", "--hidden", "8", "--out", str(tmp_path), "--seed", "1"])
    assert status == 0
    assert "params_sha256=" in capsys.readouterr().out.strip().splitlines()[-1]


def test_train_subcommand_errors(capsys):
    assert main(["train", "nosuch"]) == 2
    assert "unknown task 'nosuch'" in capsys.readouterr().err


def test_python_dash_m_lists_both_commands():
    out = subprocess.run(
        [sys.executable, "-m", "lstm_jax", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "bench" in out and "train" in out
