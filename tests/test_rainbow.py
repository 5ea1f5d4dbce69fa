"""Each Rainbow component of the agent pinned to a hand-computed case (n-step targets, C51, double DQN, resets, the
weight average), and CartPole with all switches on or off. The networks' own parts: test_networks.py; prioritized
replay: test_replay.py."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from agents.build import make_agent
from agents.dqn import project_distribution
from rl.config import TrainConfig
from rl.replay import ReplayBuffer, ReplaySpec
from tests.fakes import random_batch

CARTPOLE = TrainConfig(env="cartpole", network="mlp", hidden_sizes=[32, 32], num_envs=1)


# --- n-step returns -------------------------------------------------------------------------

def one_stream(n_step, rewards, terminated, truncated, gamma=0.5):
    """A single env writing scalar 'frames' 10, 11, 12, ...; returns the buffer."""
    spec = ReplaySpec(100, 1, (1,), np.float32, n_step=n_step, gamma=gamma)
    buf = ReplayBuffer(spec)
    first = True
    for i, (r, te, tr) in enumerate(zip(rewards, terminated, truncated)):
        buf.add(np.array([[10.0 + i]]), np.array([i % 2]), np.array([r]), np.array([te]), np.array([tr]),
                np.array([first]), final_obs=np.array([[99.0]]))
        first = te and i == 1 or tr  # a new game starts after the game over at step 1 or a truncation
    return buf


def gather(buf, t):
    return buf.gather(np.array([t]), np.array([0]), np.ones(1, np.float32))


def test_n_step_return_stops_at_termination():
    buf = one_stream(3, [1, 2, 4, 8, 16, 32], [False, True, False, False, False, False], [False] * 6)
    b = gather(buf, 0)
    assert b.reward[0] == pytest.approx(1 + 0.5 * 2) and b.discount[0] == 0.0
    b = gather(buf, 2)  # 4 + .5*8 + .25*16, bootstrap gamma^3 from frame 15
    assert b.reward[0] == pytest.approx(12.0) and b.discount[0] == pytest.approx(0.125)
    assert b.next_obs[0, 0] == 15.0


def test_n_step_return_bootstraps_from_final_obs_at_truncation():
    buf = one_stream(3, [1, 2, 4, 8, 16, 32], [False] * 6, [False, True, False, False, False, False])
    b = gather(buf, 0)
    assert b.reward[0] == pytest.approx(2.0) and b.discount[0] == pytest.approx(0.25)
    assert b.next_obs[0, 0] == 99.0  # the truncated episode's own last observation, not the next game's


# --- C51 projection -------------------------------------------------------------------------

@pytest.mark.parametrize("reward,discount,expected", [
    (0.5, 0.5, [0.0, 0.35, 0.65]),   # Tz = [0, .5, 1]: atom 0 lands on z_1, atom 1 splits, atom 2 on z_2
    (0.3, 0.0, [0.0, 0.7, 0.3]),     # terminal: all mass at r = 0.3
    (5.0, 0.9, [0.0, 0.0, 1.0]),     # clipped to v_max
    (-0.5, 1.0, [0.35, 0.4, 0.25]),  # Tz = [-1.5 -> -1, -.5, .5]
])
def test_categorical_projection_worked_examples(reward, discount, expected):
    support = torch.tensor([-1.0, 0.0, 1.0])
    p = torch.tensor([[0.2, 0.3, 0.5]])
    m = project_distribution(p, torch.tensor([reward]), torch.tensor([discount]), support)
    torch.testing.assert_close(m, torch.tensor([expected]))
    assert m.sum().item() == pytest.approx(1.0)


class Fixed(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, x):
        return self.values.expand(len(x), -1)


@pytest.mark.parametrize("double,expected", [(False, 10.0), (True, 2.0)])
def test_double_dqn_picks_with_online_and_values_with_target(double, expected):
    agent = make_agent(dataclasses.replace(CARTPOLE, double=double), (4,), 2)
    agent.q, agent.target = Fixed([[1.0, 5.0]]), Fixed([[10.0, 2.0]])
    y = agent.td_target(torch.tensor([1.0]), torch.tensor([0.5]), torch.zeros(1, 4))
    assert y.item() == pytest.approx(1.0 + 0.5 * expected)


def test_target_synced_every_update_is_the_same_as_no_target():
    """breakout-100k relies on it: hard sync after every update == target "none", update for update."""
    rng = np.random.default_rng(0)
    agents = []
    for target in ("hard", "none"):
        torch.manual_seed(0)
        agents.append(make_agent(dataclasses.replace(CARTPOLE, double=True, target=target, target_update=1), (4,), 2))
    for _ in range(20):
        batch = random_batch(rng, 8)
        hard, none = agents[0].update(batch), agents[1].update(batch)
        agents[0].sync_target()
        assert torch.equal(hard["td_error"], none["td_error"])
    for a, b in zip(agents[0].q.parameters(), agents[1].q.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("noisy", [False, True], ids=["linear", "noisy"])
def test_periodic_reset_redraws_the_head_only(noisy):
    """reset_every = 3: the third update re-initialises the dueling head (online and target), drops its
    optimizer moments and leaves the encoder exactly as an agent without resets has it."""
    rng = np.random.default_rng(0)
    agents = []
    for reset_every in (0, 3):
        torch.manual_seed(0)
        cfg = dataclasses.replace(CARTPOLE, dueling=True, noisy=noisy, target="hard", reset_every=reset_every)
        agents.append(make_agent(cfg, (4,), 2))
    plain, reset = agents
    batches = [random_batch(rng, 8) for _ in range(3)]
    for i, batch in enumerate(batches):
        if i == 2:
            before = {k: v.clone() for k, v in reset.q.state_dict().items()}
        for agent in agents:
            torch.manual_seed(i)                                          # the same noise draws for both
            agent.update(batch)
    encoder = [k for k in before if k.startswith("encoder.")]
    head = [k for k in before if k.startswith(("advantage.", "value.")) and not k.split(".")[-1].startswith("eps")]
    assert encoder and len(head) == (16 if noisy else 8)
    now, untouched = reset.q.state_dict(), plain.q.state_dict()
    assert all(torch.equal(now[k], untouched[k]) for k in encoder)        # the same step, no reset
    for k in head:
        assert not torch.equal(now[k], untouched[k]) and not torch.equal(now[k], before[k]), k
        if k.endswith(("weight", "weight_mu")):                          # back inside the initial bound
            assert now[k].abs().max() <= 1 / np.sqrt(now[k].shape[1]) + 1e-6, k
    target = reset.target.state_dict()
    assert all(torch.equal(target[k], now[k]) for k in head)
    assert not torch.equal(target[encoder[0]], now[encoder[0]])         # the target's encoder keeps its schedule
    head_params = {id(p) for stream in reset.q.head() for p in stream.parameters()}
    moments = {id(p): bool(reset.optimizer.state.get(p)) for p in reset.q.parameters()}
    assert not any(moments[i] for i in head_params) and all(v for i, v in moments.items() if i not in head_params)
    reset.update(batches[0])                                              # and it keeps learning
    assert all(torch.isfinite(p).all() for p in reset.q.parameters())


# --- the weight average that evaluations play -------------------------------------------------

def test_eval_average_is_polyak_of_online_and_leaves_learning_alone():
    """eval_ema = 0.25: after every update the average moves a quarter of the way to the online weights
    (checked against a hand-kept copy), and the online net learns exactly what it learns without one."""
    rng = np.random.default_rng(0)
    agents = []
    for eval_ema in (0.0, 0.25):
        torch.manual_seed(0)
        agents.append(make_agent(dataclasses.replace(CARTPOLE, target="hard", eval_ema=eval_ema), (4,), 2))
    plain, averaged = agents
    assert plain.average is None and plain.evaluation_net() is plain.q
    assert averaged.evaluation_net() is averaged.average
    expected = {k: v.clone() for k, v in averaged.q.state_dict().items()}
    for i in range(3):
        batch = random_batch(rng, 8)
        for agent in agents:
            torch.manual_seed(i)
            agent.update(batch)
        online = averaged.q.state_dict()
        expected = {k: expected[k] + 0.25 * (online[k] - expected[k]) for k in expected}
    assert all(torch.equal(averaged.q.state_dict()[k], v) for k, v in plain.q.state_dict().items())
    average = averaged.average.state_dict()
    assert all(torch.allclose(average[k], v, atol=1e-6) for k, v in expected.items())
    assert not torch.equal(average["encoder.net.0.weight"], online["encoder.net.0.weight"])
    restored = make_agent(averaged.cfg, (4,), 2)
    restored.load_state_dict(averaged.state_dict())                      # checkpoints carry the average
    assert all(torch.equal(restored.average.state_dict()[k], v) for k, v in average.items())


def test_head_reset_restarts_the_average_head_too():
    """A head reset gives the average the fresh head (averaging two unrelated heads is meaningless);
    the average's encoder keeps averaging."""
    torch.manual_seed(0)
    agent = make_agent(dataclasses.replace(CARTPOLE, target="hard", reset_every=2, eval_ema=0.25), (4,), 2)
    rng = np.random.default_rng(1)
    for _ in range(2):
        agent.update(random_batch(rng, 8))
    online, average = agent.q.state_dict(), agent.average.state_dict()
    head = [k for k in online if k.startswith("advantage.")]
    assert head and all(torch.equal(average[k], online[k]) for k in head)
    assert not torch.equal(average["encoder.net.0.weight"], online["encoder.net.0.weight"])


