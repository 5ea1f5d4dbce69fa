"""rl-supervised: supervised baselines on the optimizer/loss registry the DQN learner uses.

    rl-supervised --list                                     # optimizers, losses, built-in data sets
    rl-supervised classify --data spirals                    # or an .npz (x, y) or an MNIST-layout folder
    rl-supervised classify --data mnist/ --model cnn --epochs 5
    rl-supervised record runs/cp/checkpoints/latest.pt --steps 5000 --out demos.npz
    rl-supervised bc --data demos.npz --run-dir runs/clone   # then: rl-evaluate runs/clone/checkpoints/latest.pt
    rl-supervised sweep --optimizers all                     # every optimizer, same data, init and seed
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agents.build import make_agent
from agents.dqn import resolve_device
from agents.supervised import (
    SupervisedConfig,
    SupervisedTrainer,
    check_model_fits,
    clone_payload,
    load_agent_checkpoint,
    make_classifier,
    record_demonstrations,
    teacher_network,
    validate_supervised,
)
from envs import make_env
from rl import checkpoint as ckpt
from rl import numerics
from rl.cli import ArgumentParser, add_config_flags, overrides_from_args, run_cli
from rl.config import ConfigError, RecordConfig, TrainConfig, dumps_toml, from_dict, load_toml
from rl.data import BUILTINS, DataError, features, load_dataset, split
from rl.logging import Logger
from rl.registry import RegistryError, describe, get_optimizer, optimizer_kwargs, optimizer_names

PROG = "rl-supervised"
TRAINING_COMMANDS = {
    "classify": "train a classifier (MLP or small CNN) and print its validation accuracy",
    "bc": "behaviour cloning: train the teacher's network on recorded (observation, action) pairs",
    "sweep": "train the same model from the same weights and seed with each optimizer; print and save a table",
}
CLONE_FIXED = ("model", "hidden_sizes", "dropout")  # bc clones into the teacher's own network


def build_parser() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The top-level parser and one parser per command."""
    parser = ArgumentParser(prog=PROG, description="Supervised baselines on the rl.registry optimizers and losses.",
                            epilog="examples:\n" + __doc__.split("\n\n", 1)[1].rstrip(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true",
                        help="print every optimizer and loss (aliases, defaults) and the built-in data sets")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    for name, summary in TRAINING_COMMANDS.items():
        sub = subs[name] = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys, applied over the defaults")
        sub.add_argument("--run-dir", type=Path, help="where to write config, events and checkpoints "
                                                       f"(default: runs/{name}-<data>-s<seed>-<time>)")
        if name == "sweep":
            sub.add_argument("--optimizers", default="all", metavar="NAMES",
                             help="comma-separated optimizer names, or all (default: all)")
            sub.add_argument("--csv", type=Path, metavar="PATH",
                             help="where to write the table (default: RUN_DIR/sweep.csv)")
        add_config_flags(sub, SupervisedConfig)
    rec = subs["record"] = commands.add_parser(
        "record", help="record a trained agent's observations and greedy actions, for bc",
        description="Play a trained DQN agent and save (observation, greedy action) pairs as an .npz file.")
    rec.add_argument("checkpoint", type=Path, help="a .pt file written by rl-train")
    rec.add_argument("--out", type=Path, required=True, metavar="PATH.npz", help="the demonstrations file to write")
    add_config_flags(rec, RecordConfig, title="recording settings")
    return parser, subs


# --- shared steps ------------------------------------------------------------------------------

def user_settings(args) -> dict:
    """The config keys the user set: the --config file, then the flags over it."""

    settings = load_toml(args.config) if args.config else {}
    settings.update(overrides_from_args(args, SupervisedConfig))
    return settings


def resolve_config(settings: dict):
    """Defaults <- ``settings``, validated (registry options included) before any work."""
    return validate_supervised(from_dict(SupervisedConfig, settings))


def load_data(cfg):
    try:
        return load_dataset(cfg.data, cfg.synthetic_samples)
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def split_data(cfg, data):
    train, val = split(len(data.y), cfg.val_fraction, cfg.seed)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"val_fraction = {cfg.val_fraction} is not allowed for {len(data.y)} examples: "
                          f"it must leave at least one example in each of the training and validation splits")
    return train, val


def prepare_run_dir(args, cfg, command: str, note: str = "") -> Path:
    """A new run directory holding the resolved config; an existing run is never overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or Path("runs") / f"{command}-{Path(cfg.data).stem}-s{cfg.seed}-{stamp}"
    if (run_dir / "config.toml").exists():
        raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = f"# {PROG} {command} config{note}\n" + dumps_toml(dataclasses.asdict(cfg))
        ckpt.atomic_write(run_dir / "config.toml", lambda f: f.write(text.encode()))
    except OSError as exc:
        raise ConfigError(f"run directory {str(run_dir)!r} is not writable: {exc.strerror}") from None
    return run_dir


def start(cfg):
    """Threads and device for a run; the caller seeds right before building each model."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    return resolve_device(cfg.device)


