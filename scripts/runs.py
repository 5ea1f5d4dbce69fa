"""rl-runs: one table of the runs under a directory: progress, evaluation scores and status.

    rl-runs                 # every run under runs/
    rl-runs runs/sweep

A run is a directory holding a ``config.toml`` written by rl-train. Scores come from its
``evaluations.jsonl`` (periodic evaluation, ``eval_every``), progress and status from ``run.json``.
A run whose ``run.json`` still says running but whose process is gone shows as ``interrupted``
(``running?`` when it ran on another host, where that cannot be checked).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from rl.config import ArgumentParser, ConfigError, load_toml, run_cli
from rl.logging import process_alive, read_evaluations

COLUMNS = ("run", "preset", "env", "steps", "last eval", "best eval", "best hns", "wall time", "status")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-runs", description="List the runs under DIR: steps, evaluation scores, status.")
    parser.add_argument("dir", nargs="?", type=Path, default=Path("runs"), metavar="DIR",
                        help="a directory of run directories, searched recursively (default: runs)")
    return parser


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
    return {
        "run": name,
        "preset": info.get("preset") or "-",
        "env": info.get("env") or "?",
        "steps": f"{count(info.get('step', 0))}/{count(info.get('total_steps'))}",
        "last eval": f"{last['mean']:.1f}" if last else "-",
        "best eval": f"{best['mean']:.1f} @{count(best['step'])}" if best else "-",
        "best hns": f"{best['human_normalized']:.2f}" if best and "human_normalized" in best else "-",
        "wall time": duration(info.get("wall_time")),
        "status": run_status(info),
    }


def table(rows: list[dict[str, str]]) -> str:
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root: Path = args.dir
    if not root.is_dir():
        raise ConfigError(f"DIR {str(root)!r} is not a directory; pass the directory rl-train writes runs to "
                          f"(default: runs)")
    run_dirs = sorted({p.parent for p in root.rglob("config.toml")})
    if not run_dirs:
        print(f"no runs under {root}")
        return 0
    print(table([summarize(d, root) for d in run_dirs]))
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-runs"))


if __name__ == "__main__":
    entry()
