"""rl-runs: one row per run with progress, evaluation scores and a status that tells a live run from one
whose process died."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl.cli import run_cli
from rl.logging import read_evaluations
from scripts import runs as runs_cli
from scripts import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--torch-threads", "1", "--no-save-replay"]

NO_START_TIME = "this OS gives no process start time (/proc), so a reused pid cannot be told apart"


def rl_runs(capsys, *argv) -> dict[str, dict[str, str]]:
    """rl-runs' table, parsed back into {run: {column: cell}} (cells are separated by 2+ spaces)."""
    capsys.readouterr()
    assert run_cli(runs_cli.main, list(argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = [lines[0].index(c) for c in runs_cli.COLUMNS]
    bounds = list(zip(starts, starts[1:] + [None]))
    return {row["run"]: row for row in
            ({c: line[a:b].strip() for c, (a, b) in zip(runs_cli.COLUMNS, bounds)} for line in lines[1:])}


def edit_status(run_dir: Path, **changes) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, **changes}))


def test_lists_finished_stopped_failed_and_unknown_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    common = ["--preset", "cartpole", "--total-steps", "800", "--learning-starts", "200", "--eval-every", "400",
              "--eval-episodes", "2", *QUIET]
    assert run_cli(train_cli.main, [*common, "--run-dir", str(root / "done")]) == 0
    assert run_cli(train_cli.main, [*common, "--run-dir", str(root / "sweep" / "paused"), "--stop-at", "400"]) == 0
    shutil.copytree(root / "done", root / "broken")
    edit_status(root / "broken", status="failed")
    shutil.copytree(root / "done", root / "elsewhere")
    edit_status(root / "elsewhere", status="running", host="another-machine")
    (root / "fresh").mkdir()
    shutil.copy(root / "done" / "config.toml", root / "fresh")           # made, never started

    rows = rl_runs(capsys, str(root))
    assert list(rows) == ["broken", "done", "elsewhere", "fresh", "sweep/paused"]
    evals = [json.loads(line) for line in (root / "done" / "evaluations.jsonl").read_text().splitlines()]
    best = max(evals, key=lambda r: r["mean"])
    times = [r["wall_time"] for r in evals]                               # rl-runs --plot's time axis
    assert [r["step"] for r in evals] == [400, 800] and 0 <= times[0] <= times[1]
    assert times[1] <= json.loads((root / "done" / "run.json").read_text())["wall_time"]
    trained = json.loads((root / "done" / "run.json").read_text())
    assert 0 < trained["train_games"] <= 100
    assert rows["done"] == {"run": "done", "preset": "cartpole", "env": "cartpole", "steps": "800/800",
                            "train return": f"{trained['train_return']:.1f}", "last eval": f"{evals[-1]['mean']:.1f}",
                            "best eval": f"{best['mean']:.1f} @{best['step']}",
                            "best hns": "-", "wall time": rows["done"]["wall time"], "steps/s": "-", "left": "-",
                            "status": "finished"}
    assert rows["done"]["wall time"].endswith("s")
    assert rows["sweep/paused"]["status"] == "stopped" and rows["sweep/paused"]["steps"] == "400/800"
    assert rows["broken"]["status"] == "failed"
    assert rows["elsewhere"]["status"] == "running?"                      # cannot check another host's pid
    assert rows["fresh"]["status"] == "new" and rows["fresh"]["last eval"] == rows["fresh"]["train return"] == "-"
    assert rows["fresh"]["steps"] == "0/800"

    # a resumed run keeps its preset: --resume names none
    assert run_cli(train_cli.main, ["--resume", str(root / "sweep" / "paused"), "--stop-at", "600", *QUIET]) == 0
    assert rl_runs(capsys, str(root))["sweep/paused"]["preset"] == "cartpole"


def test_killed_training_shows_as_interrupted(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.train", "--preset", "cartpole", "--total-steps",
                             "10000000", "--run-dir", str(run_dir), *QUIET], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "run.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        info = json.loads((run_dir / "run.json").read_text())
        assert info["pid"] == proc.pid and info["status"] == "running"
        assert rl_runs(capsys, str(tmp_path / "runs"))["killed"]["status"] == "running"
    finally:
        proc.kill()                                                       # SIGKILL: no chance to write a status
        proc.wait()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert rl_runs(capsys, str(tmp_path / "runs"))["killed"]["status"] == "interrupted"


