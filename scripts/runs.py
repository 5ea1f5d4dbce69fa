"""rl-runs: one table of the runs under a directory: progress, evaluation scores and status; with --evals,
each run's evaluations one by one beside its training return; with --plot, their learning curves in one
picture.

    rl-runs                 # every run under runs/
    rl-runs runs/sweep
    rl-runs --evals runs/baseline-s1
    rl-runs --plot curves.png runs/sweep runs/baseline-s1

A run is a directory holding a ``config.toml`` written by rl-train. Scores come from its
``evaluations.jsonl`` (periodic evaluation, ``eval_every``); progress, status and the training return (the mean
raw score of its latest 100 training games, exploration included) from ``run.json``.
A running run brings its ``run.json`` up to date every 30 s or so, with its speed, from which the table gives
the time it has left. A run whose ``run.json`` still says running but whose process is gone shows as
``interrupted`` (``running?`` when it ran on another host, where that cannot be checked), with the steps of its
last checkpoint, where ``rl-train --resume`` continues. ``--evals`` and ``--plot`` take the training return at
each evaluation from the run's TensorBoard files (``charts/episodic_return``, every training game), so it is
there for runs of any age.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl.cli import ArgumentParser, run_cli
from rl.config import ConfigError, load_toml
from rl.logging import RECENT_GAMES, process_alive, read_evaluations, read_sessions

COLUMNS = ("run", "preset", "env", "steps", "train return", "last eval", "best eval", "best hns", "wall time",
           "steps/s", "left", "status")
EVAL_COLUMNS = ("step", "wall time (s)", "eval games", "epsilon", "weights", "eval mean", "eval sd", "eval median",
                "online mean", "train mean", "train sd", "train games")         # --evals


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-runs", description="List the runs under DIR: steps, evaluation scores, status; "
                            "or each run's evaluations beside its training return (--evals); or draw their learning "
                            "curves (--plot).")
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("runs")], metavar="RUN_OR_DIR",
                        help="run directories, or directories searched recursively for them (default: runs)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--evals", action="store_true", help="instead of the table, list each run's evaluations: step, "
                      "wall time, score over the evaluation's games, and the training return (the mean raw score of "
                      f"the last {RECENT_GAMES} training games, exploring) at that step")
    what.add_argument("--plot", type=Path, metavar="IMAGE", help="instead of the table, draw the evaluation curves "
                      "into IMAGE (.png, .pdf, .svg): return against agent steps and against wall time, the seeds of "
                      "one setting as their mean with a min-max band, the training return dashed; needs the plot "
                      "extra")
    return parser


def find_runs(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(run directory, the given path it was found under), each run once, in the order of ``paths``."""
    found: dict[Path, Path] = {}
    for root in paths:
        if not root.is_dir():
            raise ConfigError(f"RUN_OR_DIR {str(root)!r} is not a directory; pass a run directory or the directory "
                              f"rl-train writes runs to (default: runs)")
        for run_dir in sorted({p.parent for p in root.rglob("config.toml")}):
            found.setdefault(run_dir, root)
    return list(found.items())


def run_status(info: dict[str, Any]) -> str:
    """run.json's status, except that a "running" run whose process has gone is "interrupted"."""
    status = str(info.get("status", "new"))
    if status == "running":
        alive = process_alive(info)
        if alive is False:
            return "interrupted"
        if alive is None:
            return "running?"
    return status


def count(n: int | None) -> str:
    """2400 -> 2.4k, 10_000_000 -> 10M: agent steps at a glance."""
    if n is None:
        return "?"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def summarize(run_dir: Path, root: Path) -> dict[str, str]:
    """One table row for ``run_dir``."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        info = {}                                  # config written, training never started
    except (OSError, ValueError):
        info = {"status": "unreadable"}
    if "env" not in info or "total_steps" not in info:
        try:
            config = load_toml(run_dir / "config.toml")
        except ConfigError:
            config = {}
        info = {"env": config.get("env"), "total_steps": config.get("total_steps"), **info}
    evals = read_evaluations(run_dir)
    last = evals[-1] if evals else None
    best = max(evals, key=lambda r: r["mean"]) if evals else None
    name = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
    status = run_status(info)
    step = info.get("step", 0)
    if status == "interrupted" and info.get("checkpoint_step") is not None:
        step = info["checkpoint_step"]                 # what was trained after it is lost; a resume starts here
    sps = info.get("sps") if status in ("running", "running?") else None
    left = (info["total_steps"] - step) / sps if sps and info.get("total_steps") else None
    return {
        "run": name,
        "preset": info.get("preset") or "-",
        "env": info.get("env") or "?",
        "steps": f"{count(step)}/{count(info.get('total_steps'))}",
        "train return": f"{info['train_return']:.1f}" if "train_return" in info else "-",
        "last eval": f"{last['mean']:.1f}" if last else "-",
        "best eval": f"{best['mean']:.1f} @{count(best['step'])}" if best else "-",
        "best hns": f"{best['human_normalized']:.2f}" if best and "human_normalized" in best else "-",
        "wall time": duration(info.get("wall_time")),
        "steps/s": f"{sps:.0f}" if sps else "-",
        "left": duration(left),
        "status": status,
    }


def table(rows: list[dict[str, str]], columns: Sequence[str] = COLUMNS, right: Sequence[str] = ()) -> str:
    """Rows under their column names, each column as wide as its widest cell; the ``right`` ones right-aligned."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(cells[c].rjust(widths[c]) if c in right else cells[c].ljust(widths[c])
                         for c in columns).rstrip()

    return "\n".join([line({c: c for c in columns})] + [line(r) for r in rows])


