"""agents/build.py: the one place a config becomes a validated config, a replay and an agent."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.build import make_agent, make_replay, q_network, replay_spec, validated
from rl.config import ConfigError, TrainConfig, from_dict, load_preset
from rl.replay import PrioritizedReplayBuffer, ReplayBuffer

CARTPOLE = from_dict(TrainConfig, load_preset("cartpole"))


@pytest.mark.parametrize("obs_shape,stack", [((4, 84, 84), 4), ((4, 10, 10), 1), ((4,), 1)],
                         ids=["atari", "unstacked-image", "vector"])
def test_replay_spec_takes_the_envs_stack(obs_shape, stack):
    """The env says what it stacks (VecEnv.frame_stack); an unstacked image (MinAtar) is stored whole."""
    cfg = dataclasses.replace(CARTPOLE, frame_stack=4, n_step=3)
    spec = replay_spec(cfg, obs_shape, np.uint8, 6, stack, capacity=800)
    assert (spec.stack, spec.capacity, spec.num_envs, spec.n_step, spec.obs_shape) == (stack, 800, 4, 3, obs_shape)
    assert replay_spec(cfg, obs_shape, np.uint8, 6, stack).capacity == cfg.buffer_size


def test_make_replay_is_prioritized_when_asked():
    spec = replay_spec(CARTPOLE, (4,), np.float32, 2, 1)
    assert type(make_replay(CARTPOLE, spec, seed=0)) is ReplayBuffer
    prioritized = make_replay(dataclasses.replace(CARTPOLE, prioritized=True, priority_alpha=0.7), spec, seed=0)
    assert isinstance(prioritized, PrioritizedReplayBuffer) and prioritized.alpha == 0.7


def test_validated_runs_the_env_rules_too():
    with pytest.raises(ConfigError, match="its observations are vectors"):
        validated(dataclasses.replace(CARTPOLE, network="nature_cnn"))   # an image network on vectors


def test_make_agent_builds_the_network_q_network_builds():
    """The agent's online network is q_network's, initialised from torch's seed alike, so a behaviour clone
    (agents.supervised.teacher_network) loads where the agent's weights go."""
    torch.manual_seed(3)
    net = q_network(CARTPOLE, (4,), 2)
    torch.manual_seed(3)
    agent = make_agent(CARTPOLE, (4,), 2)
    weights = agent.policy_state_dict()
    assert list(weights) == list(net.state_dict())
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    assert agent.optimizer.param_groups[0]["params"] == list(agent.q.parameters())


def test_make_agent_seeds_exploration():
    obs = np.zeros((50, 4), np.float32)
    draws = [make_agent(CARTPOLE, (4,), 2, seed=s).act(obs, 1.0) for s in (None, CARTPOLE.seed, 9)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
