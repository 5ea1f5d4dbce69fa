"""The Python API: train, load a policy for your own loop, evaluate.

    import rl_dqn

    run = rl_dqn.train(preset="cartpole", run_dir="runs/cp", total_steps=50_000)
    policy = rl_dqn.load_policy(run.checkpoint)
    action = policy.act(obs)                       # obs as the env gives it: one observation or a batch
    results = rl_dqn.evaluate(run.checkpoint, episodes=20)

The same code paths as the command line (``rl-train``, ``rl-evaluate``): settings are validated the same
way (a bad value raises :class:`ConfigError` naming it and what is allowed), runs write the same run
directory, and ``evaluate`` returns the dict ``rl-evaluate --json`` writes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl.checkpoint import CheckpointError
from rl.config import ConfigError, TrainConfig

__all__ = ["CheckpointError", "ConfigError", "Policy", "TrainingRun", "evaluate", "load_policy", "train"]


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`train` leaves behind: the run directory and what happened in it."""

    run_dir: Path
    status: str                    # "finished", "stopped" (stop_at) or "solved" (target_return reached)
    steps: int                     # agent steps taken, all envs together
    config: TrainConfig
    evaluations: list[dict[str, Any]]   # the periodic evaluations (eval_every), oldest first

    @property
    def checkpoint(self) -> Path:
        """The newest checkpoint, ``run_dir/checkpoints/latest.pt``."""
        return self.run_dir / "checkpoints" / "latest.pt"


def train(preset: str | None = None, run_dir: str | Path | None = None, *, config: str | Path | None = None,
          resume: str | Path | None = None, stop_at: int | None = None, progress: bool = False,
          **overrides: Any) -> TrainingRun:
    """Train a DQN agent as ``rl-train`` does and return the finished run.

    Settings come from ``overrides`` (any config key, e.g. ``total_steps=50_000``), over the ``config`` TOML
    file, over the ``preset`` (default ``breakout``). ``resume=RUN_DIR`` continues a stopped run instead
    (only resumable keys may be overridden). ``stop_at`` checkpoints and stops once that many agent steps
    are done. Raises ConfigError for bad input before any work. While it trains, this thread (and torch's worker
    threads, if it starts them) flush subnormal floats to zero (``rl.numerics``); the setting is put back after.
    """
    from agents.run import new_config, prepare_run_dir, resumed_config, training
    from agents.runner import Trainer
    from rl.logging import read_evaluations

    if stop_at is not None and stop_at < 1:
        raise ConfigError(f"stop_at = {stop_at} is not allowed: must be >= 1")
    if resume is not None:
        if preset is not None or config is not None or run_dir is not None:
            raise ConfigError("resume takes the run's saved config; drop preset, config and run_dir")
        run_dir = Path(resume)
        cfg = resumed_config(run_dir, overrides)
    else:
        if run_dir is None:
            raise ConfigError("run_dir is required: the directory the run writes its config, events and checkpoints to")
        run_dir = Path(run_dir)
        cfg, preset = new_config(preset, config, overrides)
        prepare_run_dir(run_dir, cfg, preset)
    with training(lambda: Trainer(cfg, run_dir, preset=preset, show_progress=progress)) as trainer:
        if resume is not None:
            trainer.restore()
        status = trainer.train(stop_at=stop_at)
        steps = trainer.step
    return TrainingRun(run_dir, status, steps, cfg, read_evaluations(run_dir))


class Policy:
    """A trained network for your own loop: ``act(obs)`` takes observations as the env gives them.

    On Atari that is gymnasium's ``AtariPreprocessing`` + ``FrameStackObservation(4, padding_type="zero")``
    (uint8[4, 84, 84]), which this package's env reproduces frame for frame; on vector tasks the env's
    float observation. Loaded through the same safe path as every checkpoint (no code runs on load).
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu", online: bool = False):
        from agents.dqn import resolve_device
        from agents.policy import load_policy as read
        from envs import make_env

        self.device = resolve_device(device)
        self._policy = read(Path(checkpoint), self.device, online)
        self.config: TrainConfig = self._policy.cfg
        env = make_env(self.config, num_envs=1, evaluation=True)
        try:
            self.observation_shape: tuple[int, ...] = tuple(env.obs_shape)
            self.num_actions: int = env.num_actions
        finally:
            env.close()
        self._agent = self._policy.agent(self.observation_shape, self.num_actions, self.device).eval()
        self._rng = np.random.default_rng()

    def act(self, obs: np.ndarray, epsilon: float = 0.0) -> int | np.ndarray:
        """The greedy action (an int for one observation, int64[B] for a batch [B, *observation_shape]); with
        ``epsilon``, a uniformly random action that often, as evaluation plays."""
        obs = np.asarray(obs)
        single = obs.shape == self.observation_shape
        batch = obs[None] if single else obs
        if batch.shape[1:] != self.observation_shape:
            raise ValueError(f"observation of shape {obs.shape} does not fit this policy: it takes "
                             f"{self.observation_shape} or a batch [B, {', '.join(map(str, self.observation_shape))}]")
        actions = self._agent.greedy(batch)
        if epsilon > 0:
            explore = self._rng.random(len(actions)) < epsilon
            actions = np.where(explore, self._rng.integers(0, self.num_actions, len(actions)), actions)
        return int(actions[0]) if single else actions.astype(np.int64)

    def seed(self, seed: int) -> None:
        """Seed the exploration draws of :meth:`act`."""
        self._rng = np.random.default_rng(seed)


def load_policy(checkpoint: str | Path, device: str = "cpu", online: bool = False) -> Policy:
    """The network a checkpoint's (or an ``rl-export`` policy file's) evaluations play: its weight average
    where the run kept one, unless ``online``."""
    return Policy(checkpoint, device, online)


def evaluate(checkpoint: str | Path, episodes: int = 30, *, video: str | Path | None = None,
             json_path: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """Score a checkpoint or policy file as ``rl-evaluate`` does (full games, raw score, the run's eval_epsilon
    unless ``epsilon``) and return the same dict its ``--json`` writes (mean, std, median, min, max, returns,
    protocol, human_normalized on Atari). ``settings`` are rl-evaluate's: epsilon, seed, num_envs, device,
    online, video_episodes, precision (``rl-evaluate --help``), checked the same way."""
    from agents.dqn import resolve_device
    from agents.evaluation import play_as_set, saved_player
    from rl.config import EvaluateConfig, check_evaluate, from_dict

    run = check_evaluate(from_dict(EvaluateConfig, {"episodes": episodes, **settings}), filming=video is not None)
    cfg, agent_for = saved_player(Path(checkpoint), resolve_device(run.device), online=run.online,
                                   precision=run.precision)
    results = play_as_set(agent_for, cfg, run, video=None if video is None else Path(video))
    results["checkpoint"] = str(checkpoint)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(results, indent=1))
    return results
