"""rl-evaluate: play full games with a saved agent and report raw scores.

    rl-evaluate runs/cp/checkpoints/latest.pt --episodes 20 --json results.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from rl.config import ArgumentParser, ConfigError, run_cli


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-evaluate", description="Evaluate a checkpoint on full games with raw scores.")
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by rl-train (e.g. RUN/checkpoints/latest.pt)")
    parser.add_argument("--episodes", type=int, default=30, help="full games to play (default: 30)")
    parser.add_argument("--epsilon", type=float, default=0.05, help="exploration during evaluation (default: 0.05)")
    parser.add_argument("--seed", type=int, default=12345, help="evaluation seed, distinct from training (default: 12345)")
    parser.add_argument("--num-envs", type=int, default=None, help="parallel games (default: min(episodes, 8))")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes} is not allowed: must be >= 1")
    if not 0.0 <= args.epsilon <= 1.0:
        raise ConfigError(f"--epsilon {args.epsilon} is not allowed: must be between 0 and 1")
    if args.num_envs is not None and args.num_envs < 1:
        raise ConfigError(f"--num-envs {args.num_envs} is not allowed: must be >= 1")
    if not 0 <= args.seed < 2**31:
        raise ConfigError(f"--seed {args.seed} is not allowed: must be in [0, 2^31)")

    from agents.dqn import DQNAgent, resolve_device
    from agents.evaluation import evaluate
    from envs import is_atari, make_env
    from envs.atari import human_normalized
    from rl import checkpoint as ckpt
    from rl.config import TrainConfig, from_dict

    device = resolve_device(args.device)
    try:
        payload = ckpt.load(args.checkpoint, map_location=device)
        cfg = from_dict(TrainConfig, payload["config"])
    except ckpt.CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    num_envs = args.num_envs or min(args.episodes, 8)
    env = make_env(cfg, num_envs=num_envs, seed=args.seed, evaluation=True)
    agent = DQNAgent(cfg, env.obs_shape, env.num_actions, device)
    agent.load_state_dict({"q": payload["agent"]["q"], "target": payload["agent"]["q"]})
    agent.q.eval()
    agent.rng = __import__("numpy").random.default_rng(args.seed)
    try:
        results = evaluate(agent, env, args.episodes, args.epsilon)
    finally:
        env.close()
    results["checkpoint"] = str(args.checkpoint)
    hns = human_normalized(cfg.env, results["mean"]) if is_atari(cfg.env) else None
    if hns is not None:
        results["human_normalized"] = hns
    proto = results["protocol"]
    print(f"protocol: {cfg.env}, {results['episodes']} full games, epsilon {args.epsilon}, seed {args.seed}"
          + (f", sticky actions {proto['sticky_action_prob']}, at most {proto['max_episode_frames']} frames/game, "
             f"raw (unclipped) score" if is_atari(cfg.env) else ""))
    print(f"return: {results['mean']:.2f} ± {results['std']:.2f}  median {results['median']:.1f}  "
          f"min {results['min']:.1f}  max {results['max']:.1f}"
          + (f"  human-normalized {hns:.3f}" if hns is not None else ""))
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
        except OSError as exc:
            print(f"rl-evaluate: error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-evaluate"))


if __name__ == "__main__":
    entry()