def evaluations(run_dir: Path) -> str:
    """--evals for one run: a line naming it, then a row per evaluation (``*`` marks those that became best.pt)."""
    from rl import curves

    records = read_evaluations(run_dir)
    curve = curves.read_curve(run_dir, records)          # the same records: a live run may append meanwhile
    seed = curve.config.get("seed")
    head = (f"{run_dir} ({curve.preset or curve.config['env']}, seed {seed}): {plural(len(records), 'evaluation')}"
            + ("" if records else " yet"))
    resumes = read_sessions(run_dir)[1:]
    if resumes:
        at = "step" if len(resumes) == 1 else "steps"
        head += f"; resumed {plural(len(resumes), 'time')} (at {at} {', '.join(f'{s:,}' for s in resumes)})"
    if not records:
        return head
    rows = []
    for i, record in enumerate(records):
        trained, spread = curve.train_return[i], curve.train_sd[i]
        rows.append({
            "step": f"{int(record['step']):,}" + ("*" if record.get("best") else " "),
            "wall time (s)": f"{record['wall_time']:,.0f}" if "wall_time" in record else "-",
            "eval games": str(record.get("episodes", "?")),
            "epsilon": format(record.get("protocol", {}).get("epsilon", "?")),
            "weights": record.get("weights", "online").split(" ")[0],        # online, or average (eval_ema X)
            "eval mean": f"{record['mean']:.2f}",
            "eval sd": f"{record.get('std', 0.0):.2f}",
            "eval median": f"{record['median']:.1f}" if "median" in record else "-",
            "online mean": f"{record['online']['mean']:.2f}" if "online" in record else "-",
            "train mean": "-" if math.isnan(trained) else f"{trained:.2f}",
            "train sd": "-" if math.isnan(spread) else f"{spread:.2f}",
            "train games": str(curve.train_games[i]),
        })
    legend = (f"eval: its own games, played by the online weights or their running average (eval_ema); online: "
              f"the online weights on the same seeds, where the average played (eval_online); train: the "
              f"last {RECENT_GAMES} training games ended by that step (exploring); sd: over games (population std); "
              f"* = saved as best.pt")
    return f"{head}; {legend}\n" + table(rows, EVAL_COLUMNS, right=EVAL_COLUMNS)


def plot(paths: Sequence[Path], image: Path) -> int:
    """--plot: check everything (matplotlib, format, runs, evaluations) before drawing anything."""
    try:
        import matplotlib  # noqa: F401  (the optional extra: only --plot needs it)
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is not installed: pip install -e '.[plot]'") from None
    from rl import curves

    formats = curves.image_formats()
    if image.suffix.lstrip(".").lower() not in formats:
        raise ConfigError(f"--plot {str(image)!r}: cannot tell the image format from its suffix; end it in one of: "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    runs = find_runs(paths)
    shown = ", ".join(str(p) for p in paths)
    if not runs:
        raise ConfigError(f"no runs under {shown}: --plot wants run directories written by rl-train (holding "
                          f"config.toml and evaluations.jsonl)")
    found, skipped = [], []
    for run_dir, root in runs:
        curve = curves.read_curve(run_dir)
        if curve.step.size:
            found.append(curve)
        elif run_dir == root:
            raise ConfigError(f"run {str(run_dir)!r} has no evaluations: --plot wants its evaluations.jsonl, which "
                              f"rl-train writes when it evaluates (--eval-every N)")
        else:
            skipped.append(run_dir)
    if not found:
        raise ConfigError(f"no run under {shown} has evaluations yet: --plot wants evaluations.jsonl, which rl-train "
                          f"writes when it evaluates (--eval-every N)")
    try:
        groups = curves.group_runs(found)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for run_dir in skipped:
        print(f"rl-runs: note: {run_dir} has no evaluations yet; left out", file=sys.stderr)
    for curve in found:
        if curve.untimed:
            print(f"rl-runs: note: {curve.untimed} evaluations of {curve.path} carry no wall time (an older rl-train); "
                  f"left out of the wall-time panel", file=sys.stderr)
    try:
        image.parent.mkdir(parents=True, exist_ok=True)
        curves.draw(groups, image)
    except OSError as exc:
        print(f"rl-runs: error: cannot write {image}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{image}: {plural(len(found), 'run')} in {plural(len(groups), 'setting')}")
    for g in groups:
        print(f"  {g.legend}: {g.mean[-1]:.1f} at {count(int(g.step[-1]))} steps ({plural(len(g.step), 'shared evaluation')})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot is not None:
        return plot(args.paths, args.plot)
    runs = find_runs(args.paths)
    if not runs:
        if args.evals:
            raise ConfigError(f"no runs under {', '.join(str(p) for p in args.paths)}: --evals wants run directories "
                              f"written by rl-train (holding config.toml)")
        print(f"no runs under {', '.join(str(p) for p in args.paths)}")
        return 0
    if args.evals:
        print("\n\n".join(evaluations(run_dir) for run_dir, _ in runs))
    else:
        print(table([summarize(run_dir, root) for run_dir, root in runs]))
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-runs"))


if __name__ == "__main__":
    entry()
