"""A trained Atari agent played in a user's own gymnasium loop: gymnasium's ``AtariPreprocessing`` +
``FrameStackObservation`` over ``ALE/<Game>-v5`` (frame skip 1 underneath, no sticky actions, 30 no-op starts,
whole games), acting through ``rl_dqn.load_policy``. None of this package's env code runs, so the score says
whether a policy trained here carries over to the standard pipeline; compare it with ``rl-evaluate`` on the
same file, epsilon and number of games.

    python -m benchmarks.gymnasium_loop docs/breakout-dqn-10m.pt --episodes 100 --epsilon 0.01
    python -m benchmarks.gymnasium_loop CHECKPOINT --game Breakout --episodes 10 --json out.json

The no-op counts come from gymnasium's RNG, so the games are other games than ``rl-evaluate``'s: compare the
distributions (mean, IQM and CI over games), not game by game.
"""
from __future__ import annotations

import sys
import time
from argparse import ArgumentParser

import numpy as np

from benchmarks.common import machine_line, write_json
from rl.checkpoint import CheckpointError
from rl.cli import run_cli
from rl.config import ConfigError
from rl.logging import machine_info
from rl.stats import summarize


def standard_pipeline(game: str, noop_max: int = 30):
    """gymnasium's own Atari preprocessing, as Nature, Dopamine and SB3 describe it: frame skip 1 underneath,
    4 max-pooled frames per step, 84x84 grayscale, a zero-padded stack of 4, whole games. This package's env
    reproduces it frame for frame (``tests/test_envs.py`` steps the two side by side)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")


def play(policy, env, episodes: int, epsilon: float, seed: int) -> tuple[list[float], list[int]]:
    """Full games, raw score: what a user's loop would add up."""
    policy.seed(seed)
    returns, lengths = [], []
    for game in range(episodes):
        obs, _ = env.reset(seed=seed + game)
        score, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs, epsilon=epsilon))
            score += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(score)
        lengths.append(steps)
    return returns, lengths


def main(argv: list[str] | None = None) -> int:
    import torch

    import rl_dqn
    from agents.dqn import resolve_precision

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint or an rl-export policy file trained on an Atari game")
    p.add_argument("--game", default="Breakout", help="ALE game name as in ALE/<Game>-v5 (default Breakout)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=12345, help="game g resets with seed + g; epsilon draws use seed")
    p.add_argument("--online", action="store_true", help="the online weights rather than the weight average")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--json", help="write every game's score and the machine here")
    args = p.parse_args(argv)
    if args.episodes < 1 or not 0.0 <= args.epsilon <= 1.0:
        raise ConfigError(f"--episodes {args.episodes} / --epsilon {args.epsilon}: need episodes >= 1 and epsilon in [0, 1]")
    torch.set_num_threads(args.torch_threads)

    try:
        policy = rl_dqn.load_policy(args.checkpoint, online=args.online)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    precision = resolve_precision(policy.config.precision, policy.device)   # the run's, as rl-evaluate plays it
    env = standard_pipeline(args.game)
    start = time.perf_counter()
    try:
        returns, lengths = play(policy, env, args.episodes, args.epsilon, args.seed)
    finally:
        env.close()
    seconds = time.perf_counter() - start
    stats = summarize(returns)
    out = {**machine_info(), "checkpoint": args.checkpoint, "game": args.game, "episodes": args.episodes,
           "epsilon": args.epsilon, "seed": args.seed, "online": args.online, "precision": precision,
           "seconds": seconds, "returns": returns, "lengths": lengths, "mean": float(np.mean(returns)),
           "std": float(np.std(returns)), "median": float(np.median(returns)), "min": min(returns),
           "max": max(returns), "iqm_over_games": stats}
    print(f"{args.checkpoint} in gymnasium's own pipeline (ALE/{args.game}-v5 + AtariPreprocessing + "
          f"FrameStackObservation), {args.episodes} full games at epsilon {args.epsilon}, seed {args.seed}, "
          f"{precision}:")
    print(f"  mean {out['mean']:.2f} (population sd {out['std']:.2f} over games), median {out['median']:g}, "
          f"min {out['min']:g}, max {out['max']:g}; IQM over games {stats['iqm']:.2f} "
          f"[{stats['ci_low']:.2f}, {stats['ci_high']:.2f}] (25% trimmed mean, 95% bootstrap CI over games)")
    print(f"  {seconds:.0f} s; {machine_line(out)}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="gymnasium_loop"))
