"""rl-train: train a DQN agent.

    rl-train                                  # Breakout, Nature-DQN settings
    rl-train --preset cartpole --run-dir runs/cp
    rl-train --resume runs/cp --total-steps 200000
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rl.cli import (
    ArgumentParser,
    add_config_flags,
    add_distributed_flags,
    check_distributed_flags,
    overrides_from_args,
    run_cli,
)
from rl.config import DEFAULT_PRESET, ConfigError, TrainConfig, base_config, preset_names


def shown_config(argv: Sequence[str] | None) -> tuple[TrainConfig, str]:
    """The config ``--help`` describes: the named (or default) preset under any --config file."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    try:
        cfg, preset = base_config(known.preset, known.config)
    except ConfigError:
        return TrainConfig(), "default"
    return cfg, f"{preset} preset" + (f" + {known.config}" if known.config else "")


def build_parser(argv: Sequence[str] | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog="rl-train", description="Train DQN; Ctrl-C saves a checkpoint and stops.")
    parser.add_argument("--preset", default=None,
                        help=f"named settings: {', '.join(preset_names())} (default: {DEFAULT_PRESET})")
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys, applied over the preset")
    parser.add_argument("--run-dir", type=Path, help="where to write config, events and checkpoints "
                                                       "(default: runs/<preset>-s<seed>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--stop-at", type=int, metavar="STEP", help="checkpoint and stop (resumable) once STEP agent "
                        "steps are done, e.g. to fit a time-boxed job")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    add_distributed_flags(parser, "Ape-X distributed acting: N Ray actors (num_envs envs each) feed a replay actor "
                                  "while this process learns; needs the distributed extra")
    shown, source = shown_config(argv)
    add_config_flags(parser, TrainConfig, shown, shown_as=source)
    return parser


def resolve_config(args) -> tuple[TrainConfig, str | None, Path]:
    """defaults <- preset <- --config file <- flags, validated; or the saved config of --resume."""
    from agents.run import new_config, resumed_config
    overrides = overrides_from_args(args, TrainConfig)
    if args.resume is not None:
        if args.preset or args.config or args.run_dir:
            raise ConfigError("--resume takes the run's saved config; drop --preset, --config and --run-dir")
        return resumed_config(args.resume, overrides), None, args.resume
    cfg, preset = new_config(args.preset, args.config, overrides)
    name = preset if args.config is None else f"{preset}+{Path(args.config).stem}"
    run_dir = args.run_dir or Path("runs") / f"{name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, preset, run_dir


def distributed_trainer(args, cfg: TrainConfig):
    """--actors N: check the layout, connect to Ray (imported only on this path) and return the trainer class."""
    import functools

    from agents.distributed.cluster import check_config, connect
    from agents.distributed.learner import DistributedTrainer
    check_config(cfg, args.actors)
    return functools.partial(DistributedTrainer, actors=args.actors, owns_ray=connect(args.ray_address))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f"--stop-at {args.stop_at} is not allowed: must be >= 1")
    check_distributed_flags(args)
    # distributed.json marks a run whose checkpoints hold the learner only (agents/distributed/learner.py)
    if args.resume is not None and args.actors is None and (args.resume / "distributed.json").exists():
        raise ConfigError(f"--resume {args.resume}: this run was trained with --actors; resume it with --actors N")
    cfg, preset, run_dir = resolve_config(args)
    from agents.run import RunDirError, TrainingDiverged, prepare_run_dir, training
    from agents.runner import Trainer
    from rl.checkpoint import CheckpointError

    make_trainer = Trainer if args.actors is None else distributed_trainer(args, cfg)
    if args.resume is None:
        prepare_run_dir(run_dir, cfg, preset)
    with training(lambda: make_trainer(cfg, run_dir, preset=preset, show_progress=not args.no_progress)) as trainer:
        if args.resume is not None:
            try:
                trainer.restore()
            except CheckpointError as exc:
                raise ConfigError(str(exc)) from None
            print(f"rl-train: resuming {run_dir} at step {trainer.step:,}; {trainer.resume_note}", file=sys.stderr)
        else:
            print(f"rl-train: run directory {run_dir} (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
        if cfg.precision == "auto":
            print(f"rl-train: precision auto -> {trainer.agent.precision} on {trainer.agent.device}", file=sys.stderr)
        try:
            status = trainer.train(stop_at=args.stop_at)
        except (TrainingDiverged, RunDirError) as exc:
            print(f"rl-train: error: {exc}", file=sys.stderr)
            return 1
        latest = trainer.checkpoints.latest
        if status == "stopped":
            print(f"rl-train: stopped at step {trainer.step:,}; checkpoint {latest}; "
                  f"continue with: rl-train --resume {run_dir}", file=sys.stderr)
        elif status == "solved":
            print(f"rl-train: reached target_return {cfg.target_return:g} at step {trainer.step:,}; checkpoint "
                  f"{latest}; evaluate with: rl-evaluate {latest}", file=sys.stderr)
        else:
            print(f"rl-train: finished {trainer.step:,} steps; checkpoint {latest}; "
                  f"evaluate with: rl-evaluate {latest}", file=sys.stderr)
        return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-train"))


if __name__ == "__main__":
    entry()
