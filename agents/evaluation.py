"""The evaluation protocol: full games, raw scores, a small stated epsilon, a fixed seed.

Episodes are split evenly across the vector envs *before* playing (env e plays a fixed quota), so
short games do not crowd out long ones and the mean is unbiased. rl-evaluate and the periodic
evaluation during training both go through :func:`play`, so the two cannot drift apart; rl-evaluate and
rl-sweep both rebuild a saved agent with :func:`saved_player`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.dqn import DQNAgent, weights_played
from agents.policy import load_policy
from envs.base import VecEnv
from rl.config import EVALUATE_ENVS, EvaluateConfig, TrainConfig


def quotas(episodes: int, num_envs: int) -> list[int]:
    """Games each env plays; result index i is env-major: env 0's games first, in order."""
    return [episodes // num_envs + (e < episodes % num_envs) for e in range(num_envs)]


def first_games(episodes: int, num_envs: int, k: int) -> list[tuple[int, int]]:
    """The ``(env, episode)`` pairs behind results 0..k-1."""
    return [(e, j) for e, q in enumerate(quotas(episodes, num_envs)) for j in range(q)][:k]


def evaluate(agent, env: VecEnv, episodes: int, epsilon: float,
             on_game: Callable[[float, int], None] | None = None) -> dict[str, Any]:
    """Play ``episodes`` full games; ``on_game(score, length)`` hears each counted game as it ends
    (a game beyond its env's quota is played out but neither counted nor reported)."""
    n = env.num_envs
    quota = quotas(episodes, n)
    returns: list[list[float]] = [[] for _ in range(n)]
    lengths: list[list[int]] = [[] for _ in range(n)]
    obs = env.reset()
    while any(len(returns[e]) < quota[e] for e in range(n)):
        step = env.step(agent.act(obs, epsilon))
        for e, ret, length in step.finished:
            if len(returns[e]) < quota[e]:
                returns[e].append(ret)
                lengths[e].append(length)
                if on_game is not None:
                    on_game(ret, length)
        obs = step.obs
    flat = np.array([r for rs in returns for r in rs], dtype=np.float64)
    results = {
        "episodes": int(len(flat)),
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "median": float(np.median(flat)),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "returns": flat.tolist(),
        "lengths": [int(x) for ls in lengths for x in ls],
        "protocol": {"epsilon": epsilon, "seed": env.seed, "episodes": episodes, **env.protocol},
    }
    if "game" in env.protocol:
        from envs.atari import human_normalized
        hns = human_normalized(env.protocol["game"], results["mean"])
        if hns is not None:
            results["human_normalized"] = hns
    return results


def play(agent_for: Callable[[VecEnv], Any], cfg, *, episodes: int, epsilon: float, seed: int, num_envs: int,
         video: Path | None = None, video_episodes: int | None = None,
         on_game: Callable[[float, int], None] | None = None, online: bool = False) -> dict[str, Any]:
    """Evaluate ``agent_for(env)`` on a fresh env (``evaluation=True``, its own ``seed``), optionally
    filming the first ``video_episodes`` games (default: all) to ``video``.

    The agent plays through its acting copy (``DQNAgent.player``): the weights evaluations play (the online
    net, or the run's weight average; the online net if ``online``) in eval mode, with an RNG of its own from
    ``seed``, so evaluating in the middle of training never moves the training's exploration stream.
    """
    from envs import make_env

    num_envs = min(num_envs, episodes)
    recorder = None
    with contextlib.ExitStack() as cleanup:
        env = make_env(cfg, num_envs=num_envs, seed=seed, evaluation=True)
        cleanup.callback(env.close)
        if video is not None:
            from envs.video import EpisodeRecorder, FilmedEnv, camera_for
            camera = camera_for(env)
            cleanup.callback(camera.close)
            recorder = EpisodeRecorder(video, first_games(episodes, num_envs, video_episodes or episodes), camera.fps)
            cleanup.callback(recorder.close)               # drops the scratch files if play fails
            env = FilmedEnv(env, camera, recorder)
        agent = agent_for(env)
        player = cleanup.enter_context(agent.player(seed, online=online))
        results = evaluate(player, env, episodes, epsilon, on_game)
        results["weights"] = "online" if online else weights_played(agent.cfg)
        results["precision"] = agent.precision
        if recorder is not None:
            frames = recorder.save()
            results["video"] = {"path": str(video), "episodes": len(frames), "frames": frames, "fps": recorder.fps}
    return results


def saved_player(path: str | Path, device: torch.device, *, online: bool = False, precision: str | None = None
                 ) -> tuple[TrainConfig, Callable[[VecEnv], DQNAgent]]:
    """The run's config and an agent factory for :func:`play`, from a checkpoint or policy file alone. The agent
    plays the run's weight average where it kept one, unless ``online``, in the run's precision unless
    ``precision``. Raises ``CheckpointError`` naming the file."""
    policy = load_policy(Path(path), device, online)
    if precision is not None:
        policy = dataclasses.replace(policy, cfg=dataclasses.replace(policy.cfg, precision=precision))
    return policy.cfg, lambda env: policy.agent(env.obs_shape, env.num_actions, device)


def play_as_set(agent_for: Callable[[VecEnv], Any], cfg, settings: EvaluateConfig, *, video: Path | None = None,
                on_game: Callable[[float, int], None] | None = None) -> dict[str, Any]:
    """:func:`play` with rl-evaluate's settings: the run's eval_epsilon unless ``settings.epsilon``, up to
    EVALUATE_ENVS games at once unless ``settings.num_envs``."""
    epsilon = cfg.eval_epsilon if settings.epsilon is None else settings.epsilon
    return play(agent_for, cfg, episodes=settings.episodes, epsilon=epsilon, seed=settings.seed,
                num_envs=settings.num_envs or EVALUATE_ENVS, video=video, video_episodes=settings.video_episodes,
                on_game=on_game)


def evaluate_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """Score a checkpoint file exactly as ``rl-evaluate PATH --episodes <eval_episodes>`` does: the run's
    ``eval_episodes`` full games at its ``eval_epsilon``, seed EVALUATE_SEED, up to EVALUATE_ENVS at once."""
    cfg, agent_for = saved_player(path, device)
    return play_as_set(agent_for, cfg, EvaluateConfig(episodes=cfg.eval_episodes))


def protocol_line(results: dict[str, Any]) -> str:
    """What was played, so a score is never quoted without its protocol."""
    p = results["protocol"]
    atari = "game" in p
    line = (f"protocol: {p.get('game') or p.get('gym_id')}, {results['episodes']} full games, "
            f"epsilon {p['epsilon']}, seed {p['seed']}, {results.get('weights', 'online')} weights"
            + (f" in {results['precision']}" if "precision" in results else ""))
    if atari:
        line += (f", sticky actions {p['sticky_action_prob']}, at most {p['max_episode_frames']} frames/game, "
                 f"raw (unclipped) score")
    return line


def score_line(results: dict[str, Any]) -> str:
    hns = results.get("human_normalized")
    return (f"return: {results['mean']:.2f} (sd {results['std']:.2f} over {results['episodes']} games)  "
            f"median {results['median']:.1f}  "
            f"min {results['min']:.1f}  max {results['max']:.1f}"
            + (f"  human-normalized {hns:.3f}" if hns is not None else ""))
