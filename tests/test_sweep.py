"""rl-sweep (scripts/sweep.py) and what it runs per grid point (agents/sweep.py): the grid, the table of
scores over seeds, bad input, and a whole sweep of two seeds on a local Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agents.sweep import sweep_run
from rl.cli import run_cli
from scripts import sweep as sweep_cli
from tests.support import NO_RAY, cartpole, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("argv,names", [
    (["--seeds", "3..1"], "--seeds '3..1'"),
    (["--seeds", "a..b"], "not a whole number"),
    (["--seeds", "1,1"], "appears twice"),
    (["--set", "learning_rate"], "use KEY=V1,V2"),
    (["--set", "learning_rate=1e-3,"], "empty value"),
    (["--set", "learning_rat=1e-3,1e-4"], "'learning_rate'"),
    (["--set", "learning_rate=0,1e-3"], "learning_rate = 0"),
    (["--set", "seed=1,2"], "--seeds"),
    (["--set", "gamma=0.9", "--set", "gamma=0.8"], "already set"),
    (["--cpus-per-run", "0"], "cpus_per_run = 0.0 is not allowed: must be > 0.0"),
    (["--bootstrap-reps", "0"], "bootstrap_reps = 0 is not allowed: must be >= 1"),
    (["--actors", "-1"], "actors = -1 is not allowed: must be >= 0"),
    (["--preset", "brekout"], "unknown preset 'brekout'"),
])
def test_sweep_rejects_bad_input(argv, names, tmp_path, capsys):
    line = one_line_error(sweep_cli.main, ["--preset", "cartpole", *argv, "--root", str(tmp_path / "sw")], capsys)
    assert names in line, line
    assert not (tmp_path / "sw").exists()


def test_an_apex_sweep_refuses_what_rl_train_actors_refuses(tmp_path, capsys):
    pytest.importorskip("ray", reason=NO_RAY)
    line = one_line_error(sweep_cli.main, ["--preset", "cartpole", "--actors", "2", "--set", "replay_device=\"device\"",
                                           "--root", str(tmp_path / "sw")], capsys)
    assert "replay_device = 'device' is not allowed with --actors 2" in line
    assert not (tmp_path / "sw").exists()


def test_sweep_without_rliable_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    # rliable missing; Ray present (or so find_spec says, so this runs without the distributed extra too)
    fake = {"rliable": None, "ray": real("json")}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake[name] if name in fake else real(name, *a))
    line = one_line_error(sweep_cli.main, ["--preset", "cartpole", "--root", str(tmp_path / "sw")], capsys)
    assert "need rliable" in line and ".[stats]" in line
    assert not (tmp_path / "sw").exists()


def test_sweep_table_of_scores_over_seeds():
    """Per setting, latest.pt and best.pt over the seeds that have a score; a failed seed and a run without
    best.pt are shown, not counted."""
    base = cartpole()
    runs = sweep_cli.build_grid(base, sweep_cli.parse_axes(["double=true,false"], base), [0, 1, 2])
    scores = {0: (500.0, 500.0), 1: (300.0, 480.0), 2: (420.0, None)}
    results = {r["name"]: {"status": "finished", "eval": {"latest": {"mean": scores[r["seed"]][0]},
                                                          **({"best": {"mean": scores[r["seed"]][1]}}
                                                             if scores[r["seed"]][1] is not None else {})}}
               for r in runs if r["point"] == (("double", True),)}
    results["double=false-s0"] = {"status": "failed", "error": "boom"}
    rows = sweep_cli.summary_rows(runs, results, reps=500)
    true, false = rows
    assert true["latest"]["mean"] == 1220 / 3 and true["latest"]["std"] == pytest.approx(np.std([500, 300, 420], ddof=1))
    assert (true["latest"]["worst"], true["latest"]["worst_seed"]) == (300.0, 1)
    assert true["best"]["n"] == 2 and false["latest"] is None
    table = sweep_cli.format_table(rows).splitlines()
    assert table[0].split("  ")[0] == "setting" and all(h in table[0] for h in sweep_cli.TABLE_HEADER)
    assert "mean ± std (ddof 1)" in table[0] and "IQM [95% CI]" in table[0]
    latest, best = table[2], table[3]
    assert "latest.pt" in latest and "3/3" in latest and "406.67 ± 100.66" in latest and "300.00 (s1)" in latest
    assert "best.pt" in best and "2/3" in best and "s2 none" in best
    assert "s0 failed" in table[4] and "0/3" in table[4]


def test_sweep_grid_parsing():
    assert sweep_cli.parse_seeds("0..4") == [0, 1, 2, 3, 4]
    assert sweep_cli.parse_seeds("7") == [7] and sweep_cli.parse_seeds("0,3,7") == [0, 3, 7]
    assert sweep_cli.split_values('[64, 64],[128],"adam"') == ["[64, 64]", "[128]", '"adam"']
    base = cartpole()
    axes = sweep_cli.parse_axes(["hidden-sizes=[64, 64],[32]", "double=true,false"], base)
    assert axes == [("hidden_sizes", [[64, 64], [32]]), ("double", [True, False])]
    runs = sweep_cli.build_grid(base, axes, [0, 1])
    assert len(runs) == 8 and len({r["name"] for r in runs}) == 8
    assert runs[0]["name"] == "hidden_sizes=64x64,double=true-s0" and runs[0]["cfg"].hidden_sizes == [64, 64]


def test_sweep_run_scores_latest_and_best_and_reports_a_failure(tmp_path):
    """One grid point in this process: trained, then each asked checkpoint scored as rl-evaluate scores it;
    a run directory that already holds a run is a failed row, not an exception."""
    cfg = cartpole(total_steps=600, learning_starts=200, eval_every=300, eval_episodes=1)
    result = sweep_run(cfg, str(tmp_path / "s0"), "cartpole", "s0", 1, ("latest", "best"))
    assert (result["status"], result["step"], sorted(result["eval"])) == ("finished", 600, ["best", "latest"])
    assert result["eval"]["latest"]["episodes"] == cfg.eval_episodes and result["eval"]["best"]["seed"] == 12345
    again = sweep_run(cfg, str(tmp_path / "s0"), "cartpole", "s0", 1, ("latest",))
    assert again["status"] == "failed" and "already holds a run" in again["error"] and "eval" not in again


def test_sweep_of_two_seeds(ray_cluster, tmp_path, capsys):
    """The seed-robustness benchmark end to end: two CartPole seeds, latest.pt and best.pt of each scored as
    rl-evaluate scores them, the table's columns and statistics."""
    root = tmp_path / "sweep"
    argv = ["--preset", "cartpole", "--seeds", "0..1", "--set", "total_steps=1500", "--set", "learning_starts=500",
            "--set", "eval_every=500", "--set", "eval_episodes=2", "--set", "torch_threads=1",
            "--bootstrap-reps", "1000", "--root", str(root)]
    assert run_cli(sweep_cli.main, argv, prog="rl-sweep") == 0
    out = capsys.readouterr().out
    runs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert runs == ["s0", "s1"]
    for name in runs:
        assert (root / name / "checkpoints/latest.pt").exists() and (root / name / "checkpoints/best.pt").exists()
        assert json.loads((root / name / "run.json").read_text())["status"] == "finished"
        assert list((root / name).glob("events.out.tfevents.*"))
    summary = json.loads((root / "summary.json").read_text())
    (row,) = summary["rows"]
    for which in ("latest", "best"):
        scores = [r[which] for r in row["runs"]]
        assert row[which]["n"] == 2 and row[which]["mean"] == pytest.approx(np.mean(scores))
        assert row[which]["std"] == pytest.approx(np.std(scores, ddof=1))
        assert row[which]["ci_low"] <= row[which]["iqm"] <= row[which]["ci_high"]
    header = next(line for line in out.splitlines() if line.startswith("setting"))
    for column in ("checkpoint", "seeds", "IQM [95% CI]", "mean ± std (ddof 1)", "worst (seed)", "per seed"):
        assert column in header
    assert any(line.startswith("base") and "latest.pt" in line and "2/2" in line for line in out.splitlines())
    assert any(line.startswith("base") and "best.pt" in line and "2/2" in line for line in out.splitlines())
    assert "2 full games at epsilon 0.05, seed 12345" in out and "sample std (ddof 1)" in out
    # each score is what rl-evaluate prints for that file
    from scripts import evaluate
    report = tmp_path / "s1.json"
    assert run_cli(evaluate.main, [str(root / "s1/checkpoints/best.pt"), "--episodes", "2", "--no-progress",
                                   "--json", str(report)]) == 0
    assert json.loads(report.read_text())["mean"] == row["runs"][1]["best"]


def test_an_apex_sweep_trains_each_point_with_actors_one_after_another(ray_cluster, tmp_path, capsys):
    """--actors 2: each seed is an Ape-X run (its learner in rl-sweep's process, two actors on the cluster),
    then scored like any other."""
    root = tmp_path / "sweep"
    argv = ["--preset", "cartpole", "--seeds", "0..1", "--actors", "2", "--set", "total_steps=1200",
            "--set", "learning_starts=400", "--set", "eval_every=0", "--set", "target_return=0", "--set", "eval_episodes=2",
            "--set", "torch_threads=1", "--bootstrap-reps", "1000", "--root", str(root)]
    assert run_cli(sweep_cli.main, argv, prog="rl-sweep") == 0
    assert "one after another, each with 2 Ape-X actors" in capsys.readouterr().err
    for name in ("s0", "s1"):
        assert json.loads((root / name / "distributed.json").read_text())["actors"] == 2
        assert json.loads((root / name / "run.json").read_text())["status"] == "finished"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["actors"] == 2 and summary["rows"][0]["latest"]["n"] == 2
