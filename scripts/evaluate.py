"""rl-evaluate: play full games with a saved agent and report raw scores.

    rl-evaluate runs/cp/checkpoints/latest.pt --episodes 20 --json results.json
    rl-evaluate runs/bo/checkpoints/latest.pt --episodes 10 --video games.mp4 --video-episodes 3
    rl-evaluate breakout.pt --episodes 30           # a policy file written by rl-export
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from rl.cli import ArgumentParser, add_config_flags, overrides_from_args, run_cli
from rl.config import ConfigError, EvaluateConfig, check_evaluate, from_dict


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-evaluate", description="Evaluate a checkpoint or policy file on full games with "
                            "raw scores.")
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by rl-train (e.g. RUN/checkpoints/latest.pt) "
                        "or by rl-export")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--video", type=Path, metavar="PATH", help="also write the games, full-size RGB, one after "
                        "another: MP4, or GIF when PATH ends in .gif (needs the video extra)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the games (for logs and CI)")
    add_config_flags(parser, EvaluateConfig, title="evaluation settings")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = check_evaluate(from_dict(EvaluateConfig, overrides_from_args(args, EvaluateConfig)),
                              filming=args.video is not None)

    from agents.dqn import resolve_device
    from agents.evaluation import play_as_set, protocol_line, saved_player, score_line
    from envs import is_atari
    from rl.checkpoint import CheckpointError
    from rl.logging import Progress

    device = resolve_device(settings.device)
    try:
        cfg, saved_agent = saved_player(args.checkpoint, device, online=settings.online)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.torch_threads:
        import torch
        torch.set_num_threads(cfg.torch_threads)           # small nets: more threads only contend
    if args.video is not None:
        from envs.video import require_video, video_format
        video_format(args.video)
        require_video("--video", control=not is_atari(cfg.env))
        try:
            args.video.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--video {str(args.video)!r}: cannot create its directory: {exc.strerror}") from None

    # At epsilon 0.001 a game can run to the 108,000-frame cap: the bar shows the games done and their mean.
    progress = Progress(settings.episodes, window=settings.episodes, unit="game", unit_scale=False,
                        disable=args.no_progress or None)
    try:
        results = play_as_set(saved_agent, cfg, settings, video=args.video,
                              on_game=lambda score, length: progress.update(1, [score]))
    finally:
        progress.close()
    results["checkpoint"] = str(args.checkpoint)
    print(protocol_line(results))
    print(score_line(results))
    if args.video is not None:
        v = results["video"]
        print(f"video: {args.video} (first {v['episodes']} of the games above, {sum(v['frames'])} raw RGB frames "
              f"at {v['fps']:g} fps; frames per game {v['frames']})")
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