def print_epoch(stats) -> None:
    print(f"epoch {stats.epoch:>3}  train loss {stats.train_loss:.4f} acc {stats.train_accuracy:.4f}  "
          f"val loss {stats.val_loss:.4f} acc {stats.val_accuracy:.4f}  lr {stats.learning_rate:.3g}  "
          f"{stats.seconds:.1f} s", file=sys.stderr)


def train_logged(cfg, model, x, y, train, val, device, run_dir: Path, *, model_meta=None, **fit_options):
    """Train ``model`` on the split of (x, y) with TensorBoard events, and the config, in ``run_dir``."""
    logger = Logger(run_dir)
    logger.text("config", "```\n" + dumps_toml(dataclasses.asdict(cfg)) + "```")
    try:
        trainer = SupervisedTrainer(cfg, model, device=device, logger=logger, model_meta=model_meta)
        return trainer, trainer.fit(x[train], y[train], x[val], y[val], **fit_options)
    finally:
        logger.close()


def train_classifier(cfg, data, x, y, train, val, device, run_dir: Path, **fit_options):
    """Seed, build the classifier ``cfg`` names and train it: one seed, one set of initial weights."""
    torch.manual_seed(cfg.seed)
    model = make_classifier(cfg.model, data.feature_shape, data.num_classes, cfg.hidden_sizes, cfg.dropout,
                            train_x=x[train])
    meta = {"data": data.name, "feature_shape": list(data.feature_shape), "num_classes": data.num_classes,
            "inputs": "standardised by the training split's mean and std (the model's first layer)"}
    return train_logged(cfg, model, x, y, train, val, device, run_dir, model_meta=meta, **fit_options)[1]


# --- commands ----------------------------------------------------------------------------------

def classify(args) -> int:
    cfg = resolve_config(user_settings(args))
    data = load_data(cfg)
    check_model_fits(cfg.model, data.feature_shape, cfg.data)
    train, val = split_data(cfg, data)
    device = start(cfg)
    run_dir = prepare_run_dir(args, cfg, "classify")
    print(f"{PROG}: run directory {run_dir} (tensorboard --logdir {run_dir})", file=sys.stderr)
    x, y = features(data.x), torch.as_tensor(data.y)     # float32[N, *feature_shape], int64[N]
    history = train_classifier(cfg, data, x, y, train, val, device, run_dir, on_epoch=print_epoch,
                               checkpoint_dir=run_dir / "checkpoints")
    best = max(history, key=lambda s: s.val_accuracy)
    print(f"validation accuracy: {history[-1].val_accuracy:.4f} (best {best.val_accuracy:.4f} at epoch {best.epoch}); "
          f"{len(train)} training / {len(val)} validation examples of {data.name}; "
          f"checkpoint {run_dir / 'checkpoints' / 'latest.pt'}")
    return 0


def sweep(args) -> int:
    given = user_settings(args)
    if "optimizer" in given:
        raise ConfigError("--optimizer does not apply to sweep; name the optimizers with --optimizers a,b,c or all")
    wanted = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    try:
        names = optimizer_names() if wanted == ["all"] else list(dict.fromkeys(get_optimizer(w).name for w in wanted))
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    if not names:
        raise ConfigError(f"--optimizers {args.optimizers!r} names no optimizer; use all or a comma-separated "
                          f"list of: {', '.join(optimizer_names())}")
    cfg = resolve_config({**given, "optimizer": names[0]})
    try:
        for name in names[1:]:  # the shared options must suit every optimizer in the sweep
            optimizer_kwargs(name, cfg.optimizer_kwargs)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    data = load_data(cfg)
    check_model_fits(cfg.model, data.feature_shape, cfg.data)
    train, val = split_data(cfg, data)
    device = start(cfg)
    run_dir = prepare_run_dir(args, cfg, "sweep", f"; optimizer is each of: {', '.join(names)}")
    print(f"{PROG}: sweeping {len(names)} optimizers on {data.name}; tensorboard --logdir {run_dir}", file=sys.stderr)
    x, y = features(data.x), torch.as_tensor(data.y)     # float32[N, *feature_shape], int64[N]
    rows = []
    for name in names:
        started = time.perf_counter()
        history = train_classifier(dataclasses.replace(cfg, optimizer=name), data, x, y, train, val, device,
                                   run_dir / name)
        rows.append({"optimizer": name, "final_train_loss": history[-1].train_loss,
                     "best_val_accuracy": max(s.val_accuracy for s in history),
                     "final_val_accuracy": history[-1].val_accuracy,
                     "wall_time_s": time.perf_counter() - started})
        print(f"  {name:<13} done in {rows[-1]['wall_time_s']:.1f} s", file=sys.stderr)
    print(f"{'optimizer':<13} {'final train loss':>16} {'best val acc':>12} {'wall time (s)':>13}")
    for r in rows:
        print(f"{r['optimizer']:<13} {r['final_train_loss']:>16.4f} {r['best_val_accuracy']:>12.4f} "
              f"{r['wall_time_s']:>13.1f}")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = args.csv or run_dir / "sweep.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(csv_path, lambda f: f.write(out.getvalue().encode()))
    print(f"{PROG}: table written to {csv_path}", file=sys.stderr)
    return 0


