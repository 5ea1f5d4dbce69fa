"""rl-runs --plot and --evals: learning curves from hand-written run directories, seeds of one setting
aggregated, each evaluation beside the training return by then."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rl import curves
from rl.cli import run_cli
from rl.logging import Logger, read_sessions, read_training_returns
from scripts import runs as runs_cli

pytest.importorskip("matplotlib")


def log_games(run_dir: Path, games: list[tuple[int, float]], purge_step: int | None = None) -> None:
    """One rl-train session's TensorBoard file with a training game per (step it ended at, raw score); a
    resumed session passes the step it resumes from as ``purge_step``, as rl-train does."""
    logger = Logger(run_dir, purge_step=purge_step)
    for step, score in games:
        logger.scalars({"charts/episodic_return": score, "charts/episodic_length": 1}, step)
    logger.close()


def make_run(path: Path, evals: list[tuple[int, float, float, float | None]], preset: str | None = "cartpole",
             games: list[tuple[int, float]] = (), **config) -> Path:
    """A run directory as rl-train leaves it: config.toml, run.json, one evaluation per (step, mean, std,
    wall seconds or None for a file from before wall times were recorded), and the training ``games``."""
    path.mkdir(parents=True)
    config = {"env": "cartpole", "network": "mlp", **config}
    (path / "config.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    (path / "run.json").write_text(json.dumps({"preset": preset, "status": "finished"}))
    records = [{"step": s, "mean": m, "std": sd, **({} if w is None else {"wall_time": w})} for s, m, sd, w in evals]
    (path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if games:
        log_games(path, list(games))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two seeds of learning_rate 5e-4 (the second stopped early, on another device) and one of 1e-3."""
    root = tmp_path / "runs"
    make_run(root / "lr5e-4-s1", [(100, 10.0, 2.0, 60.0), (200, 30.0, 4.0, 120.0), (300, 50.0, 1.0, 180.0)],
             learning_rate=5e-4, seed=1)
    make_run(root / "lr5e-4-s2", [(100, 20.0, 3.0, 90.0), (200, 10.0, 5.0, 150.0)],
             learning_rate=5e-4, seed=2, device="cpu", log_every=7)
    make_run(root / "lr1e-3-s1", [(100, 15.0, 1.5, 30.0), (200, 40.0, 2.5, 60.0)], learning_rate=1e-3, seed=1)
    return root


def test_seeds_of_one_setting_form_one_group_at_their_shared_steps(sweep):
    runs = [curves.read_curve(sweep / name) for name in ("lr5e-4-s1", "lr5e-4-s2", "lr1e-3-s1")]
    two_seeds, one_seed = curves.group_runs(runs)
    assert [r.path.name for r in two_seeds.runs] == ["lr5e-4-s1", "lr5e-4-s2"]     # device, log_every ignored
    assert two_seeds.step.tolist() == [100, 200]                                  # step 300: seed 1 only
    assert two_seeds.mean.tolist() == [15.0, 20.0]
    assert two_seeds.low.tolist() == [10.0, 10.0] and two_seeds.high.tolist() == [20.0, 30.0]
    assert two_seeds.hours == pytest.approx([75 / 3600, 135 / 3600])
    assert two_seeds.label == "cartpole learning_rate=0.0005"
    assert two_seeds.legend == "cartpole learning_rate=0.0005 (2 seeds; band: min-max over seeds)"
    assert one_seed.step.tolist() == [100, 200] and one_seed.mean.tolist() == [15.0, 40.0]
    assert one_seed.low.tolist() == [13.5, 37.5] and one_seed.high.tolist() == [16.5, 42.5]  # sd over games
    assert one_seed.legend == "cartpole learning_rate=0.001 (1 seed; band: sd over games)"


def test_groups_without_a_preset_are_named_by_what_differs(tmp_path):
    a = make_run(tmp_path / "a", [(10, 1.0, 0.0, 1.0)], preset=None, gamma=0.9)
    b = make_run(tmp_path / "b", [(10, 2.0, 0.0, 1.0)], preset=None, gamma=0.99, double=True)
    assert [g.label for g in curves.group_runs([curves.read_curve(a), curves.read_curve(b)])] == \
        ["gamma=0.9 double=false", "gamma=0.99 double=true"]
    assert [g.label for g in curves.group_runs([curves.read_curve(a)])] == ["cartpole"]


