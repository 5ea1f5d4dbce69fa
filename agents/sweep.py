"""What rl-sweep runs for each grid point, as a Ray task: one single-process training run, then its
checkpoints scored as rl-evaluate scores them. Plain Python: scripts/sweep.py wraps it in ray.remote."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Sequence

import torch

from agents.evaluation import evaluate_checkpoint
from agents.run import RunDirError, TrainingDiverged, prepare_run_dir
from agents.runner import Trainer
from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig


def sweep_run(cfg: TrainConfig, run_dir: str, preset: str | None, name: str, threads: int,
              checkpoints: Sequence[str] = ("latest", "best")) -> dict[str, Any]:
    """Train one grid point in this (Ray worker) process with the single-process Trainer, then score the
    ``checkpoints`` it wrote (``best.pt`` only exists where periodic evaluations wrote one) from disk, as
    ``rl-evaluate FILE --episodes <eval_episodes>`` would. A stopped run is not scored: its network is
    partway. Returns plain data for rl-sweep's table; a failed run is reported, not raised."""
    torch.set_num_threads(cfg.torch_threads or max(1, threads))
    run_dir_ = Path(run_dir)
    result: dict[str, Any] = {"name": name, "seed": cfg.seed, "run_dir": run_dir, "host": socket.gethostname()}
    try:
        prepare_run_dir(run_dir_, cfg, preset)
        trainer = Trainer(cfg, run_dir_, preset=preset, show_progress=False)
        try:
            result["status"] = trainer.train()
            result["step"] = trainer.step
        finally:
            trainer.close()
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
