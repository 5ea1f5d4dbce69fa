"""Runs survive interruption, crashes mid-save, corrupt or malicious files, NaNs and bad input."""
from __future__ import annotations

import contextlib
import io
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.dqn import DQNAgent
from agents.evaluation import play, saved_player
from agents.run import EVAL_SEED_OFFSET
from rl import checkpoint as ckpt
from rl.cli import run_cli
from rl.config import ConfigError, TrainConfig, from_dict, validate_train
from rl.logging import read_evaluations
from scripts import train as train_cli

ROOT = Path(__file__).resolve().parents[1]


def weights(run_dir: Path) -> dict:
    return ckpt.load(run_dir / "checkpoints" / "latest.pt")["agent"]


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("q", "target"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs"
    assert a["updates"] == b["updates"]


@pytest.mark.parametrize("args", [
    ["--preset", "cartpole", "--total-steps", "4000", "--learning-starts", "800", "--checkpoint-every", "1000"],
    ["--total-steps", "1600", "--learning-starts", "400", "--num-envs", "4", "--buffer-size", "4000",
     "--target-update", "200", "--checkpoint-every", "400"],
    ["--preset", "cartpole", "--total-steps", "4000", "--learning-starts", "800", "--checkpoint-every", "1000",
     "--replay-device", "device", "--prioritized"],
], ids=["cartpole", "breakout", "cartpole-prioritized-device-replay"])
def test_resume_is_bit_identical(args, tmp_path):
    total = int(args[args.index("--total-steps") + 1])
    common = [*args, "--no-progress", "--torch-threads", "1"]
    assert run_cli(train_cli.main, [*common, "--run-dir", str(tmp_path / "straight")]) == 0
    assert run_cli(train_cli.main, [*common, "--run-dir", str(tmp_path / "split"), "--stop-at", str(total // 2)]) == 0
    assert ckpt.decode_meta(ckpt.load(tmp_path / "split/checkpoints/latest.pt")["meta"])["step"] == total // 2
    assert run_cli(train_cli.main, ["--resume", str(tmp_path / "split"), "--no-progress", "--torch-threads", "1"]) == 0
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "split"))


def test_resume_without_saved_replay_refills_first(tmp_path, capsys):
    base = ["--preset", "cartpole", "--total-steps", "3000", "--learning-starts", "500", "--no-progress",
            "--no-save-replay", "--run-dir", str(tmp_path / "r")]
    assert run_cli(train_cli.main, [*base, "--stop-at", "1500"]) == 0
    updates_at_stop = weights(tmp_path / "r")["updates"]
    capsys.readouterr()
    assert run_cli(train_cli.main, ["--resume", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "refilling 500 steps" in capsys.readouterr().err
    # 1500 more steps, of which the first 500 only refill: 1000 / train_frequency(2) updates
    assert weights(tmp_path / "r")["updates"] - updates_at_stop == pytest.approx(500, abs=4)


def test_a_resume_writes_its_changes_into_config_toml_so_later_resumes_keep_them(tmp_path, capsys):
    """--total-steps and --keep-checkpoints given to one resume hold for the next ones too; --torch-threads,
    a setting of the session's machine, does not."""
    run_dir = tmp_path / "r"
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "3000", "--learning-starts", "500",
                                    "--no-progress", "--run-dir", str(run_dir), "--stop-at", "1000"]) == 0
    capsys.readouterr()
    assert run_cli(train_cli.main, ["--resume", str(run_dir), "--no-progress", "--total-steps", "2000",
                                    "--keep-checkpoints", "5", "--torch-threads", "2", "--stop-at", "1500"]) == 0
    err = capsys.readouterr().err
    assert "config.toml now keeps keep_checkpoints = 5 (was 3); total_steps = 2000 (was 3000)" in err
    text = (run_dir / "config.toml").read_text()
    assert "# resumed at step 1,000 with keep_checkpoints = 5 (was 3); total_steps = 2000 (was 3000)" in text
    saved = from_dict(TrainConfig, tomllib.loads(text))
    assert (saved.total_steps, saved.keep_checkpoints, saved.torch_threads) == (2000, 5, 1)
    assert run_cli(train_cli.main, ["--resume", str(run_dir), "--no-progress"]) == 0
    assert ckpt.decode_meta(ckpt.load(run_dir / "checkpoints" / "latest.pt")["meta"])["step"] == 2000
    assert "config.toml now keeps" not in capsys.readouterr().err


def test_a_resume_can_switch_on_the_evaluation_average_without_touching_learning(tmp_path, capsys):
    """eval_ema is resumable: learning never reads the average, so the run's weights and updates are those of a
    run resumed without it, and the average starts from the online weights at the resume."""
    base = ["--preset", "cartpole", "--total-steps", "1200", "--learning-starts", "400", "--no-progress",
            "--target-return", "0", "--torch-threads", "1"]
    for name in ("plain", "averaged"):
        assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / name), "--stop-at", "800"]) == 0
    assert run_cli(train_cli.main, ["--resume", str(tmp_path / "plain"), "--no-progress"]) == 0
    capsys.readouterr()
    assert run_cli(train_cli.main, ["--resume", str(tmp_path / "averaged"), "--no-progress", "--eval-ema", "0.5"]) == 0
    assert "eval_ema = 0.5 (was 0.0)" in capsys.readouterr().err
    plain, averaged = weights(tmp_path / "plain"), weights(tmp_path / "averaged")
    assert_same_weights(plain, averaged)
    assert "average" not in plain and not all(torch.equal(averaged["average"][k], averaged["q"][k])
                                             for k in averaged["q"])