def test_plot_writes_a_readable_picture(sweep, tmp_path, capsys):
    from matplotlib import image as mpimg

    out = tmp_path / "figs" / "curves.png"
    assert run_cli(runs_cli.main, ["--plot", str(out), str(sweep)], prog="rl-runs") == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert f"{out}: 3 runs in 2 settings" in printed.out
    pixels = mpimg.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    colours = np.unique(pixels.reshape(-1, pixels.shape[2]).round(2), axis=0)
    assert len(colours) > 20                                      # lines, bands, text: not a blank canvas


def test_evaluations_without_wall_time_still_plot_with_a_note(tmp_path, capsys):
    make_run(tmp_path / "old", [(100, 1.0, 0.5, None), (200, 2.0, 0.5, None)])
    out = tmp_path / "old.png"
    assert run_cli(runs_cli.main, ["--plot", str(out), str(tmp_path / "old")], prog="rl-runs") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 evaluations" in err[0] and "wall-time panel" in err[0]
    assert out.stat().st_size > 0


def one_line_error(capsys, argv: list[str]) -> str:
    assert run_cli(runs_cli.main, argv, prog="rl-runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_plot_refuses_paths_without_runs_or_evaluations(sweep, tmp_path, capsys):
    out = tmp_path / "curves.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line_error(capsys, ["--plot", str(out), str(empty)])
    assert str(empty) in err and "no runs" in err and "config.toml" in err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text('env = "cartpole"\n')                  # made, never evaluated
    err = one_line_error(capsys, ["--plot", str(out), str(sweep), str(fresh)])
    assert str(fresh) in err and "no evaluations" in err and "--eval-every" in err
    assert not out.exists()
    (tmp_path / "runs" / "fresh").mkdir()                                       # found by search: left out
    (tmp_path / "runs" / "fresh" / "config.toml").write_text('env = "cartpole"\n')
    assert run_cli(runs_cli.main, ["--plot", str(out), str(sweep)], prog="rl-runs") == 0
    assert "fresh has no evaluations yet; left out" in capsys.readouterr().err


def test_plot_refuses_an_unknown_format_and_a_missing_matplotlib(sweep, tmp_path, capsys, monkeypatch):
    err = one_line_error(capsys, ["--plot", str(tmp_path / "curves.bmpx"), str(sweep)])
    assert "curves.bmpx" in err and ".png" in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)                       # import matplotlib fails
    err = one_line_error(capsys, ["--plot", str(tmp_path / "curves.png"), str(sweep)])
    assert "matplotlib" in err and "pip install" in err and "[plot]" in err


def test_training_return_is_the_mean_of_the_latest_games_ended_by_each_step():
    game_steps = np.array([5, 10, 10, 20, 30])
    returns = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    mean, sd, games = curves.training_return_at(game_steps, returns, np.array([4, 5, 10, 25, 100]), window=3)
    assert games.tolist() == [0, 1, 3, 3, 3]
    assert np.isnan(mean[0]) and mean[1:].tolist() == [1.0, 2.0, 3.0, 4.0]    # (1+2+3)/3, (2+3+4)/3, (3+4+5)/3
    assert np.isnan(sd[0]) and sd[1] == 0.0 and sd[2:] == pytest.approx([np.sqrt(2 / 3)] * 3)   # over games


