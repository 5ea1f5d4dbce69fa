"""rl-sweep: a grid of training runs as Ray tasks, and how robust each setting's scores are over seeds.

    rl-sweep --preset cartpole --seeds 0..9                  # one preset, ten seeds: the robustness benchmark
    rl-sweep --preset cartpole --seeds 0..2 --set learning_rate=1e-3,5e-4 --set double=true,false
    rl-sweep --preset breakout --seeds 0..4 --ray-address auto --root /shared/runs/sweep1
    rl-sweep --preset cartpole --seeds 0..9 --actors 2      # the same benchmark on the Ape-X path

The grid is every combination of the ``--set`` values, times every seed. Each point is one
single-process rl-train run (with ``--actors N``: one Ape-X run, ``rl-train --actors N``, the points one
after another) in its own directory ``ROOT/<key=value,...>-s<seed>`` (so
``tensorboard --logdir ROOT`` shows them all, and ``rl-runs ROOT`` lists them). At its end each run's
``checkpoints/latest.pt`` and ``checkpoints/best.pt`` (where periodic evaluations wrote one) are scored
as ``rl-evaluate FILE --episodes <eval_episodes>`` scores them: eval_episodes full games at eval_epsilon,
rl-evaluate's seed. The table gives, per setting and checkpoint, over seeds: the IQM with a 95%
stratified bootstrap CI, the mean ± sample std (ddof 1) and the worst seed (rl.stats, with rliable);
``ROOT/summary.json`` holds the same. ``--set key=value`` with one value is a plain override. On a
cluster, ROOT must be on a filesystem every node sees.

Exit codes: 0 every run finished, 1 a run failed or the sweep was stopped (Ctrl-C), 2 bad input.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl import stats
from rl.cli import ArgumentParser, add_config_flags, overrides_from_args, parse_cli_value, run_cli
from rl.config import (
    EVALUATE_SEED,
    ConfigError,
    SweepConfig,
    TrainConfig,
    base_config,
    format_value,
    from_dict,
    preset_names,
)

STOP_GRACE_SECONDS = 60      # after Ctrl-C, how long stopped runs get to write their checkpoints
CHECKPOINTS = ("latest", "best")     # what each run is scored by (the last network, the best one), in table order


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-sweep", description="Run a grid of configs x seeds as Ray tasks; score each run's "
                            "latest.pt and best.pt as rl-evaluate does; print per setting the IQM with a 95% "
                            "bootstrap CI, mean ± std and the worst seed.")
    parser.add_argument("--preset", default=None,
                        help=f"named settings: {', '.join(preset_names())} (default: breakout)")
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys, applied over the preset")
    parser.add_argument("--seeds", default="0..4", metavar="SEEDS",
                        help="seeds: a range A..B (both included), a list 0,3,7 or one seed (default: 0..4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                        help="a grid axis: config KEY takes each value (TOML syntax: 1e-3, true, \"adam\", [64, 64]); "
                             "repeat for more axes; one value is a plain override")
    parser.add_argument("--root", type=Path, help="directory of the runs (default: runs/sweep-<preset>-<time>)")
    parser.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster ('auto': the one 'ray start' "
                        "runs on this node); default: start Ray here with this machine's cores")
    add_config_flags(parser, SweepConfig, title="sweep settings")
    return parser


def parse_seeds(text: str) -> list[int]:
    """``A..B`` (inclusive), ``A,B,C`` or ``A``: distinct seeds in [0, 2^31), in order."""
    def seed(part: str) -> int:
        try:
            value = int(part.strip())
        except ValueError:
            raise ConfigError(f"--seeds {text!r} is not allowed: {part.strip()!r} is not a whole number; "
                              f"use A..B, A,B,C or A") from None
        if not 0 <= value < 2**31:
            raise ConfigError(f"--seeds {text!r} is not allowed: seeds must be in [0, 2^31)")
        return value

    if ".." in text:
        low, _, high = text.partition("..")
        a, b = seed(low), seed(high)
        if b < a:
            raise ConfigError(f"--seeds {text!r} is not allowed: the range ends before it starts; use {b}..{a}")
        return list(range(a, b + 1))
    seeds = [seed(part) for part in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} is not allowed: a seed appears twice")
    return seeds


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes, so ``[64, 64],[128]`` is two values."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_axes(items: list[str], base: TrainConfig) -> list[tuple[str, list[Any]]]:
    """``--set KEY=V1,V2`` items as (key, values), each value checked against the key's type and range."""
    axes: list[tuple[str, list[Any]]] = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"--set {item!r} is not allowed: use KEY=V1,V2 (e.g. learning_rate=1e-3,5e-4)")
        if key == "seed":
            raise ConfigError("--set seed=... is not allowed: give the seeds with --seeds")
        if key in (k for k, _ in axes):
            raise ConfigError(f"--set {item!r} is not allowed: {key} is already set; put all its values in one --set")
        raw = split_values(text)
        if any(not r for r in raw):
            raise ConfigError(f"--set {item!r} is not allowed: an empty value; use KEY=V1,V2")
        values = [getattr(from_dict(TrainConfig, {key: parse_cli_value(r)}, base=base), key) for r in raw]
        if len({format_value(v) for v in values}) != len(values):
            raise ConfigError(f"--set {item!r} is not allowed: a value appears twice")
        axes.append((key, values))
    return axes