def record(args) -> int:
    settings = from_dict(RecordConfig, overrides_from_args(args, RecordConfig))
    if args.out.suffix != ".npz":
        raise ConfigError(f"--out {str(args.out)!r} is not allowed: the file name must end in .npz")
    device = resolve_device(settings.device)
    cfg, q = load_agent_checkpoint(args.checkpoint, device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    env = make_env(cfg, num_envs=settings.num_envs, seed=settings.seed, evaluation=True)
    try:
        agent = make_agent(cfg, env.obs_shape, env.num_actions, device)
        agent.load_policy_weights(q)
        with agent.player(settings.seed) as teacher:        # the teacher's weights in eval mode, its own RNG
            demos = record_demonstrations(teacher, env, settings.steps, settings.epsilon)
    finally:
        env.close()
    returns = demos.pop("returns")
    recording = {"checkpoint": str(args.checkpoint), "steps": settings.steps, "epsilon": settings.epsilon,
                 "seed": settings.seed, "episodes": len(returns),
                 "teacher_mean_return": float(np.mean(returns)) if returns else None}
    arrays = {**demos, "num_classes": np.int64(env.num_actions),
              "teacher_config": np.array(json.dumps(dataclasses.asdict(cfg))),
              "recording": np.array(json.dumps(recording))}
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(args.out, lambda f: np.savez_compressed(f, **arrays))
    except OSError as exc:
        print(f"{PROG}: error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    mean = f"{recording['teacher_mean_return']:.1f}" if returns else "n/a (no game finished)"
    print(f"recorded {settings.steps} steps of {cfg.env} ({len(returns)} games finished, teacher mean return {mean}, "
          f"epsilon {settings.epsilon}) to {args.out}; clone with: {PROG} bc --data {args.out}")
    return 0


def bc(args) -> int:
    given = user_settings(args)
    fixed = [k for k in CLONE_FIXED if k in given]
    if fixed:
        raise ConfigError(f"{fixed[0]} does not apply to bc: the clone has the teacher's network so that "
                          f"rl-evaluate can play it; drop {', '.join('--' + k.replace('_', '-') for k in fixed)}")
    cfg = resolve_config(given)
    data = load_data(cfg)
    if "teacher_config" not in data.extras:
        raise ConfigError(f"data {cfg.data!r} is not a demonstrations file (no teacher_config); "
                          f"make one with: {PROG} record CHECKPOINT --steps N --out demos.npz")
    teacher = from_dict(TrainConfig, json.loads(str(data.extras["teacher_config"])))
    train, val = split_data(cfg, data)
    device = start(cfg)
    run_dir = prepare_run_dir(args, cfg, "bc")
    print(f"{PROG}: run directory {run_dir} (tensorboard --logdir {run_dir})", file=sys.stderr)

    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)   # raw observations: the Q-network scales its own
    torch.manual_seed(cfg.seed)
    policy = teacher_network(teacher, data.feature_shape, data.num_classes)
    trainer, history = train_logged(cfg, policy, x, y, train, val, device, run_dir, on_epoch=print_epoch)
    meta = {"kind": "behaviour_clone", "data": cfg.data, "supervised_config": dataclasses.asdict(cfg),
            "recording": json.loads(str(data.extras["recording"])) if "recording" in data.extras else None,
            "val_accuracy": history[-1].val_accuracy, "updates": trainer.updates}
    path = run_dir / "checkpoints" / "latest.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save(path, clone_payload(teacher, policy.cpu(), meta))
    print(f"clone agrees with the teacher on {history[-1].val_accuracy:.1%} of validation states; "
          f"checkpoint {path}; evaluate with: rl-evaluate {path}")
    return 0


COMMANDS = {"classify": classify, "sweep": sweep, "record": record, "bc": bc}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    if argv and argv[0] in subs:
        # the command's own parser, so a misspelt flag is matched against that command's flags
        args = subs[argv[0]].parse_args(argv[1:])
        args.command, args.list = argv[0], False
    else:
        args = parser.parse_args(argv)
    if args.list:
        print(describe())
        print("built-in data sets (--data NAME):")
        for b in BUILTINS:
            print(f"  {b.name:<13} {b.description}")
        return 0
    if args.command is None:
        raise ConfigError(f"choose a command: {', '.join(COMMANDS)} (or --list); see {PROG} --help")
    # subnormals flushed from before torch starts its worker threads, as rl-train does (rl.numerics)
    with numerics.subnormals_flushed():
        return COMMANDS[args.command](args)


def entry() -> None:
    sys.exit(run_cli(main, prog=PROG))


if __name__ == "__main__":
    entry()
