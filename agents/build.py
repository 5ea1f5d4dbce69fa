"""A training setup assembled from its config in one place: the fully validated config, the replay memory
for an env's observations, and the agent from its parts. The single-process trainer, the distributed
replay server, learner and actors, evaluation and rl-bench all build theirs here, so they cannot disagree
on a rule, a stack size or how a network is made."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from agents.dqn import DQNAgent
from envs import check_config
from envs.base import VecEnv
from rl.config import TrainConfig, validate_train
from rl.device_replay import DevicePrioritizedReplayBuffer, DeviceReplayBuffer
from rl.networks import q_network_for, use_channels_last
from rl.registry import make_loss, make_optimizer
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


def replay_on_device(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the replay lives in ``device`` memory (rl.device_replay) rather than in host numpy arrays."""
    return cfg.replay_device == "device" or (cfg.replay_device == "auto" and device.type == "cuda")


def make_replay(cfg: TrainConfig, spec: ReplaySpec, seed: int,
                device: torch.device | str = "cpu") -> ReplayBuffer | DeviceReplayBuffer:
    """Uniform replay, or proportional prioritized replay when ``cfg.prioritized``; in ``device`` memory when
    :func:`replay_on_device` says so. Both kinds save the same state, so a run may resume with the other."""
    device = torch.device(device)
    if replay_on_device(cfg, device):
        if cfg.prioritized:
            return DevicePrioritizedReplayBuffer(spec, seed=seed, device=device, alpha=cfg.priority_alpha,
                                                 eps=cfg.priority_eps)
        return DeviceReplayBuffer(spec, seed=seed, device=device)
    if cfg.prioritized:
        return PrioritizedReplayBuffer(spec, seed=seed, alpha=cfg.priority_alpha, eps=cfg.priority_eps)
    return ReplayBuffer(spec, seed=seed)


def q_network(cfg: TrainConfig, obs_shape: Sequence[int], num_actions: int,
              device: torch.device | str = "cpu") -> nn.Module:
    """The online Q-network ``cfg`` describes (rl.networks), on ``device``, channels-last where asked; its
    weights are what checkpoints, policy files and behaviour clones hold."""
    q = q_network_for(cfg, tuple(obs_shape), num_actions).to(device)
    if cfg.channels_last and len(obs_shape) == 3:
        use_channels_last(q)
    return q


def make_agent(cfg: TrainConfig, obs_shape: Sequence[int], num_actions: int, device: torch.device | str = "cpu",
               *, seed: int | None = None) -> DQNAgent:
    """The DQN agent from its parts: the online network, the optimizer over its weights and the loss (both
    from rl.registry); ``seed`` starts its exploration RNG (default: cfg.seed)."""
    q = q_network(cfg, obs_shape, num_actions, device)
    optimizer = make_optimizer(cfg.optimizer, q.parameters(), {**cfg.optimizer_kwargs, "lr": cfg.learning_rate})
    return DQNAgent(cfg, q, optimizer, make_loss(cfg.loss), num_actions=num_actions, device=device, seed=seed)


def played_replay(cfg: TrainConfig, agent: DQNAgent, env: VecEnv, steps: int, epsilon: float,
                  seed: int = 0) -> ReplayBuffer | DeviceReplayBuffer:
    """A replay holding ``steps`` agent steps (at least one vector step) that ``agent`` plays in ``env`` at
    ``epsilon``, rewards clipped where the config clips them: batches of the frames a trained agent sees, for
    benchmarks and diagnostics of a run's learner. ``env`` is left where the play stopped."""
    replay = make_replay(cfg, replay_spec(cfg, env.obs_shape, env.obs_dtype, env.num_actions, env.frame_stack,
                                          capacity=max(cfg.batch_size * 4, steps)), seed=seed)
    obs = env.reset()
    for _ in range(max(1, steps // cfg.num_envs)):
        actions = agent.act(obs, epsilon)
        env.send(actions)
        out = env.recv()
        replay.add_step(obs, actions, np.sign(out.reward) if cfg.reward_clip else out.reward, out)
        obs = out.obs
    return replay
