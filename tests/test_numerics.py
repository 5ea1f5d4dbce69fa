"""rl.numerics: training flushes subnormal floats to zero, in torch's worker threads too, so optimizer moments
that decay below float32's normal range become 0 instead of slow subnormals; the setting is put back after.

The flag checks run in fresh interpreters: the flags belong to threads, and torch's workers in this test
process were started long before."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rl_dqn
from rl import numerics

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# Adam's second moment just above float32's smallest normal number (1.18e-38); a step with a zero gradient
# multiplies it by beta2 = 0.999, which takes it below.
ADAM_STEP = """
    import torch
    from rl import numerics
    from rl.registry import make_optimizer
    torch.set_num_threads(2)
    with {context}:
        w = torch.nn.Parameter(torch.zeros(1_000_000))
        opt = make_optimizer("adam", [w], {{"lr": 1e-4}})
        w.grad = torch.zeros_like(w)
        opt.step()
        opt.state[w]["exp_avg_sq"].fill_(1.1755e-38)
        opt.step()
        v = opt.state[w]["exp_avg_sq"]
    print("zero" if (v == 0).all() else "subnormal" if (v > 0).all() else "mixed")
"""


@pytest.mark.parametrize("context,expected", [("numerics.subnormals_flushed()", "zero"),
                                              ("torch.no_grad()", "subnormal")])
def test_adam_moments_below_the_normal_range_are_flushed_on_every_thread(context, expected):
    # 1M parameters: the fused step splits them across both threads; "mixed" would mean a worker kept its
    # subnormals
    assert run(ADAM_STEP.format(context=context)) == expected


def test_the_flush_is_put_back_after_the_block():
    before = numerics.flushing()
    with numerics.subnormals_flushed():
        assert numerics.flushing()
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
    assert numerics.flushing() == before


def test_training_flushes_while_it_trains_and_only_then(tmp_path, monkeypatch):
    seen = []
    from agents.runner import Trainer
    train = Trainer.train
    monkeypatch.setattr(Trainer, "train", lambda self, **kw: seen.append(numerics.flushing()) or train(self, **kw))
    assert not numerics.flushing()
    rl_dqn.train(preset="cartpole", run_dir=tmp_path / "run", total_steps=600, learning_starts=200, eval_every=0,
                 target_return=0.0)
    assert seen == [True] and not numerics.flushing()


def test_rl_supervised_trains_with_the_flush_and_puts_it_back(tmp_path, monkeypatch):
    from agents.supervised import SupervisedTrainer
    from scripts.supervised import main
    seen = []
    fit = SupervisedTrainer.fit
    monkeypatch.setattr(SupervisedTrainer, "fit",
                        lambda self, *a, **kw: seen.append(numerics.flushing()) or fit(self, *a, **kw))
    assert main(["classify", "--data", "spirals", "--epochs", "1", "--run-dir", str(tmp_path / "run")]) == 0
    assert seen == [True] and not numerics.flushing()
