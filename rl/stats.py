"""Scores over seeds: the interquartile mean with a 95% stratified bootstrap CI, mean ± sample std, worst run.

A handful of seeds is too few for a mean alone: one collapsed run drags it, and the spread says nothing about
where a rerun would land. Following Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice",
https://arxiv.org/abs/2108.13264) a report gives the IQM (the mean of the middle half of the runs, robust to
one outlier, less noisy than the median) with a percentile bootstrap CI, computed by their library rliable
(the ``stats`` extra), plus the plain mean ± std and the worst run for readers who want those.
"""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_REPS = 50_000      # rliable's default number of bootstrap resamples
BOOTSTRAP_SEED = 0           # fixed, so the same scores always print the same CI
CONFIDENCE = 0.95


class RliableMissing(ImportError):
    """The ``stats`` extra (rliable) is not installed."""


def require() -> None:
    """Raise RliableMissing, with the command that fixes it, unless rliable can be imported."""
    if importlib.util.find_spec("rliable") is None:
        raise RliableMissing("seed statistics need rliable, which is not installed: pip install -e '.[stats]'")


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """rliable's StratifiedBootstrap draws its resamples from numpy's global RNG (its ``random_state``
    only reaches arch's generator, which it never uses), so seed that, and put it back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def summarize(scores: Sequence[float], *, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """One score per run (seed) -> ``n``, ``iqm``, ``ci_low``, ``ci_high`` (95% stratified bootstrap CI of
    the IQM, ``reps`` resamples, reproducible for a given ``seed``), ``mean``, ``std`` (the sample std,
    ddof 1; None for one run), ``worst`` and ``worst_index`` (the lowest score and its position).

    The IQM is rliable's: scipy's 25% trimmed mean, which drops ``int(n / 4)`` runs at each end. The runs
    form one task (one game), so stratifying the bootstrap by task is resampling the runs.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"summarize needs one or more finite scores, got {scores!r}")
    if reps < 1:
        raise ValueError(f"summarize needs reps >= 1, got {reps}")
    require()
    from rliable import library, metrics

    runs_by_tasks = x.reshape(-1, 1)
    with _global_numpy_seed(seed):
        point, interval = library.get_interval_estimates(
            {"runs": runs_by_tasks}, lambda s: np.array([metrics.aggregate_iqm(s)]),
            reps=reps, confidence_interval_size=CONFIDENCE)
    low, high = interval["runs"][:, 0]
    return {"n": int(x.size), "iqm": float(point["runs"][0]), "ci_low": float(low), "ci_high": float(high),
            "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "worst": float(x.min()), "worst_index": int(x.argmin())}


def method(reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> str:
    """How :func:`summarize`'s figures were computed, to print beside them."""
    return (f"IQM = 25% trimmed mean (rliable) with a {CONFIDENCE:.0%} stratified bootstrap CI ({reps:,} resamples, "
            f"seed {seed}); std = sample std (ddof 1)")


def summary_line(s: dict[str, Any], worst: str) -> str:
    """:func:`summarize`'s dict in one line; ``worst`` names the run that scored lowest."""
    std = f" ± {s['std']:.2f}" if s["std"] is not None else ""
    return (f"IQM {s['iqm']:.2f} [{CONFIDENCE:.0%} CI {s['ci_low']:.2f}, {s['ci_high']:.2f}], "
            f"mean {s['mean']:.2f}{std}, worst {s['worst']:.2f} ({worst})")


def description(reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """:func:`method` as data, for JSON written beside the figures."""
    return {"iqm": "25% trimmed mean (rliable)", "ci": f"{CONFIDENCE:.0%} stratified bootstrap, percentile",
            "bootstrap_reps": reps, "bootstrap_seed": seed, "std": "sample std, ddof 1"}
