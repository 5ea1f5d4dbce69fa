"""rl_dqn, the Python API: the README's examples run as written, and the API agrees with the CLIs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import rl_dqn
from rl.cli import run_cli
from scripts import evaluate as evaluate_cli

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_examples_run_as_written(tmp_path, monkeypatch):
    examples = readme_examples()
    assert len(examples) == 2
    monkeypatch.chdir(tmp_path)
    for code in examples:                        # in order: the second loads what the first trained
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api-cartpole" / "checkpoints" / "latest.pt").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return rl_dqn.train(preset="cartpole", run_dir=root / "run", total_steps=3_000, learning_starts=500,
                        eval_every=1_500, eval_episodes=2)


def test_train_returns_the_run(trained):
    assert trained.status == "finished" and trained.steps == 3_000
    assert [e["step"] for e in trained.evaluations] == [1_500, 3_000]
    assert json.loads((trained.run_dir / "run.json").read_text())["preset"] == "cartpole"


def test_evaluate_returns_what_rl_evaluate_writes(trained, tmp_path):
    ours = rl_dqn.evaluate(trained.checkpoint, episodes=4, epsilon=0.05)
    out = tmp_path / "cli.json"
    assert run_cli(evaluate_cli.main, [str(trained.checkpoint), "--episodes", "4", "--epsilon", "0.05",
                                       "--json", str(out), "--no-progress"]) == 0
    assert ours == json.loads(out.read_text())


def test_policy_acts_like_the_evaluation_agent(trained):
    policy = rl_dqn.load_policy(trained.checkpoint)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    batch = policy.act(obs)
    assert batch.shape == (16,) and batch.dtype == np.int64
    assert [policy.act(o) for o in obs] == batch.tolist()              # one at a time == batched
    from agents.evaluation import saved_player
    from envs import make_env
    cfg, agent_for = saved_player(trained.checkpoint, "cpu")
    env = make_env(cfg, num_envs=1, evaluation=True)
    assert np.array_equal(agent_for(env).eval().greedy(obs), batch)   # what rl-evaluate's agent picks
    env.close()
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        policy.act(np.zeros(3, np.float32))


def test_resume_and_stop_at(tmp_path):
    run = rl_dqn.train(preset="cartpole", run_dir=tmp_path / "r", total_steps=2_000, learning_starts=500, stop_at=1_000)
    assert run.status == "stopped" and run.steps == 1_000
    run = rl_dqn.train(resume=tmp_path / "r")
    assert run.status == "finished" and run.steps == 2_000


@pytest.mark.parametrize("call,message", [
    (lambda d: rl_dqn.train(preset="cartpole", run_dir=d, learning_rate=-1.0), "learning_rate = -1.0"),
    (lambda d: rl_dqn.train(preset="cartpole", run_dir=d, not_a_key=1), "unknown config key 'not_a_key'"),
    (lambda d: rl_dqn.train(preset="cartpole"), "run_dir is required"),
    (lambda d: rl_dqn.evaluate(d / "missing.pt"), "does not exist"),
])
def test_bad_input_raises_one_line_before_any_work(call, message, tmp_path):
    with pytest.raises((rl_dqn.ConfigError, rl_dqn.CheckpointError), match=re.escape(message)) as exc:
        call(tmp_path / "run")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()
