"""rl-export: a training checkpoint -> a small weights-only policy file, the agent to ship.

    rl-export runs/bo/checkpoints/latest.pt breakout.pt
    rl-export runs/bo/checkpoints/best.pt breakout-online.pt --online
    rl-evaluate breakout.pt --episodes 30

The file holds the weights evaluations play (the run's weight average where it kept one, else the online
weights) and the run's config as plain data; no optimizer, target network, replay or RNG states. It loads
with ``torch.load(weights_only=True)`` like every checkpoint, and rl-evaluate plays it exactly as it plays
the checkpoint it came from; rl-train cannot resume it.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rl.cli import ArgumentParser, run_cli
from rl.config import ConfigError


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-export", description="Write the network a checkpoint's evaluations play, with "
                            "the config that rebuilds it, as a small weights-only policy file for rl-evaluate.")
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by rl-train (e.g. RUN/checkpoints/latest.pt)")
    parser.add_argument("out", type=Path, metavar="OUT.pt", help="the policy file to write (replaced if it exists)")
    parser.add_argument("--online", action="store_true", help="export the online weights even where the run kept a "
                        "weight average for evaluation (eval_ema > 0), which is what it exports by default")
    return parser


def kib(path: Path) -> str:
    return f"{path.stat().st_size / 1024:,.0f} KiB"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.is_dir():
        raise ConfigError(f"OUT.pt {str(args.out)!r} is a directory; pass a file name such as "
                          f"{str(args.out / 'policy.pt')!r}")
    if args.out.exists() and args.checkpoint.exists() and args.out.samefile(args.checkpoint):
        raise ConfigError(f"OUT.pt {str(args.out)!r} is the checkpoint itself; write the policy to another file")

    from agents.policy import export_policy
    from rl.checkpoint import CheckpointError

    try:
        policy = export_policy(args.checkpoint, args.out, online=args.online)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        print(f"rl-export: error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    step = policy.meta.get("step")
    print(f"{args.out}: {policy.meta['weights']} weights of {policy.cfg.env}"
          + (f" at step {step:,}" if step is not None else "")
          + f", {kib(args.out)} (checkpoint {kib(args.checkpoint)}); play it with: rl-evaluate {args.out}")
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-export"))


if __name__ == "__main__":
    entry()