@pytest.mark.parametrize("eval_ema, online", [(0.0, False), (0.5, False), (0.5, True)])
def test_play_uses_the_average_where_the_run_keeps_one(eval_ema, online):
    """...unless asked for the online weights (eval_online's second play, rl-evaluate --online)."""
    from agents.evaluation import play

    cfg = dataclasses.replace(CARTPOLE, eval_ema=eval_ema)
    agent = make_agent(cfg, (4,), 2)
    calls = {"online": 0, "average": 0}
    agent.q.register_forward_hook(lambda *_: calls.__setitem__("online", calls["online"] + 1))
    if agent.average is not None:
        agent.average.register_forward_hook(lambda *_: calls.__setitem__("average", calls["average"] + 1))
    results = play(lambda env: agent, cfg, episodes=2, epsilon=0.0, seed=3, num_envs=1, online=online)
    played = "average" if eval_ema and not online else "online"
    assert calls[played] > 0 and calls["online" if played == "average" else "average"] == 0
    assert results["weights"].startswith(played)
    assert agent.evaluation_net().training                                # play leaves the net as it found it


# --- CartPole learns with every switch on, and with every switch off -----------------------------

ALL_ON = dict(double=True, dueling=True, noisy=True, distributional=True, loss="cross_entropy", v_min=0.0,
              v_max=100.0, num_atoms=51, prioritized=True, n_step=3, target="polyak", tau=0.01, reset_every=8_000,
              epsilon_start=0.0, epsilon_end=0.0)
