"""Learning curves from run directories: each run's periodic evaluations and its training return at each of
them, runs of one setting gathered across seeds, and a two-panel figure of both against agent steps and
against wall time.

A *setting* is a run's whole config except its seed and the keys that cannot change what is learned
(:data:`BOOKKEEPING`), so ``rl-sweep --seeds 0..4`` gives one group per grid point. matplotlib is an
optional extra, imported only by :func:`draw`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from rl.config import TrainConfig, format_value, load_toml
from rl.logging import RECENT_GAMES, read_evaluations, read_training_returns

# Keys that say where or how often a run wrote things, or which hardware it used, not what it learned;
# together with the seed they are left out when runs are gathered into settings.
BOOKKEEPING = frozenset({"seed", "device", "torch_threads", "env_threads", "log_every", "checkpoint_every",
                         "keep_checkpoints", "save_replay", "eval_video", "eval_online", "actor_max_restarts"})


@dataclass(frozen=True)
class RunCurve:
    """One run's evaluations, in step order."""

    path: Path
    preset: str | None
    config: dict[str, Any]      # every TrainConfig key; the defaults fill in what config.toml leaves out
    step: np.ndarray            # agent steps at each evaluation
    mean: np.ndarray            # mean return over the evaluation's games
    std: np.ndarray             # standard deviation over those games
    hours: np.ndarray           # training wall time at each evaluation; NaN where the file predates the record
    train_return: np.ndarray    # mean raw score of the RECENT_GAMES training games ended by each evaluation; NaN: none
    train_sd: np.ndarray        # their sd over games (population std)
    train_games: np.ndarray     # how many games that is (fewer than RECENT_GAMES early on)
    averaged: np.ndarray        # bool: the evaluation played the weight average (eval_ema), not the online weights
    online: np.ndarray          # mean return of the online weights on the same seeds (eval_online); NaN: not played

    @property
    def untimed(self) -> int:
        """Evaluations written before rl-train recorded their wall time."""
        return int(np.isnan(self.hours).sum())


@dataclass(frozen=True)
class GroupCurve:
    """Runs of one setting, at the evaluation steps they all share. One run: its line and its sd over
    games. Several: the mean over runs and the min-max band across them."""

    label: str
    runs: tuple[RunCurve, ...]
    step: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    hours: np.ndarray           # mean over runs of their wall times at these steps (NaN where any lacks one)
    train_return: np.ndarray    # mean over runs of their training returns at these steps (NaN where any lacks one)
    averaged: np.ndarray        # bool: some run's evaluation at that step played its weight average
    online: np.ndarray          # mean over runs of the online weights' return there (NaN where any lacks one)

    @property
    def spread(self) -> str:
        return "sd over games" if len(self.runs) == 1 else "min-max over seeds"

    @property
    def legend(self) -> str:
        n = len(self.runs)
        seeds = len({r.config["seed"] for r in self.runs})
        what = "seed" if seeds == n else "run"
        return f"{self.label} ({n} {what}{'s' if n > 1 else ''}; band: {self.spread})"


def _defaults() -> dict[str, Any]:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(TrainConfig)}


