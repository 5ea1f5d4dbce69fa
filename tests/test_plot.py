"""rl-runs --plot: learning curves from hand-written run directories, seeds of one setting aggregated."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rl import curves
from rl.cli import run_cli
from scripts import runs as runs_cli

pytest.importorskip("matplotlib")


def make_run(path: Path, evals: list[tuple[int, float, float, float | None]], preset: str | None = "cartpole",
             **config) -> Path:
    """A run directory as rl-train leaves it: config.toml, run.json, and one evaluation per
    (step, mean, std, wall seconds or None for a file from before wall times were recorded)."""
    path.mkdir(parents=True)
    config = {"env": "cartpole", "network": "mlp", **config}
    (path / "config.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    (path / "run.json").write_text(json.dumps({"preset": preset, "status": "finished"}))
    records = [{"step": s, "mean": m, "std": sd, **({} if w is None else {"wall_time": w})} for s, m, sd, w in evals]
    (path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
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
