"""A training setup assembled from its config in one place: the fully validated config, and the replay
memory for an env's observations. The single-process trainer, the distributed replay server and actors,
and rl-bench all build theirs here, so they cannot disagree on a rule or a stack size."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from envs import check_config
from rl.config import TrainConfig, validate_train
from rl.replay import PrioritizedReplayBuffer, ReplayBuffer, ReplaySpec


def validated(cfg: TrainConfig) -> TrainConfig:
    """Every rule: field values and cross-field rules (rl.config), then the env's (envs.check_config).
    Raises ConfigError with one line naming the value and what is allowed."""
    cfg = validate_train(cfg)
    check_config(cfg)
    return cfg


def replay_spec(cfg: TrainConfig, obs_shape: Sequence[int], obs_dtype: np.dtype, num_actions: int, stack: int,
                capacity: int | None = None) -> ReplaySpec:
    """``stack`` is the env's ``frame_stack``: stacks [stack, H, W] (Atari) are stored a frame at a time and
    rebuilt at sample time; with 1, every observation (vector, or an unstacked image) is stored whole."""
    return ReplaySpec(capacity=capacity or cfg.buffer_size, num_envs=cfg.num_envs, obs_shape=tuple(obs_shape),
                      obs_dtype=np.dtype(obs_dtype), stack=stack, n_step=cfg.n_step, gamma=cfg.gamma,
                      num_actions=num_actions)


def make_replay(cfg: TrainConfig, spec: ReplaySpec, seed: int) -> ReplayBuffer:
    """Uniform replay, or proportional prioritized replay when ``cfg.prioritized``."""
    if cfg.prioritized:
        return PrioritizedReplayBuffer(spec, seed=seed, alpha=cfg.priority_alpha, eps=cfg.priority_eps)
    return ReplayBuffer(spec, seed=seed)