def _normalized(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` over the defaults, whole numbers in float fields as floats: a config.toml written by an
    older rl-train (fewer keys) or by hand (``0`` for ``0.0``) names the same setting as a current one."""
    full = _defaults()
    for key, value in config.items():
        default = full.get(key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        full[key] = value
    return full


def training_return_at(game_steps: np.ndarray, returns: np.ndarray, steps: np.ndarray,
                       window: int = RECENT_GAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``steps``: the mean and sd over games (population std, as rl-evaluate gives a score's spread)
    of the last ``window`` of ``returns`` whose games ended at or before it (``game_steps`` in order), and how
    many games that is; NaN where none had."""
    ended = np.searchsorted(game_steps, steps, side="right")          # games ended by each step
    windows = [returns[max(0, n - window):n] for n in ended]
    mean = np.array([w.mean() if w.size else np.nan for w in windows])
    sd = np.array([w.std() if w.size else np.nan for w in windows])
    return mean, sd, np.array([w.size for w in windows], np.int64)


def _training_returns(run_dir: Path, evals: Sequence[Mapping[str, Any]],
                      step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training return at each evaluation: the one its record carries (rl-train writes it with each
    evaluation, so a copy of ``evaluations.jsonl`` alone keeps it), else from the run's TensorBoard files."""
    if all("train" in r for r in evals):
        played = np.zeros(0, np.int64), np.zeros(0)       # no need to read the TensorBoard files
    else:
        played = read_training_returns(run_dir)
    mean, sd, games = training_return_at(*played, step)
    for i, record in enumerate(evals):
        if "train" in record:
            mean[i], sd[i], games[i] = (record["train"][k] for k in ("mean", "std", "games"))
    return mean, sd, games


def read_curve(run_dir: Path, evals: Sequence[Mapping[str, Any]] | None = None) -> RunCurve:
    """The evaluations of the run in ``run_dir`` (empty arrays when it has none yet), each with the run's
    training return by then. ``evals``: its evaluation records where the caller has read them already (a
    running run may append one between two reads)."""
    config = _normalized(load_toml(run_dir / "config.toml"))
    try:
        preset = json.loads((run_dir / "run.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        preset = None
    evals = read_evaluations(run_dir) if evals is None else evals

    def column(key: str, missing: float = math.nan) -> np.ndarray:
        return np.array([float(r.get(key, missing)) for r in evals])

    step = column("step")
    train_return, train_sd, train_games = _training_returns(run_dir, evals, step)
    averaged = np.array([str(r.get("weights", "online")).startswith("average") for r in evals], bool)
    online = np.array([float(r["online"]["mean"]) if "online" in r else math.nan for r in evals])
    return RunCurve(path=run_dir, preset=preset, config=config, step=step, mean=column("mean"),
                    std=column("std", 0.0), hours=column("wall_time") / 3600, train_return=train_return,
                    train_sd=train_sd, train_games=train_games, averaged=averaged, online=online)


def setting_key(config: Mapping[str, Any]) -> str:
    """The setting a config trains: every key but the seed and the bookkeeping ones, as canonical JSON."""
    return json.dumps({k: v for k, v in config.items() if k not in BOOKKEEPING}, sort_keys=True)


def _labels(groups: list[list[RunCurve]]) -> list[str]:
    """Each group's preset (where all its runs name the same one), then the keys in which it differs
    from the other groups of that preset; a group with neither is named by its env."""
    presets = [runs[0].preset if len({r.preset for r in runs}) == 1 else None for runs in groups]
    labels = []
    for preset, runs in zip(presets, groups):
        peers = [g[0].config for p, g in zip(presets, groups) if p == preset]
        differing = [k for k in runs[0].config
                     if k not in BOOKKEEPING and len({format_value(c.get(k, "")) for c in peers}) > 1]
        parts = ([preset] if preset else []) + [f"{k}={format_value(runs[0].config[k])}" for k in differing]
        labels.append(" ".join(parts) or str(runs[0].config["env"]))
    return labels


def group_runs(curves: Sequence[RunCurve]) -> list[GroupCurve]:
    """Gather ``curves`` by setting (first appearance first) and aggregate each group at the evaluation
    steps all its runs share. Raises ValueError when runs of one setting share no evaluation step."""
    by_key: dict[str, list[RunCurve]] = {}
    for curve in curves:
        by_key.setdefault(setting_key(curve.config), []).append(curve)
    groups = list(by_key.values())
    result = []
    for label, runs in zip(_labels(groups), groups):
        shared = reduce(np.intersect1d, [r.step for r in runs])
        if shared.size == 0:
            raise ValueError(f"runs {', '.join(str(r.path) for r in runs)} train one setting but share no "
                             f"evaluation step")
        index = [np.searchsorted(r.step, shared) for r in runs]     # steps are sorted and include shared
        means = np.stack([r.mean[i] for r, i in zip(runs, index)])  # [runs, steps]
        mean = means.mean(axis=0)
        if len(runs) == 1:
            std = runs[0].std[index[0]]
            low, high = mean - std, mean + std
        else:
            low, high = means.min(axis=0), means.max(axis=0)
        hours = np.stack([r.hours[i] for r, i in zip(runs, index)]).mean(axis=0)
        train_return = np.stack([r.train_return[i] for r, i in zip(runs, index)]).mean(axis=0)
        averaged = np.stack([r.averaged[i] for r, i in zip(runs, index)]).any(axis=0)
        online = np.stack([r.online[i] for r, i in zip(runs, index)]).mean(axis=0)
        result.append(GroupCurve(label=label, runs=tuple(runs), step=shared, mean=mean, low=low, high=high,
                                 hours=hours, train_return=train_return, averaged=averaged, online=online))
    return result


def image_formats() -> set[str]:
    """File suffixes :func:`draw` can write (needs matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return set(FigureCanvasAgg(Figure()).get_supported_filetypes())


def caption(groups: Sequence[GroupCurve]) -> str:
    """What the marks of :func:`draw`'s figure mean, naming only those it draws: a group's training return is
    drawn where all its runs have one by the shared steps, the hollow and dotted marks where a run kept a weight
    average."""
    parts = ["evaluation: mean over seeds, band min-max over seeds (sd over games for a single run)"]
    if any(not np.isnan(g.train_return).all() for g in groups):
        parts.append(f"dashed: training return, mean of the last {RECENT_GAMES} training games (exploring), mean "
                     f"over seeds")
    if any(g.averaged.any() for g in groups):
        parts.append("hollow: evaluations of the weight average (eval_ema)")
    if any(not np.isnan(g.online).all() for g in groups):
        parts.append("dotted x: the online weights on the same seeds")
    return "; ".join(parts)


def draw(groups: Sequence[GroupCurve], path: Path) -> None:
    """Two panels, evaluation return against agent steps and against training wall time (hours), one
    colour per group, with the group's training return dashed in the same colour where its runs logged one
    (it tells a weak snapshot from a policy that stopped learning), written atomically to ``path`` in the
    format its suffix names. The Agg canvas is used directly: no pyplot, no display, no global backend
    switch in the caller's process."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    from rl.checkpoint import atomic_write

    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    colours = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    for i, group in enumerate(groups):
        colour = colours(i % colours.N)
        by_step.plot(group.step, group.mean, color=colour, marker="o", markersize=3, label=group.legend)
        by_step.fill_between(group.step, group.low, group.high, color=colour, alpha=0.2, linewidth=0)
        by_step.plot(group.step, group.train_return, color=colour, linestyle="--", linewidth=1)
        by_step.plot(group.step[group.averaged], group.mean[group.averaged], color=colour, linestyle="none",
                     marker="o", markersize=7, markerfacecolor="white")
        by_step.plot(group.step, group.online, color=colour, linestyle=":", marker="x", markersize=4, linewidth=1)
        timed = ~np.isnan(group.hours)
        if timed.any():
            by_time.plot(group.hours[timed], group.mean[timed], color=colour, marker="o", markersize=3)
            by_time.fill_between(group.hours[timed], group.low[timed], group.high[timed], color=colour, alpha=0.2,
                                 linewidth=0)
            by_time.plot(group.hours[timed], group.train_return[timed], color=colour, linestyle="--", linewidth=1)
            hollow = timed & group.averaged
            by_time.plot(group.hours[hollow], group.mean[hollow], color=colour, linestyle="none", marker="o",
                         markersize=7, markerfacecolor="white")
            by_time.plot(group.hours[timed], group.online[timed], color=colour, linestyle=":", marker="x",
                         markersize=4, linewidth=1)
    by_step.set_xlabel("agent steps")
    by_step.xaxis.set_major_formatter(EngFormatter())
    by_step.set_ylabel("return (raw game score)")
    by_time.set_xlabel("training wall time (hours; mean over seeds)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(groups), 2), fontsize="small")
    fig.suptitle(textwrap.fill(caption(groups), width=150), fontsize="medium")      # the figure is 13 inches wide
    fmt = path.suffix.lstrip(".").lower()
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=100))
