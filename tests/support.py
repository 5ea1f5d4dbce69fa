"""Helpers shared by the distributed and sweep tests."""
from __future__ import annotations

from rl.cli import run_cli
from rl.config import TrainConfig, from_dict, load_preset, validate_train

NO_RAY = "the distributed extra is not installed (pip install -e '.[distributed]')"


def cartpole(**overrides) -> TrainConfig:
    base = {**load_preset("cartpole"), "eval_every": 0, "target_return": 0.0, "checkpoint_every": 10**6,
            "torch_threads": 1, "log_every": 1000}
    return validate_train(from_dict(TrainConfig, {**base, **overrides}))


def one_line_error(main, argv, capsys, prog="rl-test") -> str:
    code = run_cli(main, argv, prog=prog)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    return err[0]
