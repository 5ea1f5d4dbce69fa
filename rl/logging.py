"""TensorBoard scalars under stable, namespaced names, a terminal progress bar, and the identity of
the training process (so a run whose process died can be told from a running one), and the run's records
read back: its evaluations (``evaluations.jsonl``) and its training games (TensorBoard)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import time
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

RECENT_GAMES = 100      # the training return: the mean raw score of this many latest training games


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

    def video(self, name: str, gif: bytes, height: int, width: int, step: int) -> None:
        """An animated GIF as an image summary, exactly what ``add_video`` writes. add_video itself needs
        ``moviepy.editor``, which moviepy 2 removed, so the caller encodes the GIF (Pillow)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)

    def graph(self, model, example) -> None:
        """The network graph, traced once on an example input. A diagnostic: a network that cannot be
        traced is skipped with a warning instead of stopping the run."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.trace")  # deprecated, still what add_graph uses
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # add_graph prints its failures to stdout
                    self.writer.add_graph(model, example)
            except RuntimeError as exc:
                warnings.warn(f"network graph not logged: {str(exc).splitlines()[0]}", stacklevel=2)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def cpu_info() -> dict[str, Any]:
    """The CPU a figure was measured on: lscpu's model name, the core count and the flags that decide whether
    bf16 is native (AVX512-BF16, AMX) or emulated."""
    import platform
    import subprocess

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []))
    return {"model": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": sorted(f for f in flags if f.startswith("amx"))}


def machine_info(**overrides: Any) -> dict[str, Any]:
    """The machine a benchmark's figures belong to, as its JSON records it: platform, CPU (:func:`cpu_info`),
    torch version and threads, and the load average while it ran; ``overrides`` replace or add fields."""
    import platform

    import torch

    return {"platform": platform.platform(), "cpu": cpu_info(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0], **overrides}


def cpu_line(cpu: Mapping[str, Any]) -> str:
    return f"{cpu['model']} ({cpu['cores']} cores, avx512_bf16={cpu['avx512_bf16']}, amx={cpu['amx'] or 'none'})"


def process_identity() -> dict[str, Any]:
    """pid, host and start time of this process: with the start time a reused pid (after a crash or a
    container restart) is not mistaken for the training."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _proc_stat(os.getpid())[1]}


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """Linux: (state, start time in clock ticks after boot) from /proc/PID/stat; (None, None) elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    return fields[0], int(fields[19])          # fields 3 and 22 of proc(5); the name before ")" may hold spaces


def process_alive(info: Mapping[str, Any]) -> bool | None:
    """Whether the process that :func:`process_identity` described still runs; None when that cannot be
    told from here (it ran on another host, or nothing was recorded)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                   # exists, owned by another user
    state, started = _proc_stat(pid)
    if state == "Z":
        return False                           # exited, not yet reaped by its parent
    return started is None or info.get("pid_start") in (None, started)


class Progress:
    """A tqdm bar over agent steps (or evaluation games) with rate, ETA and the mean of recent episode returns."""

    def __init__(self, total: int, initial: int = 0, window: int = 100, disable: bool | None = None,
                 unit: str = "step", unit_scale: bool = True):
        self.bar = tqdm(total=total, initial=initial, unit=unit, unit_scale=unit_scale, dynamic_ncols=True,
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

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, say) out of the current interval."""
        self.last_time += seconds


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The run's evaluations by step. A torn last line (a crash mid-append) is skipped; a step evaluated
    twice (a resumed run redoes the evaluations after its last checkpoint) keeps the newer result."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        lines = (run_dir / "evaluations.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
            by_step[int(record["step"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return [by_step[s] for s in sorted(by_step)]


def read_sessions(run_dir: Path) -> list[int]:
    """The agent step each training session started at, oldest first: 0 for the first, then each resume's (a
    resumed session's TensorBoard file opens with a SessionLog START at its purge step). [] before any file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    def started(path: Path) -> int:
        for i, event in enumerate(EventFileLoader(str(path)).Load()):
            if event.HasField("session_log"):
                return int(event.step)
            if i >= 4:                      # SessionLog comes right after the file header, or not at all
                break
        return 0

    def created(path: Path) -> tuple[int, str]:
        """events.out.tfevents.<unix seconds>.<host>.<pid>.<n>: the creation time, then the name."""
        stamp = path.name.split(".")[3]
        return (int(stamp) if stamp.isdigit() else 0), path.name

    return [started(path) for path in sorted(Path(run_dir).glob("events.out.tfevents.*"), key=created)]


def read_training_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every training game's raw score (``charts/episodic_return``) and the agent step it ended at, in the
    order played: (int64[G], float64[G]), empty where the run has no TensorBoard files yet. A resumed session
    starts its file by purging what the session before wrote after the checkpoint it resumes from
    (:class:`Logger`'s ``purge_step``), and TensorBoard's reader applies that, so each game counts once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        return np.zeros(0, np.int64), np.zeros(0)
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})     # 0: keep every event, no sampling
    tensorboard_log = logging.getLogger("tensorboard")
    level = tensorboard_log.level
    tensorboard_log.setLevel(logging.ERROR)         # each purge is logged as a warning; here it is expected
    try:
        events.Reload()
    finally:
        tensorboard_log.setLevel(level)
    if "charts/episodic_return" not in events.Tags()["scalars"]:
        return np.zeros(0, np.int64), np.zeros(0)
    games = events.Scalars("charts/episodic_return")
    return np.array([g.step for g in games], np.int64), np.array([g.value for g in games], np.float64)
