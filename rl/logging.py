"""TensorBoard scalars under stable, namespaced names, and a terminal progress bar."""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm


class Logger:
    """Writes ``charts/*``, ``losses/*`` and ``eval/*`` scalars; TensorBoard is imported lazily."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a crashed run wrote after its last checkpoint, so a resumed run's
        # curves continue without doubled points.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def text(self, name: str, text: str, step: int = 0) -> None:
        self.writer.add_text(name, text, step)

    def histogram(self, name: str, values, step: int) -> None:
        self.writer.add_histogram(name, values, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Progress:
    """A tqdm bar over agent steps with steps/s, ETA and the mean of recent episode returns."""

    def __init__(self, total: int, initial: int = 0, window: int = 100, disable: bool | None = None):
        self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                        smoothing=0.05, disable=disable, mininterval=1.0)
        self.returns: deque[float] = deque(maxlen=window)

    def update(self, steps: int, episode_returns: list[float], **extra: Any) -> None:
        self.returns.extend(episode_returns)
        if self.returns:
            extra = {"return": f"{sum(self.returns) / len(self.returns):.1f}", **extra}
        self.bar.set_postfix(extra, refresh=False)
        self.bar.update(steps)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


class RateMeter:
    """Steps per second over the interval since the last call."""

    def __init__(self, step: int = 0):
        self.last_step, self.last_time = step, time.perf_counter()

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        return rate
