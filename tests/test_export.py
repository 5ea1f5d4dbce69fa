"""rl-export: a training checkpoint -> a weights-only policy file that rl-evaluate plays exactly like the
checkpoint, and that rl-train refuses to resume."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl import checkpoint as ckpt
from rl.cli import run_cli
from scripts import evaluate as evaluate_cli
from scripts import export as export_cli
from scripts import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
PLAY = ["--episodes", "4", "--epsilon", "0.05", "--seed", "7", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny CartPole run that keeps a weight average (eval_ema), so online and average weights differ."""
    run_dir = tmp_path_factory.mktemp("export") / "cp"
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "600", "--learning-starts", "200",
                                    "--eval-ema", "0.5", "--run-dir", str(run_dir), "--no-progress",
                                    "--no-save-replay"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def exported(run_dir) -> dict[str, Path]:
    """The checkpoint exported both ways; the default one through the real command line."""
    latest = run_dir / "checkpoints" / "latest.pt"
    files = {"average": run_dir.parent / "policy.pt", "online": run_dir.parent / "policy-online.pt"}
    proc = subprocess.run([sys.executable, "-m", "scripts.export", str(latest), str(files["average"])],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{files['average']}: average (eval_ema 0.5) weights of cartpole at step 600")
    assert run_cli(export_cli.main, [str(latest), str(files["online"]), "--online"]) == 0
    return files


def scores(capsys, path: Path, tmp_path: Path, *extra: str) -> dict:
    """rl-evaluate's JSON for ``path``, less the field naming the file played."""
    out = tmp_path / "scores.json"
    assert run_cli(evaluate_cli.main, [str(path), *PLAY, "--json", str(out), *extra]) == 0
    results = json.loads(out.read_text())
    assert f"{results['weights']} weights" in capsys.readouterr().out       # the protocol line names them too
    del results["checkpoint"]
    return results


def test_policy_file_is_small_and_holds_only_the_played_weights(run_dir, exported):
    latest = run_dir / "checkpoints" / "latest.pt"
    training = ckpt.load(latest)
    for weights, path in exported.items():
        assert path.stat().st_size < latest.stat().st_size / 3
        payload = torch.load(path, weights_only=True)                      # plain data and tensors only
        assert not {"agent", "optimizer", "target", "torch_rng"} & set(payload)
        assert payload["kind"] == "policy"
        assert set(ckpt.decode_meta(payload["meta"])) == {"step", "preset", "weights", "checkpoint"}
        source = training["agent"]["average" if weights == "average" else "q"]
        assert payload["weights"].keys() == source.keys()
        assert all(torch.equal(payload["weights"][k], source[k]) for k in source)
        assert payload["config"]["eval_ema"] == (0.5 if weights == "average" else 0.0)
    q, average = training["agent"]["q"], training["agent"]["average"]
    assert not all(torch.equal(q[k], average[k]) for k in q)                  # the two exports differ


def test_evaluate_scores_a_policy_file_exactly_as_its_checkpoint(run_dir, exported, tmp_path, capsys):
    latest = run_dir / "checkpoints" / "latest.pt"
    average = scores(capsys, exported["average"], tmp_path)
    assert average == scores(capsys, latest, tmp_path)
    assert average["weights"] == "average (eval_ema 0.5)" and average["episodes"] == 4
    online = scores(capsys, exported["online"], tmp_path)
    assert online == scores(capsys, latest, tmp_path, "--online")
    assert online == scores(capsys, exported["online"], tmp_path, "--online")   # already the online weights
    assert online["weights"] == "online"


def test_evaluate_films_a_policy_file_as_its_checkpoint(run_dir, exported, tmp_path, capsys):
    iio = pytest.importorskip("imageio.v3")
    latest = run_dir / "checkpoints" / "latest.pt"
    films = {}
    for name, path in (("policy", exported["average"]), ("checkpoint", latest)):
        video = tmp_path / f"{name}.mp4"
        results = scores(capsys, path, tmp_path, "--video", str(video), "--video-episodes", "2")
        del results["video"]["path"]
        films[name] = results, iio.imread(video, plugin="FFMPEG", index=None)
    assert films["policy"][0] == films["checkpoint"][0]
    assert films["policy"][1].shape == films["checkpoint"][1].shape
    assert (films["policy"][1] == films["checkpoint"][1]).all()


def one_line_error(capsys, main, argv: list[str]) -> str:
    assert run_cli(main, argv, prog="rl-test") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_resume_refuses_a_policy_file(run_dir, exported, tmp_path, capsys):
    policy = exported["average"]
    err = one_line_error(capsys, train_cli.main, ["--resume", str(policy), "--no-progress"])
    assert str(policy) in err and "policy file" in err and "cannot be resumed" in err
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.copy(policy, copy / "checkpoints" / "latest.pt")                   # a policy where a checkpoint goes
    err = one_line_error(capsys, train_cli.main, ["--resume", str(copy), "--no-progress"])
    assert "latest.pt" in err and "weights-only policy file" in err and "cannot be resumed" in err


def test_online_from_an_averaged_policy_and_bad_export_input(run_dir, exported, tmp_path, capsys):
    err = one_line_error(capsys, evaluate_cli.main, [str(exported["average"]), "--online", *PLAY])
    assert str(exported["average"]) in err and "rl-export" in err and "--online" in err
    missing = tmp_path / "nope.pt"
    out = tmp_path / "out" / "policy.pt"
    err = one_line_error(capsys, export_cli.main, [str(missing), str(out)])
    assert str(missing) in err and "does not exist" in err
    assert not out.parent.exists()                                             # nothing written
    latest = run_dir / "checkpoints" / "latest.pt"
    err = one_line_error(capsys, export_cli.main, [str(latest), str(latest)])
    assert "the checkpoint itself" in err
