"""Ape-X through the command line (rl-train --actors, rl-bench --actors; agents/distributed/): the
single-process package never imports Ray, bad input is one line and exit 2 with or without it, and a
run in its own process stops on Ctrl-C and resumes. The modules have their own test files
(test_distributed_*.py); rl-sweep's are in test_sweep.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl import checkpoint as ckpt
from rl.cli import run_cli
from scripts import train as train_cli
from tests.support import NO_RAY, one_line_error

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# --- without Ray ----------------------------------------------------------------------------------

def test_single_process_package_never_imports_ray():
    """Every module outside agents/distributed/, and rl-train --help, leave 'ray' out of sys.modules."""
    code = """
import pkgutil, importlib, sys, contextlib, io
def walk(pkg):
    for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__, pkg + "."):
        if m.name != "agents.distributed":
            importlib.import_module(m.name)
            if m.ispkg:
                walk(m.name)
for pkg in ("rl", "agents", "envs", "scripts", "presets"):
    walk(pkg)
from scripts import benchmark, train, sweep
for main in (train.main, sweep.main, benchmark.main):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(["--help"])
bad = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
assert not bad, bad
print("clean")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("argv,names", [
    (["--actors", "0"], "--actors 0"),
    (["--actors", "-3"], "--actors -3"),
    (["--ray-address", "auto"], "--ray-address needs --actors"),
])
def test_train_rejects_bad_distributed_flags(argv, names, tmp_path, capsys):
    line = one_line_error(train_cli.main, ["--preset", "cartpole", *argv, "--run-dir", str(tmp_path / "r")], capsys)
    assert names in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,names", [
    (["--actors", "0"], "--actors 0"),
    (["--ray-address", "auto"], "--ray-address needs --actors"),
    (["--actors", "2", "--buffer-size", "100"], "buffer_size = 100"),
])
def test_bench_rejects_bad_distributed_flags_before_measuring(argv, names, capsys, monkeypatch):
    from scripts import benchmark
    monkeypatch.setattr(benchmark, "env_ceiling", lambda *a: pytest.fail("measured before checking the flags"))
    if "--buffer-size" in argv:
        pytest.importorskip("ray", reason=NO_RAY)             # the layout check lives in agents/distributed/
    assert names in one_line_error(benchmark.main, ["--preset", "cartpole", *argv], capsys, prog="rl-bench")


def test_actors_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from scripts import benchmark
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    line = one_line_error(train_cli.main, ["--preset", "cartpole", "--actors", "2", "--run-dir", str(tmp_path / "r")],
                          capsys)
    assert "needs Ray" in line and ".[distributed]" in line
    assert not (tmp_path / "r").exists()
    line = one_line_error(benchmark.main, ["--preset", "cartpole", "--actors", "2"], capsys, prog="rl-bench")
    assert "needs Ray" in line and ".[distributed]" in line


def test_too_small_a_replay_for_the_actors_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray", reason=NO_RAY)
    # cartpole: 4 envs an actor, n_step 3; each actor's share needs 4 * (50 + 1 + 3 + 1) = 220 > 500 / 4
    line = one_line_error(train_cli.main, ["--preset", "cartpole", "--actors", "4", "--actor-chunk-steps", "50",
                                           "--buffer-size", "500", "--run-dir", str(tmp_path / "r")], capsys)
    assert "buffer_size = 500" in line and "buffer_size >= 880" in line and "--actors 4" in line
    assert not (tmp_path / "r").exists()


def test_bench_measures_apex_acting_and_the_learner_through_the_replay_actor(ray_cluster, tmp_path, capsys):
    """rl-bench --actors 2: acting rates for 1 and 2 actors, every chunk they report landed in the replay
    actor (2 warm-up chunks, then 2 x ceil(800 / 40) measured ones), and the learner's rate through it."""
    from scripts import benchmark
    out = tmp_path / "bench.json"
    argv = ["--preset", "cartpole", "--actors", "2", "--env-steps", "800", "--updates", "16", "--replay-steps", "400",
            "--train-steps", "200", "--fill-steps", "200", "--torch-threads", "1", "--json", str(out)]
    assert run_cli(benchmark.main, argv, prog="rl-bench") == 0
    printed = capsys.readouterr().out
    assert "Ape-X 1 actor " in printed and "Ape-X 2 actors" in printed and "Ape-X learner" in printed
    apex = json.loads(out.read_text())["distributed"]
    chunk = 10 * 4                                                   # the preset's actor_chunk_steps x num_envs
    assert apex["replay_inserted"] == 2 * chunk + 2 * 20 * chunk
    assert set(apex["acting_env_steps_per_s"]) == {"1", "2"} and min(apex["acting_env_steps_per_s"].values()) > 0
    assert apex["learner_updates_per_s"] > 0 and apex["cluster_cpus"] == 2


@pytest.mark.slow
def test_ctrl_c_stops_every_actor_and_resume_continues(ray_cluster, tmp_path, capsys):
    """rl-train --actors 2 in its own process (and its own Ray): Ctrl-C checkpoints, exits 0 and leaves no
    actor behind; --resume --actors continues the learner to the end."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "scripts.train", "--preset", "cartpole", "--actors", "2", "--total-steps", "1000000",
           "--learning-starts", "1000", "--eval-every", "0", "--target-return", "0", "--torch-threads", "1", "--no-progress",
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _workers_started(run_dir) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _workers_started(run_dir), proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(4)                                              # let it learn a little
        os.killpg(proc.pid, signal.SIGINT)                          # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped at step" in err and f"rl-train --resume {run_dir}" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    marker = json.loads((run_dir / "distributed.json").read_text())
    pids = [w["pid"] for w in marker["workers"]] + [marker["replay"]["pid"]]
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "an actor outlived rl-train"

    step = ckpt.decode_meta(ckpt.load(run_dir / "checkpoints/latest.pt")["meta"])["step"]
    assert step > 0
    line = one_line_error(train_cli.main, ["--resume", str(run_dir), "--no-progress"], capsys)
    assert "--actors" in line
    total = step + 3_000
    code = run_cli(train_cli.main, ["--resume", str(run_dir), "--actors", "2", "--total-steps", str(total),
                                    "--no-progress"], prog="rl-train")
    assert code == 0
    assert "refilling 1000 steps" in capsys.readouterr().err
    payload = ckpt.load(run_dir / "checkpoints/latest.pt")
    assert ckpt.decode_meta(payload["meta"])["step"] >= total
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def _workers_started(run_dir: Path) -> bool:
    try:
        return "workers" in json.loads((run_dir / "distributed.json").read_text())
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
