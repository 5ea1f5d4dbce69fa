"""The DQN agent's interface (agents/dqn.py): what trainers, actors, evaluation and scripts call instead of
reaching into its networks and RNG. The learning rules themselves are pinned in test_rainbow.py."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.build import make_agent
from rl.config import TrainConfig
from tests.fakes import random_batch

CARTPOLE = TrainConfig(env="cartpole", network="mlp", hidden_sizes=[32, 32], num_envs=1)
OBS = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


def agent_for(**changes):
    torch.manual_seed(0)
    return make_agent(dataclasses.replace(CARTPOLE, **changes), (4,), 2)


@pytest.mark.parametrize("changes", [{}, {"distributional": True, "loss": "cross_entropy", "v_min": 0.0,
                                          "v_max": 10.0, "num_atoms": 11}], ids=["td", "c51"])
def test_priorities_are_what_an_update_would_give_the_batch(changes):
    """Ape-X's initial priorities: the same numbers the update reports for the batch, from the same
    networks, without stepping them."""
    agent = agent_for(**changes)
    batch = random_batch(np.random.default_rng(1), 16)
    before = {k: v.clone() for k, v in agent.policy_state_dict().items()}
    priorities = agent.priorities(batch)
    assert all(torch.equal(v, agent.policy_state_dict()[k]) for k, v in before.items())
    np.testing.assert_allclose(priorities, agent.update(batch)["priority"].numpy(), rtol=1e-6)


def test_loss_gradient_is_the_gradient_the_update_descends_without_stepping():
    """The diagnostic the precision benchmark compares: the same loss and gradient update() computes (its
    .grad before the optimizer step), leaving the weights and the gradients alone."""
    agent = agent_for(max_grad_norm=0.0)
    batch = random_batch(np.random.default_rng(1), 16)
    before = {k: v.clone() for k, v in agent.policy_state_dict().items()}
    loss, grad = agent.loss_gradient(batch)
    assert all(torch.equal(v, agent.policy_state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in agent.q.parameters())
    metrics = agent.update(batch)
    assert torch.allclose(loss, metrics["td_loss"])
    assert torch.allclose(grad, torch.cat([p.grad.flatten() for p in agent.q.parameters()]))
    assert not all(torch.equal(v, agent.policy_state_dict()[k]) for k, v in before.items())


def test_priorities_never_augment():
    """DrQ's random shift is for learning only (and would draw from torch's RNG)."""
    cfg = dataclasses.replace(CARTPOLE, network="nature_cnn", env="breakout", augmentation=True)
    agent = make_agent(cfg, (4, 84, 84), 4)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (8, 4, 84, 84)).astype(np.uint8)
    batch = random_batch(rng, 8)._replace(obs=obs, next_obs=obs.copy(), action=rng.integers(0, 4, 8))
    state = torch.get_rng_state()
    first = agent.priorities(batch)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(first, agent.priorities(batch))


def test_without_a_target_network_the_online_net_bootstraps_itself():
    agent = agent_for(target="none")
    assert agent.target is agent.q


@pytest.mark.parametrize("target", ["hard", "polyak"])
def test_a_hard_target_syncs_when_the_steps_cross_a_multiple_of_target_update(target):
    agent = agent_for(target=target, target_update=100, tau=0.5)
    rng = np.random.default_rng(2)
    agent.steps_done(96, 104)                                    # no update yet: nothing to copy
    assert all(torch.equal(a, b) for a, b in zip(agent.target.parameters(), agent.q.parameters()))
    agent.update(random_batch(rng, 8))
    before = [p.clone() for p in agent.target.parameters()]
    agent.steps_done(104, 112)                                   # no multiple of 100 crossed
    assert all(torch.equal(a, b) for a, b in zip(agent.target.parameters(), before))
    agent.steps_done(192, 200)                                   # 200 is crossed
    synced = all(torch.equal(a, b) for a, b in zip(agent.target.parameters(), agent.q.parameters()))
    assert synced == (target == "hard")
    if target == "polyak":                                       # Polyak moves it in every update instead
        assert all(torch.equal(a, b) for a, b in zip(agent.target.parameters(), before))
        agent.update(random_batch(rng, 8))
        assert not any(torch.equal(a, b) for a, b in zip(agent.target.parameters(), before))


def test_player_plays_the_evaluation_weights_with_its_own_rng_and_leaves_training_alone():
    agent = agent_for(eval_ema=0.5, noisy=True)
    agent.update(random_batch(np.random.default_rng(3), 8))
    state = agent.exploration_state()
    with agent.player(seed=7) as player:
        assert not agent.evaluation_net().training and agent.q.training
        with torch.no_grad():
            expected = agent.evaluation_net()(torch.as_tensor(OBS)).argmax(1).numpy()
        np.testing.assert_array_equal(player.act(OBS, 0.0), expected)
        random = player.act(OBS, 1.0)
    with agent.player(seed=7) as again:
        again.act(OBS, 0.0)
        np.testing.assert_array_equal(again.act(OBS, 1.0), random)      # the seed alone fixes its draws
    assert agent.evaluation_net().training and agent.exploration_state() == state


def test_exploration_seed_and_state():
    a, b = make_agent(CARTPOLE, (4,), 2, seed=5), make_agent(CARTPOLE, (4,), 2)
    assert a.exploration_state() != b.exploration_state()                # seed, not cfg.seed
    a.act(OBS, 1.0)
    b.load_exploration_state(a.exploration_state())
    np.testing.assert_array_equal(a.act(OBS, 1.0), b.act(OBS, 1.0))


def test_policy_weights_round_trip_into_every_network():
    learner, actor = agent_for(eval_ema=0.5), agent_for(eval_ema=0.5)
    learner.update(random_batch(np.random.default_rng(4), 8))
    weights = {k: torch.from_numpy(v.numpy().copy()) for k, v in learner.policy_state_dict().items()}
    actor.load_policy_weights(weights)
    for net in (actor.q, actor.target, actor.average):
        assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    assert actor.updates == 0
    np.testing.assert_array_equal(actor.greedy(OBS), learner.greedy(OBS))
    torch.testing.assert_close(actor.q_values(OBS), learner.q_values(OBS))


def test_weights_finite():
    agent = agent_for()
    assert agent.weights_finite()
    with torch.no_grad():
        next(agent.q.parameters())[0, 0] = float("inf")
    assert not agent.weights_finite()