def test_a_resumed_run_counts_each_training_game_once(tmp_path, caplog, capsys):
    """A session that stopped at step 40 after its checkpoint at 20 logged games the resumed session plays
    again; the resumed session's file purges them, so the games after step 20 are the resumed session's."""
    run = make_run(tmp_path / "run", [(20, 1.0, 0.0, 1.0), (50, 2.0, 0.0, 2.0)],
                   games=[(10, 1.0), (20, 2.0), (30, 100.0), (40, 100.0)])
    time.sleep(1.1)                         # a later session's file: TensorBoard reads files in name (time) order
    log_games(run, [(30, 3.0), (50, 4.0)], purge_step=20)
    steps, returns = read_training_returns(run)
    assert steps.tolist() == [10, 30, 50] and returns.tolist() == [1.0, 3.0, 4.0]   # 20 is purged too: >= purge
    assert not caplog.records                           # TensorBoard's warning about the purge is not the user's
    curve = curves.read_curve(run)
    assert curve.train_return.tolist() == [1.0, pytest.approx(8 / 3)] and curve.train_games.tolist() == [1, 3]
    assert read_training_returns(tmp_path / "nothing-logged")[0].size == 0
    time.sleep(1.1)
    log_games(run, [(60, 5.0)], purge_step=50)
    assert read_sessions(run) == [0, 20, 50] and read_sessions(tmp_path / "nothing-logged") == []
    assert run_cli(runs_cli.main, ["--evals", str(run)], prog="rl-runs") == 0
    assert "2 evaluations; resumed 2 times (at steps 20, 50);" in capsys.readouterr().out
    young = make_run(tmp_path / "young", [], games=[(10, 1.0)])      # resumed before its first evaluation
    time.sleep(1.1)
    log_games(young, [(30, 3.0)], purge_step=20)
    assert run_cli(runs_cli.main, ["--evals", str(young)], prog="rl-runs") == 0
    assert capsys.readouterr().out.endswith("0 evaluations yet; resumed 1 time (at step 20)\n")


def test_seeds_training_returns_are_averaged_and_listed_beside_each_evaluation(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "s1", [(100, 10.0, 2.0, 60.0), (200, 30.0, 4.0, 7260.0)], seed=1, games=[(50, 4.0), (150, 8.0)])
    make_run(root / "s2", [(100, 20.0, 3.0, 90.0), (200, 10.0, 5.0, 150.0)], seed=2, games=[(100, 2.0)])
    group, = curves.group_runs([curves.read_curve(root / "s1"), curves.read_curve(root / "s2")])
    evaluations = root / "s1" / "evaluations.jsonl"        # a resume switched on the weight average (eval_ema)
    first, second = evaluations.read_text().splitlines()
    averaged = {**json.loads(second), "weights": "average (eval_ema 0.001)", "online": {"mean": 12.5}}
    evaluations.write_text(f"{first}\n{json.dumps(averaged)}\n")
    curve = curves.read_curve(root / "s1")
    assert curve.averaged.tolist() == [False, True]
    assert np.isnan(curve.online[0]) and curve.online[1] == 12.5     # the online weights on the same seeds
    assert group.train_return.tolist() == [3.0, 4.0]                  # s1: 4, then (4+8)/2; s2: 2, then 2
    assert run_cli(runs_cli.main, ["--evals", str(root / "s1")], prog="rl-runs") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{root / 's1'} (cartpole, seed 1): 2 evaluations")
    assert lines[1].split() == ["step", "wall", "time", "(s)", "eval", "games", "epsilon", "weights", "eval", "mean",
                                "eval", "sd", "eval", "median", "online", "mean", "train", "mean", "train", "sd",
                                "train", "games"]
    assert lines[2].split() == ["100", "60", "?", "?", "online", "10.00", "2.00", "-", "-", "4.00", "0.00", "1"]
    assert lines[3].split() == ["200", "7,260", "?", "?", "average", "30.00", "4.00", "-", "12.50", "6.00", "2.00",
                                "2"]
    pytest.importorskip("matplotlib")          # the average's evaluations are drawn hollow, the online dotted
    assert run_cli(runs_cli.main, ["--plot", str(tmp_path / "c.png"), str(root)], prog="rl-runs") == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_the_caption_names_only_the_marks_drawn(tmp_path):
    """A run without training games has no dashed line, so the caption must not explain one."""
    plain = curves.group_runs([curves.read_curve(make_run(tmp_path / "plain", [(100, 10.0, 1.0, 60.0)]))])
    played = curves.group_runs([curves.read_curve(make_run(tmp_path / "played", [(100, 10.0, 1.0, 60.0)],
                                                           games=[(50, 4.0)]))])
    assert curves.caption(plain).startswith("evaluation: mean over seeds")
    assert not any(mark in curves.caption(plain) for mark in ("dashed", "hollow", "dotted"))
    assert "dashed: training return" in curves.caption(played)


def test_evals_refuses_paths_without_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["--evals", str(tmp_path / "empty")])
    assert "no runs" in err and str(tmp_path / "empty") in err
