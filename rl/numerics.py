"""Subnormal floats flushed to zero while an agent trains.

Adam's (and RMSProp's) moment estimates for a weight whose gradient stays zero, such as the weights into a
unit that ReLU keeps off, shrink geometrically until they fall below float32's smallest normal number
(about 1.2e-38). x86 CPUs compute on such subnormal numbers through a slow microcode path, so a long run's
optimizer step slows down as more of its moments get there (README, Performance, measures it on the 10M
Breakout run). Flushed to zero (the CPU's FTZ and DAZ flags), they change no update that matters: a moment
that small moves its weight by nothing Adam's ``eps`` lets through.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def flushing() -> bool:
    """Whether this thread flushes subnormals now: a subnormal times one comes out as zero."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@contextlib.contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Flush subnormals to zero in this thread for the block, then put back what was set before.

    The flags belong to each thread, and a thread starts with the flags of the thread that creates it: torch's
    worker threads flush too when they are started inside the block (torch starts them at its first parallel
    work), and keep flushing afterwards; workers already running when the block starts do not."""
    before = flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