ALL_OFF = dict(double=False, dueling=False, noisy=False, distributional=False, prioritized=False, n_step=1,
               target="hard", loss="huber", reset_every=0)


@pytest.mark.slow
@pytest.mark.parametrize("switches, bar", [(ALL_ON, 100.0), (ALL_OFF, 195.0)], ids=["all-on", "all-off"])
def test_cartpole_learns_with_switches(switches, bar, tmp_path):
    """Within 30k steps the best periodic evaluation reaches ``bar`` (uniformly random play scores about 22), and
    the last network still plays at least twice as well as random on games it never saw.

    With every switch on CartPole learns more slowly (head resets every 8k steps, noisy exploration) and some seeds
    plateau near half the solved line within this budget, hence its lower bar. A bar the test's one seed only just
    clears passes or fails by the CPU's rounding: 300 did, between an Intel and an AMD VM. Training stops at the
    first evaluation that reaches the bar (``target_return``), so the last network is one that has just reached
    it, and the test costs what the learning takes, not the whole budget."""
    from agents.evaluation import evaluate
    from agents.runner import Trainer
    from envs import make_env
    from rl.config import from_dict, load_preset, validate_train
    from rl.logging import read_evaluations

    cfg = from_dict(TrainConfig, load_preset("cartpole"))
    cfg = validate_train(dataclasses.replace(cfg, total_steps=30_000, learning_starts=1_000, log_every=5_000,
                                             eval_every=2_500, eval_episodes=10, target_return=bar,
                                             checkpoint_every=10**9, save_replay=False, **switches))
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    trainer.train()
    best = max(row["mean"] for row in read_evaluations(tmp_path))
    assert best >= bar
    env = make_env(cfg, num_envs=5, seed=4242, evaluation=True)
    random_play = evaluate(trainer.agent.eval(), env, 10, epsilon=1.0)
    result = evaluate(trainer.agent.eval(), env, 10, epsilon=0.0)
    assert result["mean"] >= 2 * random_play["mean"], (result["returns"], random_play["returns"])
