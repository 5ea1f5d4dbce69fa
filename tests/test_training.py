"""End to end through the real CLIs: train, watch (event files), evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.build import make_agent
from agents.evaluation import evaluate
from envs import make_env
from rl import checkpoint as ckpt
from rl.cli import run_cli
from rl.config import TrainConfig, from_dict, load_preset
from scripts import evaluate as evaluate_cli
from scripts import train as train_cli

REQUIRED_SCALARS = {"charts/episodic_return", "charts/episodic_length", "losses/td_loss", "losses/q_values",
                    "charts/epsilon", "charts/learning_rate", "charts/SPS"}


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


def test_breakout_train_then_evaluate(tmp_path, capsys):
    run_dir = tmp_path / "breakout"
    code = run_cli(train_cli.main, ["--total-steps", "2400", "--learning-starts", "800", "--buffer-size", "8000",
                                    "--num-envs", "4", "--log-every", "400", "--run-dir", str(run_dir), "--no-progress"])
    assert code == 0
    assert (run_dir / "config.toml").exists()
    latest = run_dir / "checkpoints" / "latest.pt"
    payload = ckpt.load(latest)
    assert payload["config"]["env"] == "breakout" and payload["config"]["learning_rate"] == 1e-4
    assert ckpt.decode_meta(payload["meta"])["step"] == 2400
    tags = set(scalars(run_dir).Tags()["scalars"])
    assert REQUIRED_SCALARS <= tags, REQUIRED_SCALARS - tags
    capsys.readouterr()
    out = tmp_path / "eval.json"
    code = run_cli(evaluate_cli.main, [str(latest), "--episodes", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "human-normalized" in printed and "epsilon 0.05" in printed and "raw (unclipped) score" in printed
    result = json.loads(out.read_text())
    for key in ("mean", "std", "median", "min", "max", "episodes", "human_normalized"):
        assert key in result
    assert result["episodes"] == 2
    assert result["human_normalized"] == pytest.approx((result["mean"] - 1.7) / (30.5 - 1.7))


def test_evaluate_defaults_to_the_runs_eval_epsilon(tmp_path, capsys):
    """A preset states its evaluation protocol once: breakout-100k evaluates at DrQ(epsilon)'s 0.001, and
    rl-evaluate plays a checkpoint at its run's eval_epsilon unless --epsilon says otherwise."""
    assert load_preset("breakout-100k")["eval_epsilon"] == 0.001
    assert load_preset("breakout")["eval_epsilon"] == 0.05                # the Nature protocol
    run_dir = tmp_path / "cp"
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "300", "--learning-starts", "200",
                                    "--eval-epsilon", "0.3", "--run-dir", str(run_dir), "--no-progress",
                                    "--no-save-replay"]) == 0
    latest = str(run_dir / "checkpoints" / "latest.pt")
    for argv, shown in (([], 0.3), (["--epsilon", "0"], 0.0)):
        out = tmp_path / f"eval{shown}.json"
        assert run_cli(evaluate_cli.main, [latest, "--episodes", "2", "--json", str(out), *argv]) == 0
        assert f"epsilon {shown}," in capsys.readouterr().out
        assert json.loads(out.read_text())["protocol"]["epsilon"] == shown


def test_evaluate_reports_each_counted_game_once():
    """rl-evaluate's progress bar hears every game the results count and none they drop: 3 envs with
    quotas 3, 2, 2 play on past their quotas until the slowest is done."""
    cfg = from_dict(TrainConfig, load_preset("cartpole"))
    env = make_env(cfg, num_envs=3, seed=5, evaluation=True)
    heard: list[tuple[float, int]] = []
    results = evaluate(make_agent(cfg, env.obs_shape, env.num_actions), env, 7, epsilon=0.5,
                       on_game=lambda score, length: heard.append((score, length)))
    env.close()
    assert results["episodes"] == len(heard) == 7
    assert sorted(heard) == sorted(zip(results["returns"], results["lengths"]))


def greedy_return(cfg: TrainConfig, q_state=None, episodes=10) -> float:
    env = make_env(cfg, num_envs=5, seed=777, evaluation=True)
    agent = make_agent(cfg, env.obs_shape, env.num_actions)
    if q_state is not None:
        agent.load_state_dict({"q": q_state, "target": q_state})
    return evaluate(agent, env, episodes, epsilon=0.0)["mean"]