def label(point: tuple[tuple[str, Any], ...]) -> str:
    """``key=value,...`` for the table (``base`` for the preset alone)."""
    return ",".join(f"{k}={format_value(v)}" for k, v in point) or "base"


def run_name(point: tuple[tuple[str, Any], ...], seed: int) -> str:
    """A directory name: ``learning_rate=0.001,hidden_sizes=64x64-s0`` (``s0`` for the preset alone)."""
    def short(v: Any) -> str:
        text = "x".join(map(str, v)) if isinstance(v, list) else format_value(v)
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
    stem = ",".join(f"{k}={short(v)}" for k, v in point)
    return f"{stem}-s{seed}" if stem else f"s{seed}"


def build_grid(base: TrainConfig, axes, seeds) -> list[dict[str, Any]]:
    """Every (point, seed) with its validated config; bad combinations stop the sweep before any work."""
    from agents.build import validated
    runs = []
    keys = [k for k, _ in axes]
    for values in itertools.product(*(v for _, v in axes)):
        point = tuple(zip(keys, values))
        for seed in seeds:
            cfg = validated(from_dict(TrainConfig, {**dict(point), "seed": seed}, base=base))
            runs.append({"point": point, "seed": seed, "cfg": cfg, "name": run_name(point, seed)})
    return runs


def summary_rows(runs: list[dict[str, Any]], results: dict[str, dict[str, Any]], reps: int) -> list[dict[str, Any]]:
    """One row per setting: each seed's score per checkpoint (None where there is none) and, per checkpoint,
    rl.stats.summarize over the seeds that have a score, plus which seed was worst."""
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        setting = label(run["point"])
        row = rows.setdefault(setting, {"setting": setting, "point": dict(run["point"]), "runs": []})
        result = results.get(run["name"], {"status": "not run"})
        scores = result.get("eval", {})
        row["runs"].append({"seed": run["seed"], "status": result["status"], "run_dir": result.get("run_dir"),
                            **{which: scores[which]["mean"] if which in scores else None for which in CHECKPOINTS},
                            "error": result.get("error")})
    for row in rows.values():
        for which in CHECKPOINTS:
            scored = [r for r in row["runs"] if r[which] is not None]
            summary = stats.summarize([r[which] for r in scored], reps=reps) if scored else None
            if summary is not None:
                summary["worst_seed"] = scored[summary.pop("worst_index")]["seed"]
            row[which] = summary
    return list(rows.values())