def test_evaluating_the_online_weights_beside_the_average_leaves_learning_alone(tmp_path, capsys):
    """eval_online plays the online weights on the average's seeds at every evaluation: the record keeps both,
    the online figure is the online weights' own score, and the run learns exactly what it learns without it."""
    base = ["--preset", "cartpole", "--total-steps", "1200", "--learning-starts", "400", "--no-progress",
            "--target-return", "0", "--torch-threads", "1", "--eval-ema", "0.5", "--eval-every", "600",
            "--eval-episodes", "3"]
    assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / "both")]) == 0
    assert "the online weights, the same seeds: return:" in capsys.readouterr().out
    assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / "average"), "--no-eval-online"]) == 0
    assert_same_weights(weights(tmp_path / "both"), weights(tmp_path / "average"))
    both, average = read_evaluations(tmp_path / "both"), read_evaluations(tmp_path / "average")
    assert [r["mean"] for r in both] == [r["mean"] for r in average] and "online" not in average[-1]
    assert both[-1]["weights"].startswith("average") and both[-1]["online"]["episodes"] == 3
    cfg, agent_for = saved_player(tmp_path / "both" / "checkpoints" / "latest.pt", torch.device("cpu"), online=True)
    online = play(agent_for, cfg, episodes=3, epsilon=cfg.eval_epsilon, seed=cfg.seed + EVAL_SEED_OFFSET,
                  num_envs=cfg.num_envs)
    assert online["returns"] == both[-1]["online"]["returns"]


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "scripts.train", "--preset", "cartpole", "--no-progress",
                             "--run-dir", str(run_dir), "--learning-starts", "500"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run_dir / "run.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"rl-train --resume {run_dir}" in err
    meta = ckpt.decode_meta(ckpt.load(run_dir / "checkpoints" / "latest.pt")["meta"])
    assert 0 < meta["step"] < 100_000
    assert '"status": "stopped"' in (run_dir / "run.json").read_text()
    assert list(run_dir.glob("events.out.tfevents.*"))


KILLER = """
import sys, torch
from rl.checkpoint import CheckpointDir
d = CheckpointDir(sys.argv[1], keep=2)
big = torch.arange(3_000_000, dtype=torch.float32)
i = 0
while True:
    d.save({"agent": {"w": big + i}, "meta": str(i)}, step=i, periodic=True)
    i += 1
    print(i, flush=True)
"""


