"""rl-bench runs and reports every figure the performance issue asks for (speed is never asserted here)."""
from __future__ import annotations

import json

from rl.config import run_cli
from scripts import benchmark


def test_benchmark_reports_all_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_cli(benchmark.main, ["--preset", "cartpole", "--env-steps", "400", "--updates", "5",
                                    "--replay-steps", "400", "--train-steps", "200", "--fill-steps", "200",
                                    "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("env ceiling", "learner ceiling", "replay sample", "replay memory", "training", "ratio to bound",
                "peak RSS"):
        assert row in printed
    figures = json.loads(out.read_text())
    assert figures["replay"]["bytes_per_transition"] == 4 * 4 + 1 + 4 + 1  # float32[4] obs + action + reward + flags
    for key in ("env_steps_per_s", "learner_updates_per_s", "train_steps_per_s", "peak_rss_bytes"):
        assert figures[key] > 0
    assert figures["ratio_to_overlapped_bound"] == figures["train_steps_per_s"] / figures["bound_overlapped_steps_per_s"]


def test_benchmark_rejects_bad_budget(capsys):
    assert run_cli(benchmark.main, ["--updates", "0"]) == 2
    assert "--updates 0" in capsys.readouterr().err
