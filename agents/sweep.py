"""What rl-sweep runs for each grid point: one training run, then its checkpoints scored as rl-evaluate
scores them. Plain Python: scripts/sweep.py runs it as a Ray task (single-process runs, in parallel), or
in its own process on the whole cluster, one grid point after another (Ape-X runs, ``actors`` > 0)."""
from __future__ import annotations

import functools
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from agents.evaluation import evaluate_checkpoint
from agents.run import RunDirError, TrainingDiverged, prepare_run_dir, training
from agents.runner import Trainer
from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig


def sweep_run(cfg: TrainConfig, run_dir: str, preset: str | None, name: str, threads: int,
              checkpoints: Sequence[str] = ("latest", "best"), actors: int = 0) -> dict[str, Any]:
    """Train one grid point in this process with the single-process Trainer (or, with ``actors``, as the
    learner of an Ape-X run whose actors Ray places on the cluster this process is connected to), then score the
    ``checkpoints`` it wrote (``best.pt`` only exists where periodic evaluations wrote one) from disk, as
    ``rl-evaluate FILE --episodes <eval_episodes>`` would. A stopped run is not scored: its network is
    partway. Returns plain data for rl-sweep's table; a failed run is reported, not raised."""
    torch.set_num_threads(cfg.torch_threads or max(1, threads))
    run_dir_ = Path(run_dir)
    result: dict[str, Any] = {"name": name, "seed": cfg.seed, "run_dir": run_dir, "host": socket.gethostname()}
    try:
        prepare_run_dir(run_dir_, cfg, preset)
        if actors:
            from agents.distributed.learner import DistributedTrainer
            make = functools.partial(DistributedTrainer, actors=actors)
        else:
            make = Trainer
        with training(lambda: make(cfg, run_dir_, preset=preset, show_progress=False)) as trainer:
            result["status"] = trainer.train()
            result["step"] = trainer.step
        if result["status"] == "stopped":
            return result
        files = {"latest": trainer.checkpoints.latest, "best": trainer.checkpoints.best}
        result["eval"] = {}
        for which in checkpoints:
            if files[which].exists():
                scored = evaluate_checkpoint(files[which], trainer.device)
                result["eval"][which] = {"mean": scored["mean"], "std": scored["std"], "episodes": scored["episodes"],
                                         "epsilon": scored["protocol"]["epsilon"], "seed": scored["protocol"]["seed"]}
    except (TrainingDiverged, RunDirError, ConfigError, ckpt.CheckpointError) as exc:
        result.update(status="failed", error=str(exc))
    return result


Report = Callable[[dict[str, Any], int], None]     # (a finished run's result, how many have finished)


def run_in_parallel(jobs: Sequence[tuple[TrainConfig, str, str]], preset: str | None, cpus_per_run: float,
                    checkpoints: Sequence[str], report: Report, grace_seconds: float) -> tuple[dict, bool]:
    """Each job (config, run directory, name) as a Ray task reserving ``cpus_per_run`` cores, as many at once as
    the cluster's cores allow. Ctrl-C cancels the running tasks, which checkpoint and stop as rl-train's
    Ctrl-C would, within ``grace_seconds``. Returns ({name: result}, whether it was stopped)."""
    import ray

    task = ray.remote(sweep_run).options(num_cpus=cpus_per_run, max_retries=0)
    threads = max(1, int(cpus_per_run))
    pending = {task.remote(cfg, run_dir, preset, name, threads, checkpoints): name for cfg, run_dir, name in jobs}
    results: dict[str, dict[str, Any]] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                name = pending.pop(ref)
                results[name] = _task_result(ray, ref, name)
                report(results[name], len(results))
    except KeyboardInterrupt:
        print("rl-sweep: stopping: each running run writes a checkpoint (rl-train --resume continues it)",
              file=sys.stderr)
        for ref in pending:
            ray.cancel(ref)
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=grace_seconds)
        for ref in done:
            results[pending[ref]] = _task_result(ray, ref, pending[ref])
        return results, True
    return results, False


def run_in_turn(jobs: Sequence[tuple[TrainConfig, str, str]], preset: str | None, actors: int,
                checkpoints: Sequence[str], report: Report) -> tuple[dict, bool]:
    """Each job as an Ape-X run with ``actors`` actors, one after another in this process (its learner here,
    its actors on the whole cluster, as ``rl-train --actors N`` runs). Ctrl-C stops the current run with a
    checkpoint, as rl-train's does, and starts no other. Returns ({name: result}, whether it was stopped)."""
    results: dict[str, dict[str, Any]] = {}
    for cfg, run_dir, name in jobs:
        results[name] = sweep_run(cfg, run_dir, preset, name, max(1, cfg.torch_threads), checkpoints, actors=actors)
        report(results[name], len(results))
        if results[name]["status"] == "stopped":
            return results, True
    return results, False


def _task_result(ray, ref, name: str) -> dict[str, Any]:
    """A task's result; a task that crashed (or was cancelled) becomes a failed row, not a traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return {"name": name, "status": "stopped", "error": "cancelled"}
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return {"name": name, "status": "failed", "error": first}