def test_kill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    for delay in (0.6, 0.9, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # at least one complete save
        time.sleep(delay)
        proc.kill()
        proc.wait()
        payload = ckpt.load(tmp_path / "latest.pt")
        i = int(payload["meta"])
        assert torch.equal(payload["agent"]["w"][:3], torch.tensor([0.0, 1.0, 2.0]) + i)
        assert len(list(tmp_path.glob("step_*.pt"))) <= 3
        for periodic in tmp_path.glob("step_*.pt"):
            try:
                ckpt.load(periodic)
            except ckpt.CheckpointError:
                pytest.fail(f"{periodic} is torn")


def test_keeps_last_k_periodic_checkpoints(tmp_path):
    d = ckpt.CheckpointDir(tmp_path, keep=2)
    for step in (100, 200, 300, 400):
        d.save({"meta": str(step)}, step, periodic=True)
    assert [p.name for p in d.periodic()] == ["step_000000000300.pt", "step_000000000400.pt"]
    assert ckpt.load(d.latest)["meta"] == "400"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_is_named_in_the_error(damage, tmp_path):
    path = tmp_path / "latest.pt"
    ckpt.save(path, {"agent": {"w": torch.randn(1000)}, "meta": "{}"})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(200, len(data) - 200, 97):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        ckpt.load(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real CartPole run of 1,000 steps: latest.pt and the replay beside it, as rl-train writes them."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    argv = ["--preset", "cartpole", "--total-steps", "1000", "--learning-starts", "200", "--eval-every", "0", "--target-return", "0",
            "--torch-threads", "1", "--no-progress", "--run-dir", str(run_dir)]
    assert run_cli(train_cli.main, argv) == 0
    return run_dir


def flip_one_bit_in_a_weight(path: Path) -> None:
    """Flip one bit in the middle of the Q-network's first weight matrix where the zip stores its bytes
    (a data record), leaving the archive's structure whole."""
    q = torch.load(path, weights_only=True)["agent"]["q"]
    stored = next(v for k, v in q.items() if k.endswith("weight")).numpy().tobytes()
    with zipfile.ZipFile(path) as zf:
        record = next(i for i in zf.infolist() if "/data/" in i.filename and zf.read(i) == stored)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len       # after the record's local header
    assert data[start:start + len(stored)] == stored
    data[start + len(stored) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def tensors(value, prefix=""):
    """Every tensor in a payload by its path."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tensors(v, f"{prefix}/{k}")


def test_one_flipped_bit_in_a_weight_is_refused_and_the_file_kept(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    latest = run_dir / "checkpoints" / "latest.pt"
    intact = torch.load(latest, weights_only=True)
    flip_one_bit_in_a_weight(latest)
    # the archive still opens and differs in exactly one element of one weight: the flip is inside tensor data
    damaged = dict(tensors(torch.load(latest, weights_only=True)))
    changed = {k: int((v != damaged[k]).sum()) for k, v in tensors(intact) if not torch.equal(v, damaged[k])}
    assert len(changed) == 1 and list(changed.values()) == [1] and next(iter(changed)).endswith("weight"), changed
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    for argv in (["scripts.evaluate", str(latest)], ["scripts.train", "--resume", str(run_dir), "--no-progress"]):
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(err) == 1 and str(latest) in err[0] and "checksum" in err[0], err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files      # nothing rewritten


def test_intact_checkpoint_loads_without_a_note(tiny_run, capsys):
    payload = ckpt.load(tiny_run / "checkpoints" / "latest.pt")
    assert ckpt.CHECKSUM_KEY not in payload and "q" in payload["agent"]
    assert capsys.readouterr().err == ""


def test_checkpoint_from_before_checksums_loads_with_one_note(tiny_run, tmp_path, capsys):
    old = tmp_path / "old.pt"
    payload = torch.load(tiny_run / "checkpoints" / "latest.pt", weights_only=True)
    del payload[ckpt.CHECKSUM_KEY]
    torch.save(payload, old)
    from scripts import evaluate
    assert run_cli(evaluate.main, [str(old), "--episodes", "1", "--no-progress"]) == 0
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tensors(ckpt.load(old)), tensors(payload)))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(old) in err[0] and "no checksum" in err[0], err


def test_replay_files_are_checked_against_their_checksums(tmp_path, capsys):
    d = ckpt.CheckpointDir(tmp_path, keep=1)
    d.save_replay({"frames": np.arange(4096, dtype=np.uint8).reshape(16, 256), "rewards": np.ones(16, np.float32)}, 8)
    assert set(d.load_replay(8)) == {"frames", "rewards"}
    frames = d.replay_dir / "frames.npy"
    data = bytearray(frames.read_bytes())
    data[-100] ^= 0x01                                            # inside the array, past the .npy header
    frames.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=str(frames)):
        d.load_replay(8)
    (d.replay_dir / ckpt.REPLAY_CHECKSUMS).unlink()               # a replay saved before checksums
    assert d.load_replay(8)["frames"][-1, -100] == 156 ^ 0x01
    d.load_replay(8)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(d.replay_dir) in err[0] and "no checksum" in err[0], err


class _Payload:
    """Unpickling this would write a file: the classic pickle code-execution attack."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": {}, "agent": {"q": _Payload(str(marker))}}, path)
    with pytest.raises(ckpt.CheckpointError, match="not plain data"):
        ckpt.load(path)
    assert not marker.exists()
    from scripts import evaluate
    assert run_cli(evaluate.main, [str(path)]) == 2
    assert "not plain data" in capsys.readouterr().err
    assert not marker.exists()


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    base = ["--preset", "cartpole", "--total-steps", "4000", "--learning-starts", "500", "--no-progress",
            "--log-every", "200", "--run-dir", str(run_dir)]
    assert run_cli(train_cli.main, [*base, "--stop-at", "1000"]) == 0
    good = weights(run_dir)
    real_update = DQNAgent.update

    def poisoned(self, batch):
        out = real_update(self, batch)
        if self.updates > 400:
            with torch.no_grad():
                next(self.q.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(DQNAgent, "update", poisoned)
    capsys.readouterr()
    code = run_cli(train_cli.main, ["--resume", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "non-finite" in err[-1] and "at step" in err[-1] and "latest.pt" in err[-1]
    assert_same_weights(good, weights(run_dir))
    assert '"status": "failed"' in (run_dir / "run.json").read_text()


def test_unwritable_run_dir_is_one_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = run_cli(train_cli.main, ["--preset", "cartpole", "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not writable" in err[0] and str(blocker / "run") in err[0]
    assert blocker.read_text() == "x"


def test_full_disk_during_checkpoint_keeps_old_files(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    base = ["--preset", "cartpole", "--total-steps", "3000", "--learning-starts", "500", "--no-progress",
            "--run-dir", str(run_dir)]
    assert run_cli(train_cli.main, [*base, "--stop-at", "1000"]) == 0
    before = {p: p.read_bytes() for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", no_space)
    capsys.readouterr()
    code = run_cli(train_cli.main, ["--resume", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "No space left on device" in err[-1] and "intact" in err[-1]
    after = {p: p.read_bytes() for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}
    assert after == before


# --- random input never produces a traceback ------------------------------------------------

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 300), max_size=4),
                   st.dictionaries(st.text(max_size=6), st.floats(), max_size=2))
KEYS = st.one_of(st.sampled_from(sorted(TrainConfig.__dataclass_fields__)), st.text(max_size=15))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_random_configs_are_accepted_or_rejected_cleanly(data):
    data = {k: v for k, v in data.items() if v is not None}
    try:
        cfg = validate_train(from_dict(TrainConfig, {"env": "cartpole", "network": "mlp", **data}))
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
    else:
        assert cfg.batch_size <= cfg.buffer_size and cfg.learning_starts < cfg.total_steps


FLAG = st.sampled_from(["--learning-rate", "--buffer-size", "--batch-size", "--gamma", "--optimizer", "--loss",
                        "--env", "--preset", "--total-steps", "--device", "--double", "--no-double", "--seed",
                        "--optimizer-kwargs", "--hidden-sizes", "--tau", "--bogus-flag", "--resume"])
WORD = st.one_of(st.text(max_size=8), st.sampled_from(["0", "-1", "1e-3", "nan", "inf", "adam", "huber",
                                                        "[1, 2]", "{lr = 1}", "cartpole", "1e309", "true"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(FLAG, WORD), max_size=8))
def test_random_command_lines_never_traceback(argv):
    """Parse and resolve only (no training): every argv is accepted or rejected with exit 2 and one line."""
    parser = train_cli.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(argv)
        if args.resume is not None:
            args.resume = Path("/nonexistent-run-dir")
        train_cli.resolve_config(args)
    except SystemExit as exc:
        if exc.code != 0:                     # -h prints help and exits 0
            lines = err.getvalue().splitlines()
            assert exc.code == 2 and len(lines) == 1 and lines[0].startswith("rl-train: error: "), lines
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