@pytest.mark.slow
def test_cartpole_learning_improves_return(tmp_path):
    """A small seeded budget must lift the greedy return far above the untrained network's."""
    run_dir = tmp_path / "cartpole"
    torch.manual_seed(0)
    code = run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "20000", "--learning-starts", "1000",
                                    "--exploration-fraction", "0.5", "--seed", "3", "--run-dir", str(run_dir),
                                    "--no-progress", "--no-save-replay"])
    assert code == 0
    payload = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    cfg = from_dict(TrainConfig, payload["config"])
    before = greedy_return(cfg)
    after = greedy_return(cfg, payload["agent"]["q"])
    assert before < 60
    assert after > 150, (before, after)
    returns = [e.value for e in scalars(run_dir).Scalars("charts/episodic_return")]
    assert np.mean(returns[-20:]) > 2 * np.mean(returns[:20])


def test_overlapped_training_stores_exactly_what_the_env_produced(tmp_path):
    """Run the real loop (emulators stepping during updates), then replay the stored actions in a fresh env
    with the same seed: every stored obs, action, reward, next obs and terminal flag must match."""
    from agents.runner import Trainer
    from rl.config import validate_train
    from rl.replay import TERMINATED

    cfg = validate_train(TrainConfig(num_envs=2, total_steps=700, learning_starts=200, buffer_size=2_000,
                                     train_frequency=2, log_every=10**6, checkpoint_every=10**6, save_replay=False))
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    trainer.train()
    assert trainer.agent.updates > 100  # learning really overlapped the env steps
    replay, steps = trainer.replay, trainer.step // cfg.num_envs
    fresh = make_env(cfg)
    obs = fresh.reset()
    env_ids = np.arange(cfg.num_envs)
    for t in range(steps - 1):
        slot = np.full(cfg.num_envs, t)
        np.testing.assert_array_equal(replay.stacks(slot, env_ids), obs)
        out = fresh.step(replay.actions[t].astype(np.int64))
        np.testing.assert_array_equal(replay.rewards[t], np.sign(out.reward))
        np.testing.assert_array_equal((replay.flags[t] & TERMINATED) != 0, out.terminated)
        obs = out.obs
    trainer.close()


def test_overlap_adds_no_policy_lag(tmp_path):
    """Each action is chosen after every update due so far has run: the same weights a serial
    act -> step -> update loop would act with, however the updates overlap the emulators."""
    from agents.run import updates_due
    from agents.runner import Trainer
    from rl.config import validate_train

    cfg = validate_train(TrainConfig(env="cartpole", network="mlp", hidden_sizes=[32], num_envs=2, total_steps=600,
                                     learning_starts=100, train_frequency=1, buffer_size=1_000, batch_size=16,
                                     log_every=10**6, checkpoint_every=10**6, save_replay=False))
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    seen = []
    act = trainer.agent.act

    def recording_act(obs, epsilon):
        seen.append((trainer.step, trainer.agent.updates))
        return act(obs, epsilon)

    trainer.agent.act = recording_act
    trainer.train()
    trainer.close()
    assert len(seen) == cfg.total_steps // cfg.num_envs
    assert [updates for _, updates in seen] == [updates_due(step - cfg.num_envs, cfg) for step, _ in seen]
    assert seen[-1][1] > 400  # two updates per vector step really ran between actions


def test_compiled_encoder_takes_the_same_updates_and_checkpoints(monkeypatch):
    """compile = true is a speed switch only: same updates (to float tolerance), same state_dict keys."""
    from rl.config import ConfigError, validate_train
    from tests.fakes import random_batch

    cfg = TrainConfig(env="cartpole", network="mlp", hidden_sizes=[32, 32], num_envs=1, device="cpu")
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, 16) for _ in range(5)]
    agents = []
    for compile in (False, True):
        torch.manual_seed(0)
        agent = make_agent(validate_train(TrainConfig(**{**cfg.__dict__, "compile": compile})), (4,), 2)
        for batch in batches:
            agent.update(batch)
        agents.append(agent)
    eager, compiled = (a.state_dict()["q"] for a in agents)
    assert list(eager) == list(compiled)
    for key in eager:
        torch.testing.assert_close(eager[key], compiled[key], rtol=1e-4, atol=1e-5)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="compile = true is not allowed here"):
        validate_train(TrainConfig(**{**cfg.__dict__, "compile": True}))
