"""rl-evaluate: play full games with a saved agent and report raw scores.

    rl-evaluate runs/cp/checkpoints/latest.pt --episodes 20 --json results.json
    rl-evaluate runs/bo/checkpoints/latest.pt --episodes 10 --video games.mp4 --video-episodes 3
    rl-evaluate breakout.pt --episodes 30           # a policy file written by rl-export
    rl-evaluate runs/mb-s{1,2,3}/checkpoints/latest.pt --episodes 100   # three seeds, then their IQM, CI, worst

Several files (the seeds of one setting) are each scored alike, then summarised over files as rl-sweep
summarises seeds: the IQM with a 95% stratified bootstrap CI, the mean ± sample std (ddof 1) and the worst file
(rl.stats, with rliable: the stats extra).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rl import stats
from rl.cli import ArgumentParser, add_config_flags, overrides_from_args, run_cli
from rl.config import ConfigError, EvaluateConfig, check_evaluate, from_dict


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-evaluate", description="Evaluate a checkpoint or policy file on full games with "
                            "raw scores.")
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT",
                        help="a .pt file written by rl-train (e.g. RUN/checkpoints/latest.pt) or by rl-export; "
                        "several (one per seed, all of one env): each is scored, then the set is summarised (IQM "
                        "with a 95%% bootstrap CI, mean ± sample std, worst; needs the stats extra)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON (several files: "
                        "{\"runs\": [one result each], \"summary\": the statistics over them})")
    parser.add_argument("--video", type=Path, metavar="PATH", help="also write the games, full-size RGB, one after "
                        "another: MP4, or GIF when PATH ends in .gif (needs the video extra)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the games (for logs and CI)")
    add_config_flags(parser, EvaluateConfig, title="evaluation settings")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = check_evaluate(from_dict(EvaluateConfig, overrides_from_args(args, EvaluateConfig)),
                              filming=args.video is not None)
    paths: list[Path] = args.checkpoints
    several = len(paths) > 1
    if several:
        check_several(paths, filming=args.video is not None)

    from agents.dqn import resolve_device
    from agents.evaluation import play_as_set, protocol_line, saved_player, score_line
    from envs import is_atari
    from rl.checkpoint import CheckpointError
    from rl.logging import Progress

    device = resolve_device(settings.device)
    players = []                         # every file is loaded (and its env checked) before any game is played
    for path in paths:
        try:
            players.append((path, *saved_player(path, device, online=settings.online, precision=settings.precision)))
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from None
    envs = {cfg.env: path for path, cfg, _ in players}
    if len(envs) > 1:
        raise ConfigError("the checkpoints play different envs (" + ", ".join(f"{env} in {path}" for env, path
                          in envs.items()) + "); a summary over files needs one env")
    cfg = players[0][1]
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

    runs = []
    for path, cfg, agent_for in players:
        # At epsilon 0.001 a game can run to the 108,000-frame cap: the bar shows the games done and their mean.
        progress = Progress(settings.episodes, window=settings.episodes, unit="game", unit_scale=False,
                            disable=args.no_progress or None)
        try:
            results = play_as_set(agent_for, cfg, settings, video=args.video,
                                  on_game=lambda score, length: progress.update(1, [score]))
        finally:
            progress.close()
        results["checkpoint"] = str(path)
        runs.append(results)
        lines = [protocol_line(results), score_line(results)]
        print("\n".join([str(path), *(f"  {line}" for line in lines)] if several else lines), flush=True)
    if args.video is not None:
        v = runs[0]["video"]
        print(f"video: {args.video} (first {v['episodes']} of the games above, {sum(v['frames'])} raw RGB frames "
              f"at {v['fps']:g} fps; frames per game {v['frames']})")
    output = runs[0]
    if several:
        output = summarize(runs)
        summary = output["summary"]
        print(f"over {len(runs)} checkpoints: {stats.summary_line(summary, summary['worst_checkpoint'])}")
        print(f"  each checkpoint's mean over its {settings.episodes} games; {stats.method()}")
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(output, indent=2))
        except OSError as exc:
            print(f"rl-evaluate: error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0


def check_several(paths: list[Path], *, filming: bool) -> None:
    """What several files need, checked before any is loaded: a video films one agent, the summary needs
    rliable, and a file counted twice would weigh twice."""
    if filming:
        raise ConfigError(f"--video films one agent: give one checkpoint, not {len(paths)}")
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            raise ConfigError(f"{path} is given twice (as {seen[path.resolve()]} first): each file is one run in the "
                              f"summary")
        seen[path.resolve()] = path
    try:
        stats.require()
    except stats.RliableMissing as exc:
        raise ConfigError(f"a summary over {len(paths)} checkpoints: {exc}") from None


def summarize(runs: list[dict]) -> dict:
    """Each file's mean over its games, summarised over files: what --json writes."""
    summary = stats.summarize([r["mean"] for r in runs])
    summary["worst_checkpoint"] = runs[summary.pop("worst_index")]["checkpoint"]
    return {"runs": runs, "summary": summary,
            "statistics": stats.description() | {"score": "each checkpoint's mean over its games"}}


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-evaluate"))


if __name__ == "__main__":
    entry()
