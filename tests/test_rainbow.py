"""Each Rainbow component pinned to a hand-computed case, and CartPole with all switches on or off."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from agents.build import make_agent
from agents.dqn import project_distribution
from rl.config import TrainConfig
from rl.networks import NoisyLinear, make_q_network, networks_fitting, random_shift
from rl.replay import PrioritizedReplayBuffer, ReplayBuffer, ReplaySpec, SumTree
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


# --- sum tree and prioritized replay ----------------------------------------------------------

CHI2_999 = {7: 24.32, 15: 37.70}  # chi-square critical values at p = 0.001


def test_sum_tree_samples_in_proportion_to_priority():
    tree = SumTree(8)
    priorities = np.array([1, 2, 3, 4, 5, 6, 7, 8], float)
    tree.set(np.arange(8), priorities)
    assert tree.total == 36
    rng = np.random.default_rng(0)
    draws = tree.find(rng.random(200_000) * tree.total)
    observed = np.bincount(draws, minlength=8)
    expected = 200_000 * priorities / priorities.sum()
    assert ((observed - expected) ** 2 / expected).sum() < CHI2_999[7]


def test_sum_tree_updates_keep_sums_consistent():
    tree = SumTree(13)  # not a power of two
    rng = np.random.default_rng(1)
    values = np.zeros(13)
    for _ in range(50):
        idx = rng.choice(13, size=4, replace=False)
        values[idx] = rng.random(4)
        tree.set(idx, values[idx])
        assert tree.total == pytest.approx(values.sum())
        np.testing.assert_allclose(tree.get(np.arange(13)), values)


def filled_prioritized(n_step=1, stack=1):
    spec = ReplaySpec(64, 2, (1,), np.float32, n_step=n_step)  # 32 slots per env: not wrapped
    buf = PrioritizedReplayBuffer(spec, seed=0, alpha=1.0, eps=0.0)
    for i in range(20):
        buf.add(np.full((2, 1), i, np.float32), np.zeros(2), np.ones(2), np.zeros(2, bool), np.zeros(2, bool),
                np.array([i == 0] * 2))
    return buf


def test_prioritized_sampling_follows_updated_priorities():
    buf = filled_prioritized()
    valid = np.flatnonzero(buf.tree.get(np.arange(64)) > 0)
    assert len(valid) == len(buf) == 2 * 19  # the newest slot has no next observation yet
    priorities = np.arange(1, len(valid) + 1, dtype=float)
    buf.update_priorities(valid, priorities)
    counts = np.zeros(64)
    for _ in range(400):
        counts += np.bincount(buf.sample(64, beta=1.0).index, minlength=64)
    observed = counts[valid]
    expected = counts.sum() * priorities / priorities.sum()
    # stratified sampling is tighter than multinomial, so the multinomial bound is conservative
    assert ((observed - expected) ** 2 / expected).sum() < 70.0  # df = 37 at p = 0.001
    assert counts[np.setdiff1d(np.arange(64), valid)].sum() == 0


def test_importance_weights_undo_the_sampling_bias():
    buf = filled_prioritized()
    valid = np.flatnonzero(buf.tree.get(np.arange(64)) > 0)
    buf.update_priorities(valid, np.where(np.arange(len(valid)) % 2 == 0, 1.0, 4.0))
    batch = buf.sample(256, beta=1.0)
    p = buf.tree.get(batch.index)
    # w ~ 1/P(i): the high-priority half gets a quarter of the weight
    low, high = batch.weight[p == 1.0], batch.weight[p == 4.0]
    assert low.max() == pytest.approx(1.0) and high.mean() == pytest.approx(0.25)


def test_new_transitions_enter_with_max_priority():
    buf = filled_prioritized()
    buf.update_priorities(np.array([0]), np.array([50.0]))
    buf.add(np.zeros((2, 1), np.float32), np.zeros(2), np.ones(2), np.zeros(2, bool), np.zeros(2, bool), np.zeros(2, bool))
    newest_ready = ((buf.cursor - 2) % buf.slots) * 2
    assert buf.tree.get(np.array([newest_ready]))[0] == pytest.approx(50.0)


# --- networks ---------------------------------------------------------------------------------

def test_noisy_layer_noise_resets_and_eval_uses_means():
    torch.manual_seed(0)
    layer = NoisyLinear(5, 3)
    x = torch.randn(4, 5)
    layer.reset_noise()
    a = layer(x)
    layer.reset_noise()
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ layer.weight_mu.T + layer.bias_mu)


def test_dueling_head_decomposes_into_value_and_mean_zero_advantage():
    net = make_q_network("mlp", (4,), 3, [16, 16], dueling=True)
    x = torch.randn(6, 4)
    q = net(x)
    h = net.encoder(x)
    torch.testing.assert_close(q.mean(1), net.value(h).squeeze(1), rtol=1e-5, atol=1e-5)


def test_distributional_q_is_the_expected_atom_value():
    net = make_q_network("mlp", (4,), 2, [16], atoms=11, v_min=0.0, v_max=10.0)
    x = torch.randn(3, 4)
    probs = net.dist(x).softmax(-1)
    torch.testing.assert_close(net(x), (probs * torch.linspace(0, 10, 11)).sum(-1))


@pytest.mark.parametrize("kind,shape,features", [
    ("nature_cnn", (4, 84, 84), 64 * 7 * 7), ("nature_cnn", (3, 64, 48), 64 * 4 * 2),
    ("impala_cnn", (4, 84, 84), 32 * 11 * 11), ("impala_cnn", (4, 10, 10), 32 * 2 * 2),
    ("minatar_cnn", (4, 10, 10), 16 * 8 * 8), ("minatar_cnn", (6, 10, 12), 16 * 8 * 10),
])
def test_image_encoders_size_their_output_from_the_real_image(kind, shape, features):
    net = make_q_network(kind, shape, 3, dueling=True)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    assert net.encoder.out_features == features and net.encoder(x).shape == (2, features)
    assert net(x).shape == (2, 3)


def test_minatar_cnn_is_young_and_tians_network():
    """One 3x3 convolution, 16 channels, stride 1, no padding, ReLU; a 128-unit hidden layer; the Q head. The
    encoder reads uint8 0/255 as 0/1, the paper's float of MinAtar's bool channels."""
    net = make_q_network("minatar_cnn", (4, 10, 10), 3)
    conv = net.encoder.net[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == \
        (4, 16, (3, 3), (1, 1), (0, 0))
    hidden, q = net.advantage[0], net.advantage[2]
    assert (hidden.in_features, hidden.out_features, q.in_features, q.out_features) == (16 * 8 * 8, 128, 128, 3)
    x = (torch.rand(2, 4, 10, 10) < 0.2).to(torch.uint8)
    torch.testing.assert_close(net.encoder(x * 255), torch.relu(conv(x.float())).flatten(1))


def test_the_networks_that_fit_an_image_are_named():
    assert networks_fitting((4, 10, 10)) == ["impala_cnn", "minatar_cnn"]
    assert networks_fitting((4, 36, 36)) == ["nature_cnn", "impala_cnn", "minatar_cnn"]   # Nature's smallest
    assert networks_fitting((4, 35, 84)) == ["impala_cnn", "minatar_cnn"]
    assert networks_fitting((1, 2, 2)) == ["impala_cnn"]
    with pytest.raises(ValueError, match="nature_cnn needs larger images than"):
        make_q_network("nature_cnn", (4, 10, 10), 3)


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


def test_random_shift_keeps_dtype_shape_and_shifts_within_pad():
    obs = torch.arange(2 * 4 * 12 * 12, dtype=torch.int64).reshape(2, 4, 12, 12).to(torch.uint8)
    out = random_shift(obs, pad=2, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == obs.shape
    for b in range(2):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                rows = (torch.arange(12) + dy).clamp(0, 11)
                cols = (torch.arange(12) + dx).clamp(0, 11)
                if torch.equal(out[b], obs[b][:, rows][:, :, cols]):
                    matches.append((dy, dx))
        assert matches  # every image is a replicate-padded shift of the input, same shift for all frames


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


@pytest.mark.parametrize("eval_ema", [0.0, 0.5])
def test_play_uses_the_average_where_the_run_keeps_one(eval_ema):
    from agents.evaluation import play

    cfg = dataclasses.replace(CARTPOLE, eval_ema=eval_ema)
    agent = make_agent(cfg, (4,), 2)
    calls = {"online": 0, "average": 0}
    agent.q.register_forward_hook(lambda *_: calls.__setitem__("online", calls["online"] + 1))
    if agent.average is not None:
        agent.average.register_forward_hook(lambda *_: calls.__setitem__("average", calls["average"] + 1))
    results = play(lambda env: agent, cfg, episodes=2, epsilon=0.0, seed=3, num_envs=1)
    played = "average" if eval_ema else "online"
    assert calls[played] > 0 and calls["online" if eval_ema else "average"] == 0
    assert results["weights"].startswith(played)
    assert agent.evaluation_net().training                                # play leaves the net as it found it


# --- CartPole learns with every switch on, and with every switch off -----------------------------

ALL_ON = dict(double=True, dueling=True, noisy=True, distributional=True, loss="cross_entropy", v_min=0.0,
              v_max=100.0, num_atoms=51, prioritized=True, n_step=3, target="polyak", tau=0.01, reset_every=8_000,
              epsilon_start=0.0, epsilon_end=0.0)
ALL_OFF = dict(double=False, dueling=False, noisy=False, distributional=False, prioritized=False, n_step=1,
               target="hard", loss="huber", reset_every=0)


@pytest.mark.slow
@pytest.mark.parametrize("switches", [ALL_ON, ALL_OFF], ids=["all-on", "all-off"])
def test_cartpole_learns_with_switches(switches, tmp_path):
    from agents.evaluation import evaluate
    from agents.runner import Trainer
    from envs import make_env
    from rl.config import from_dict, load_preset, validate_train

    cfg = from_dict(TrainConfig, load_preset("cartpole"))
    cfg = validate_train(dataclasses.replace(cfg, total_steps=30_000, learning_starts=1_000, log_every=5_000,
                                             checkpoint_every=10**9, save_replay=False, **switches))
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    assert trainer.train() == "finished"
    env = make_env(cfg, num_envs=5, seed=4242, evaluation=True)
    result = evaluate(trainer.agent.eval(), env, 10, epsilon=0.0)
    assert result["mean"] >= 195.0, result["returns"]  # CartPole's classic "solved" bar