TABLE_HEADER = ("setting", "checkpoint", "seeds", "IQM [95% CI]", "mean ± std (ddof 1)", "worst (seed)", "per seed")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Two lines per setting, latest.pt then best.pt; a seed without a score shows why (its status, or
    ``none`` for a finished run that wrote no best.pt)."""
    lines = []
    for row in rows:
        for which in CHECKPOINTS:
            s = row[which]
            per_seed = "  ".join(
                f"s{r['seed']} " + (f"{r[which]:.2f}" if r[which] is not None
                                    else "none" if r["status"] in ("finished", "solved") else r["status"])
                for r in row["runs"])
            counted = f"{s['n'] if s else 0}/{len(row['runs'])}"
            if s is None:
                lines.append((row["setting"], f"{which}.pt", counted, "-", "-", "-", per_seed))
                continue
            iqm = f"{s['iqm']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
            std = f"{s['std']:.2f}" if s["std"] is not None else "-"
            lines.append((row["setting"], f"{which}.pt", counted, iqm, f"{s['mean']:.2f} ± {std}",
                          f"{s['worst']:.2f} (s{s['worst_seed']})", per_seed))
    widths = [max(len(str(x)) for x in col) for col in zip(TABLE_HEADER, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()   # noqa: E731
    return "\n".join([fmt(TABLE_HEADER), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def protocol_lines(runs: list[dict[str, Any]], reps: int) -> list[str]:
    """What the scores and the statistics are, so the table is never read without them."""
    protocols = {(r["cfg"].eval_episodes, r["cfg"].eval_epsilon) for r in runs}
    if len(protocols) == 1:
        (episodes, epsilon), = protocols
        games = f"{episodes} full games at epsilon {epsilon}"
        command = f"rl-evaluate FILE --episodes {episodes}"
    else:
        games = "each setting's eval_episodes full games at its eval_epsilon"
        command = "rl-evaluate FILE --episodes <eval_episodes>"
    return [f"scores: each run's checkpoints/latest.pt (the last network) and best.pt (its best periodic evaluation; "
            f"none with eval_every = 0), {games}, seed {EVALUATE_SEED}: what `{command}` prints",
            f"over seeds: {stats.method(reps)}; worst = the lowest seed's score"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = from_dict(SweepConfig, overrides_from_args(args, SweepConfig))
    seeds = parse_seeds(args.seeds)
    base, preset = base_config(args.preset, args.config)
    axes = parse_axes(args.set, base)
    fixed = {k: v[0] for k, v in axes if len(v) == 1}           # one value: a plain override, not in run names
    axes = [(k, v) for k, v in axes if len(v) > 1]
    base = from_dict(TrainConfig, fixed, base=base)
    runs = build_grid(base, axes, seeds)
    root = args.root or Path("runs") / f"sweep-{preset or Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken = [r["name"] for r in runs if (root / r["name"] / "config.toml").exists()]
    if taken:
        raise ConfigError(f"--root {str(root)!r} already holds run {taken[0]!r}; choose another --root")
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("rl-sweep needs Ray, which is not installed: pip install -e '.[distributed]'")
    if settings.actors:
        from agents.distributed.cluster import check_config
        for r in runs:
            check_config(r["cfg"], settings.actors)
    try:
        stats.require()
    except stats.RliableMissing as exc:
        raise ConfigError(f"rl-sweep's {exc}") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--root {str(root)!r} is not writable: {exc.strerror}") from None

    import ray

    from agents.distributed.cluster import connect
    from agents.sweep import run_in_parallel, run_in_turn

    owns_ray = connect(args.ray_address)
    points = len(runs) // len(seeds)
    print(f"rl-sweep: {len(runs)} runs ({points} setting(s) x {len(seeds)} seed(s)) under {root}"
          + (f", one after another, each with {settings.actors} Ape-X actors" if settings.actors else "")
          + f"; watch with: tensorboard --logdir {root}", file=sys.stderr)
    jobs = [(r["cfg"], str((root / r["name"]).resolve()), r["name"]) for r in runs]

    def report(result: dict[str, Any], done: int) -> None:
        scored = result.get("eval", {})
        print(f"rl-sweep: [{done}/{len(runs)}] {result['name']}: {result['status']}"
              + "".join(f", {which}.pt {v['mean']:.2f}" for which, v in scored.items())
              + (f" ({result['error']})" if result.get("error") else ""), file=sys.stderr)

    try:
        if settings.actors:
            results, stopped = run_in_turn(jobs, preset, settings.actors, CHECKPOINTS, report)
        else:
            results, stopped = run_in_parallel(jobs, preset, settings.cpus_per_run, CHECKPOINTS, report,
                                               grace_seconds=STOP_GRACE_SECONDS)
    finally:
        if owns_ray:
            ray.shutdown()

    rows = summary_rows(runs, results, settings.bootstrap_reps)
    cfg0 = runs[0]["cfg"]
    if fixed:
        print("fixed: " + label(tuple(fixed.items())))
    print("\n".join(protocol_lines(runs, settings.bootstrap_reps)))
    print(format_table(rows))
    summary = {"preset": preset, "config": args.config, "root": str(root), "seeds": seeds,
               "axes": {k: v for k, v in axes}, "fixed": fixed, "actors": settings.actors, "stopped": stopped,
               "protocol": {"eval_episodes": cfg0.eval_episodes, "eval_epsilon": cfg0.eval_epsilon,
                            "eval_seed": EVALUATE_SEED, "checkpoints": list(CHECKPOINTS),
                            "base": dataclasses.asdict(cfg0) | {"seed": None}},
               "statistics": stats.description(settings.bootstrap_reps),
               "rows": rows}
    try:
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
    except OSError as exc:
        print(f"rl-sweep: error: cannot write {root / 'summary.json'}: {exc.strerror}", file=sys.stderr)
        return 1
    finished = all(results.get(r["name"], {}).get("status") in ("finished", "solved") for r in runs)
    return 0 if finished and not stopped else 1


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-sweep"))


if __name__ == "__main__":
    entry()
