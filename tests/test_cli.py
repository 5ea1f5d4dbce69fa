"""The command lines as users run them: bad input is one line, exit 2, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl import stats
from rl.cli import run_cli
from scripts import evaluate, train

ROOT = Path(__file__).resolve().parents[1]


def run_main(main, argv, capsys):
    code = run_cli(main, argv, prog="rl-test")
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


BAD_TRAIN = [
    (["--preset", "brekout"], "unknown preset 'brekout'", "breakout"),
    (["--env", "pacman_deluxe"], "env = 'pacman_deluxe'", "cartpole"),
    (["--optimizer", "adamm"], "optimizer = 'adamm'", "adam"),
    (["--loss", "hubber"], "loss = 'hubber'", "huber"),
    (["--learning-rate", "0"], "learning_rate = 0.0", "> 0"),
    (["--learning-rate=-1e-3"], "learning_rate = -0.001", "> 0"),
    (["--buffer-size", "0"], "buffer_size = 0", ">= 1"),
    (["--buffer-size", "-5"], "buffer_size = -5", ">= 1"),
    (["--batch-size", "64", "--buffer-size", "32"], "batch_size = 64", "buffer_size"),
    (["--learning-starts", "500", "--total-steps", "100"], "learning_starts = 500", "total_steps"),
    (["--gamma", "1.5"], "gamma = 1.5", "<= 1"),
    (["--total-steps", "ten"], "total_steps = 'ten'", "whole number"),
    (["--optimizer-kwargs", "{momentum = 0.9}"], "no option 'momentum'", "allowed"),
    (["--device", "tpu"], "device = 'tpu'", "auto, cpu, cuda"),
]


@pytest.mark.parametrize("argv,names,allowed", BAD_TRAIN)
def test_train_rejects_bad_input_in_one_line(argv, names, allowed, tmp_path, capsys):
    run_dir = tmp_path / "run"
    preset = [] if argv[0] == "--preset" else ["--preset", "cartpole"]
    code, err = run_main(train.main, [*preset, *argv, "--run-dir", str(run_dir)], capsys)
    assert code == 2
    assert len(err) == 1, err
    assert names in err[0] and allowed in err[0], err[0]
    assert not run_dir.exists()  # nothing written


def test_misspelt_flag_suggests_the_right_one(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.train", "--total-step", "5", "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--total-step" in lines[0] and "--total-steps" in lines[0]
    assert not (tmp_path / "r").exists()


def test_unknown_config_file_key_suggests_closest(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('env = "cartpole"\nnetwork = "mlp"\nlearning_rat = 0.1\n')
    code, err = run_main(train.main, ["--config", str(cfg), "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1 and "'learning_rat'" in err[0] and "'learning_rate'" in err[0]


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text("precious = 1\n")
    code, err = run_main(train.main, ["--preset", "cartpole", "--run-dir", str(run_dir)], capsys)
    assert code == 2 and "already holds a run" in err[0] and "--resume" in err[0]
    assert (run_dir / "config.toml").read_text() == "precious = 1\n"


@pytest.mark.parametrize("content,expect", [(None, "does not exist"), (b"not a zip at all", "truncated or corrupt")])
def test_evaluate_rejects_missing_or_corrupt_checkpoint(content, expect, tmp_path, capsys):
    path = tmp_path / "latest.pt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "r.json"
    code, err = run_main(evaluate.main, [str(path), "--json", str(out)], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and expect in err[0]
    assert not out.exists()


@pytest.mark.parametrize("argv,text", [(["--episodes", "0"], "episodes = 0"), (["--epsilon", "2"], "epsilon = 2"),
                                       (["--epsilon", "-1e-2"], "epsilon = -0.01"), (["--seed", "-1"], "seed = -1")])
def test_evaluate_rejects_bad_numbers(argv, text, tmp_path, capsys):
    code, err = run_main(evaluate.main, [str(tmp_path / "x.pt"), *argv], capsys)
    assert code == 2 and len(err) == 1 and text in err[0]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[Path]:
    """Three tiny CartPole runs of different seeds (their latest.pt), and one Acrobot run last."""
    root = tmp_path_factory.mktemp("seeds")
    runs = [("cartpole", 0), ("cartpole", 1), ("cartpole", 2), ("acrobot", 0)]
    for env, seed in runs:
        assert run_cli(train.main, ["--preset", "cartpole", "--env", env, "--seed", str(seed), "--total-steps",
                                    "600", "--learning-starts", "200", "--eval-every", "0", "--target-return", "0",
                                    "--no-save-replay", "--run-dir", str(root / f"{env}-{seed}"),
                                    "--no-progress"]) == 0
    return [root / f"{env}-{seed}" / "checkpoints" / "latest.pt" for env, seed in runs]


PLAY = ["--episodes", "3", "--epsilon", "0.5", "--no-progress"]


def evaluate_json(argv, path: Path, capsys) -> dict:
    assert run_cli(evaluate.main, [*argv, *PLAY, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_evaluate_several_checkpoints_scores_each_and_summarises_over_them(seeds, tmp_path, capsys):
    files = seeds[:3]
    several = evaluate_json(map(str, files), tmp_path / "all.json", capsys)
    out = capsys.readouterr().out
    alone = [evaluate_json([str(f)], tmp_path / f"{i}.json", capsys) for i, f in enumerate(files)]
    assert several["runs"] == alone                       # each file scored exactly as it is on its own
    means = [r["mean"] for r in alone]
    assert len(set(means)) > 1                            # the seeds differ, so the summary has something to do
    expected = stats.summarize(means)
    worst = str(files[expected.pop("worst_index")])
    assert several["summary"] == expected | {"worst_checkpoint": worst}
    assert several["statistics"]["bootstrap_reps"] == stats.BOOTSTRAP_REPS
    assert f"over 3 checkpoints: IQM {expected['iqm']:.2f}" in out and f"({worst})" in out
    assert all(f"{f}\n  protocol: CartPole-v1" in out for f in files)


@pytest.mark.parametrize("pick,extra,text", [
    ([0, 3], [], "different envs (cartpole in"),
    ([0, 1, 0], [], "is given twice"),
    ([0, 1], ["--video", "games.mp4"], "--video films one agent: give one checkpoint, not 2"),
])
def test_evaluate_several_checkpoints_rejects_what_cannot_be_summarised(pick, extra, text, seeds, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, err = run_main(evaluate.main, [*(str(seeds[i]) for i in pick), *PLAY, "--json", str(out), *extra], capsys)
    assert code == 2 and len(err) == 1 and text in err[0], err
    assert not out.exists()


def test_evaluate_plays_in_the_precision_asked_and_says_which(seeds, tmp_path, capsys):
    """Unset, a checkpoint plays in its run's precision (resolved on this machine); --precision overrides it, and
    the JSON and the protocol line name what played, so a score is never quoted without its arithmetic."""
    own = evaluate_json([str(seeds[0])], tmp_path / "own.json", capsys)
    assert own["precision"] == "fp32" and "online weights in fp32" in capsys.readouterr().out
    bf16 = evaluate_json([str(seeds[0]), "--precision", "bf16"], tmp_path / "bf16.json", capsys)
    assert bf16["precision"] == "bf16" and "weights in bf16" in capsys.readouterr().out
    code, err = run_main(evaluate.main, [str(seeds[0]), "--precision", "fp16"], capsys)
    assert code == 2 and len(err) == 1 and "precision = 'fp16' is not allowed" in err[0]


def test_evaluate_several_checkpoints_loads_all_before_playing(seeds, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a zip at all")
    code = run_cli(evaluate.main, [str(seeds[0]), str(broken), *PLAY], prog="rl-test")
    captured = capsys.readouterr()
    assert code == 2 and "truncated or corrupt" in captured.err and "return:" not in captured.out


def test_console_scripts_are_installed_and_answer_help():
    for name in ("rl-train", "rl-evaluate"):
        proc = subprocess.run([name, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "scripts.train", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert "--learning-rate" in proc.stdout and "--target-update" in proc.stdout