def test_reused_pid_is_not_mistaken_for_the_run(tmp_path, capsys):
    """A pid alive now but started at another time (reused after a crash) is not the training."""
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.toml").write_text('env = "cartpole"\ntotal_steps = 100\n')
    from rl.logging import process_identity
    me = process_identity()
    (run / "run.json").write_text(json.dumps({"status": "running", "step": 50, **me}))
    assert rl_runs(capsys, str(tmp_path))["old"]["status"] == "running"
    if me["pid_start"] is None:
        pytest.skip(NO_START_TIME)
    (run / "run.json").write_text(json.dumps({"status": "running", "step": 50, **me, "pid_start": me["pid_start"] - 1}))
    assert rl_runs(capsys, str(tmp_path))["old"]["status"] == "interrupted"


def test_a_live_run_shows_its_speed_and_time_left_and_an_interrupted_one_its_checkpoint(tmp_path, capsys):
    from rl.logging import process_identity

    me = process_identity()
    for name in ("live", "dead"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text('env = "breakout"\ntotal_steps = 1000000\n')
    info = {"status": "running", "step": 250_000, "checkpoint_step": 200_000, "total_steps": 1_000_000, "sps": 100.0}
    (tmp_path / "live" / "run.json").write_text(json.dumps({**info, **me}))
    rows = rl_runs(capsys, str(tmp_path))
    assert (rows["live"]["steps"], rows["live"]["steps/s"], rows["live"]["left"]) == ("250k/1M", "100", "2h05m")
    if me["pid_start"] is None:
        pytest.skip(NO_START_TIME)
    (tmp_path / "dead" / "run.json").write_text(json.dumps({**info, **me, "pid_start": me["pid_start"] - 1}))
    dead = rl_runs(capsys, str(tmp_path))["dead"]                     # a pid of another process: it died
    assert (dead["status"], dead["steps"], dead["steps/s"], dead["left"]) == ("interrupted", "200k/1M", "-", "-")


def test_evaluations_survive_torn_lines_and_resumes(tmp_path):
    lines = [{"step": 100, "mean": 1.0}, {"step": 200, "mean": 5.0}, {"step": 200, "mean": 4.0}]
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3')
    assert read_evaluations(tmp_path) == [{"step": 100, "mean": 1.0}, {"step": 200, "mean": 4.0}]


@pytest.mark.parametrize("n, shown", [(0, "0"), (800, "800"), (2400, "2.4k"), (250_000, "250k"),
                                      (1_234_567, "1.23M"), (10_000_000, "10M")])
def test_step_counts_read_at_a_glance(n, shown):
    assert runs_cli.count(n) == shown


def test_missing_or_empty_dir(tmp_path, capsys):
    assert run_cli(runs_cli.main, [str(tmp_path / "nope")], prog="rl-runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rl-runs: error: RUN_OR_DIR") and "nope" in err[0]
    assert run_cli(runs_cli.main, [str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs under {tmp_path}"


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_the_readme_breakout_table_is_the_committed_record_of_its_run(seed, capsys):
    """Each 10M run's evaluation rows in the README are what `rl-runs --evals` prints from the record committed
    beside it (docs/runs/breakout-10m-sS): every score quoted there can be checked from the repository, including
    those of a run whose directory was lost with its VM."""
    record = ROOT / "docs" / "runs" / f"breakout-10m-s{seed}"
    evaluations = read_evaluations(record)
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- run{seed}-evals: begin -->\n")[1].split(f"<!-- run{seed}-evals: end -->")[0]
    rows = [line.split(" | ") for line in block.splitlines() if line.startswith("| ") and "(sd " in line]
    assert len(rows) == len(evaluations) > 0
    for cells, evaluation in zip(rows, evaluations):
        step = evaluation["step"]
        assert cells[0] == "| " + (f"{step // 1000}k" if step < 1_000_000 else f"{step / 1e6:g}M")
        assert cells[1] == f"{evaluation['mean']:.2f} (sd {evaluation['std']:.2f})"
        assert cells[2] == (f"{evaluation['online']['mean']:.2f}" if "online" in evaluation else "-")
        if "train" in evaluation:           # records written since rl-train kept the training return in them
            assert cells[3] == f"{evaluation['train']['mean']:.2f} ({evaluation['train']['std']:.2f})"
    assert run_cli(runs_cli.main, ["--evals", str(record)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{e['mean']:.2f}" in printed for e in evaluations)
