"""rl.stats: the IQM, its bootstrap CI, the sample std and the worst run, checked against hand computations."""
from __future__ import annotations

import importlib.util
import statistics

import numpy as np
import pytest

from rl import stats


def test_iqm_mean_std_and_worst_by_hand():
    # sorted: 0 1 | 2 3 4 5 | 6 100: int(8 / 4) = 2 runs dropped at each end, IQM = (2 + 3 + 4 + 5) / 4
    s = stats.summarize([5, 100, 0, 3, 6, 1, 4, 2], reps=1000)
    assert s["iqm"] == 3.5
    assert s["mean"] == 121 / 8
    assert s["std"] == pytest.approx(statistics.stdev([5, 100, 0, 3, 6, 1, 4, 2]))     # the sample std, ddof 1
    assert (s["worst"], s["worst_index"], s["n"]) == (0.0, 2, 8)
    # n = 5: int(5 / 4) = 1 run dropped at each end, IQM = (2 + 3 + 4) / 3
    assert stats.summarize([100, 2, 1, 4, 3], reps=1000)["iqm"] == 3.0


def test_ci_of_two_runs_spans_the_bootstrap_extremes():
    """Resampling two runs (0, 1) gives means 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    97.5% percentiles are 0 and 1."""
    s = stats.summarize([0.0, 1.0], reps=2000)
    assert (s["ci_low"], s["iqm"], s["ci_high"]) == (0.0, 0.5, 1.0)


@pytest.mark.parametrize("scores", [[7.5] * 6, [3.0]])
def test_degenerate_scores_have_a_ci_of_the_value_itself(scores):
    s = stats.summarize(scores, reps=500)
    assert s["iqm"] == s["ci_low"] == s["ci_high"] == s["mean"] == s["worst"] == scores[0]
    assert s["std"] == (0.0 if len(scores) > 1 else None)           # one run has no sample std


def test_seeded_bootstrap_is_reproducible_and_leaves_numpy_alone():
    scores = np.random.default_rng(0).normal(10.0, 3.0, size=9)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = stats.summarize(scores, reps=300, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)
    assert stats.summarize(scores, reps=300, seed=1) == first
    other = stats.summarize(scores, reps=300, seed=2)
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])
    assert scores.min() <= first["ci_low"] <= first["iqm"] <= first["ci_high"] <= scores.max()


@pytest.mark.parametrize("scores,reps", [([], 100), ([1.0, float("nan")], 100), ([[1.0, 2.0]], 100), ([1.0], 0)])
def test_bad_input_is_a_value_error(scores, reps):
    with pytest.raises(ValueError):
        stats.summarize(scores, reps=reps)


def test_missing_rliable_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rliable" else real(name, *a))
    with pytest.raises(stats.RliableMissing, match=r"pip install -e '\.\[stats\]'"):
        stats.summarize([1.0, 2.0])
