"""Replay against a slow, obviously-correct reference built from what the env actually returned."""
from __future__ import annotations

import numpy as np
import pytest

from rl.replay import FIRST, TERMINATED, TRUNCATED, PrioritizedReplayBuffer, ReplayBuffer, ReplaySpec, SumTree
from tests.fakes import FakeFlatEnv, FakeStackedEnv, drive


def fill(env, buf, steps, seed=0):
    """Drive ``env`` with random actions into ``buf``; return the reference list of transitions
    ref[g][e] = (obs, action, reward, terminated, truncated, next_obs)."""
    return [[(obs[e].copy(), a[e], out.reward[e], out.terminated[e], out.truncated[e] and not out.terminated[e],
              out.final_obs[e].copy()) for e in range(env.num_envs)]
            for obs, a, out in drive(env, steps, seed, replay=buf)]


def reference_target(ref, g, e, n, gamma):
    """n-step return, discount and bootstrap obs for the transition at vector step g of env e."""
    ret, disc = 0.0, 1.0
    for i in range(n):
        obs, a, r, term, trunc, nxt = ref[g + i][e]
        ret += disc * r
        disc *= gamma
        if term:
            return ret, 0.0, None
        if trunc or i == n - 1:
            return ret, disc, nxt


def global_step(buf, adds, t):
    newest = (buf.cursor - 1) % buf.slots
    return (adds - 1) - ((newest - t) % buf.slots)


@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("capacity,steps", [(60, 200), (600, 150)])  # wrapped many times / not yet full
@pytest.mark.parametrize("flat", [False, True])
def test_samples_match_reference(n_step, capacity, steps, flat):
    env = FakeFlatEnv(num_envs=3) if flat else FakeStackedEnv(num_envs=3)
    spec = ReplaySpec(capacity, 3, env.obs_shape, env.obs_dtype, stack=1 if flat else 4, n_step=n_step, gamma=0.9)
    buf = ReplayBuffer(spec, seed=1)
    ref = fill(env, buf, steps)
    batch = buf.sample(512)
    assert batch.obs.shape == (512, *env.obs_shape) and batch.obs.dtype == env.obs_dtype
    assert batch.next_obs.shape == batch.obs.shape
    assert batch.action.dtype == np.int64 and batch.reward.dtype == np.float32 and batch.discount.dtype == np.float32
    checked_trunc = checked_term = 0
    for b in range(512):
        t, e = divmod(int(batch.index[b]), 3)
        g = global_step(buf, steps, t)
        obs, a, *_ = ref[g][e]
        np.testing.assert_array_equal(batch.obs[b], obs)  # the stack the agent saw when it acted
        assert batch.action[b] == a
        ret, disc, nxt = reference_target(ref, g, e, n_step, 0.9)
        assert batch.reward[b] == pytest.approx(ret, rel=1e-5)
        assert batch.discount[b] == pytest.approx(disc, rel=1e-6)
        if disc == 0.0:
            checked_term += 1
        else:
            np.testing.assert_array_equal(batch.next_obs[b], nxt)
            checked_trunc += any(ref[g + i][e][4] for i in range(n_step))
    assert checked_term > 0 and checked_trunc > 0  # both kinds of episode end were exercised


def test_stacks_start_with_each_game_and_run_on_across_lost_lives():
    """At high event rates: a sampled stack is the one the env returned (zero-padded at a game's start, never
    holding the last game's frames; unbroken across a lost life), and exactly the life-ending steps stop the
    bootstrap."""
    env = FakeStackedEnv(num_envs=2, p_life=0.2, p_over=0.2, p_trunc=0.0)
    buf = ReplayBuffer(ReplaySpec(400, 2, env.obs_shape, env.obs_dtype, stack=4), seed=0)
    ref = fill(env, buf, 150)
    batch = buf.sample(2000)
    game_starts = across_a_lost_life = 0
    for b in range(2000):
        t, e = divmod(int(batch.index[b]), 2)
        g = global_step(buf, 150, t)
        obs, _, _, terminated, _, _ = ref[g][e]
        np.testing.assert_array_equal(batch.obs[b], obs)
        assert (batch.discount[b] == 0) == terminated
        game_starts += bool((obs[0] == 0).all())
        across_a_lost_life += bool((obs != 0).all() and any(ref[g - k][e][3] for k in range(1, 4) if g >= k))
    assert game_starts > 100 and across_a_lost_life > 100


def test_never_samples_unwritten_or_overwritten_slots():
    env = FakeStackedEnv(num_envs=2)
    buf = ReplayBuffer(ReplaySpec(20, 2, env.obs_shape, env.obs_dtype, stack=4, n_step=2), seed=0)
    with pytest.raises(ValueError, match="no complete transition"):
        buf.sample(1)
    fill(env, buf, 3)
    assert len(buf) == 2 * (3 - 2)
    fill(env, buf, 57)
    t = buf.sample(5000).index // 2
    newest = (buf.cursor - 1) % buf.slots
    ages_from_newest = (newest - t) % buf.slots
    assert ages_from_newest.min() == 2  # the newest n slots have no n-step future yet
    assert ages_from_newest.max() == buf.slots - 4  # the oldest stack-1 slots have lost their history


def test_uniform_over_envs_and_slots():
    env = FakeFlatEnv(num_envs=4)
    buf = ReplayBuffer(ReplaySpec(40, 4, env.obs_shape, env.obs_dtype), seed=0)
    fill(env, buf, 50)
    idx = buf.sample(40_000).index
    counts = np.bincount(idx, minlength=40)
    valid = counts[counts > 0]
    assert len(valid) == len(buf)
    assert valid.std() / valid.mean() < 0.1


def test_breakout_replay_stores_each_frame_once():
    spec = ReplaySpec(1_000_000, 8, (4, 84, 84), np.uint8, stack=4, num_actions=4)
    per = ReplayBuffer.bytes_per_transition(spec)
    assert per == 84 * 84 + 1 + 4 + 1                      # each frame once, not 4 stacked frames twice
    small = ReplayBuffer(ReplaySpec(800, 8, (4, 84, 84), np.uint8, stack=4, num_actions=4))
    actual = small.frames.nbytes + small.actions.nbytes + small.rewards.nbytes + small.flags.nbytes
    assert actual == per * 800  # the arithmetic is what is allocated


def test_state_dict_round_trip_samples_identically():
    env = FakeStackedEnv(num_envs=2)
    spec = ReplaySpec(50, 2, env.obs_shape, env.obs_dtype, stack=4, n_step=3)
    a = ReplayBuffer(spec, seed=3)
    fill(env, a, 70)
    b = ReplayBuffer(spec, seed=99)
    b.load_state_dict(a.state_dict())
    x, y = a.sample(64), b.sample(64)
    for u, v in zip(x, y):
        np.testing.assert_array_equal(u, v)


# --- the writing interface and the flat ids the Ape-X replay server works with ------------------

def test_add_step_marks_the_step_after_each_episode_end_as_first():
    env = FakeStackedEnv(num_envs=3, p_life=0.2, p_over=0.1, p_trunc=0.1)
    buf = ReplayBuffer(ReplaySpec(600, 3, env.obs_shape, env.obs_dtype, stack=4), seed=0)
    log = drive(env, 100, replay=buf)
    first = (buf.flags[:100] & FIRST) != 0
    assert first[0].all()
    np.testing.assert_array_equal(first[1:], [out.episode_end for _, _, out in log[:-1]])
    assert buf.episode_starts() == log[-1][2].episode_end.tolist()
    buf.restart_episodes([True, False, True])
    buf.add_step(*log[0][:2], log[0][2].reward, log[0][2])
    assert ((buf.flags[100] & FIRST) != 0).tolist() == [True, False, True]


@pytest.mark.parametrize("stack", [1, 4])
def test_cut_streams_ends_open_streams_where_they_stand(stack):
    """A restarted writer's streams: every stream still open becomes a time-limit cut that bootstraps from
    the tail it reported; a stream that had just ended keeps its flags; the next step begins an episode."""
    env = FakeStackedEnv(num_envs=3, stack=stack, p_life=0.0, p_over=0.0, p_trunc=0.0) if stack > 1 else \
        FakeFlatEnv(num_envs=3, p_life=0.0, p_over=0.0, p_trunc=0.0)
    spec = ReplaySpec(60, 3, env.obs_shape, env.obs_dtype, stack=stack, n_step=3, gamma=0.5)
    buf = ReplayBuffer(spec, seed=0)
    empty = ReplayBuffer(spec, seed=0)
    empty.cut_streams(np.zeros((3, *env.obs_shape), env.obs_dtype))          # nothing written: nothing to cut
    assert not empty.flags.any()
    log = drive(env, 12, replay=buf)
    t = (buf.cursor - 1) % buf.slots
    buf.flags[t, 1] |= TERMINATED                                           # stream 1 had just ended
    tail = log[-1][2].obs
    buf.cut_streams(tail)
    assert ((buf.flags[t] & TRUNCATED) != 0).tolist() == [True, False, True]
    assert buf.episode_starts() == [True, True, True]
    for e in (0, 2):                                                         # a 1-step return from the tail
        batch = buf.transitions(np.array([t * 3 + e]))
        assert batch.discount[0] == pytest.approx(0.5)
        np.testing.assert_array_equal(batch.next_obs[0], tail[e])
    batch = buf.transitions(np.array([(t - 1) % buf.slots * 3]))          # 2 steps, then the cut
    assert batch.discount[0] == pytest.approx(0.25)


@pytest.mark.parametrize("prioritized", [False, True])
def test_ready_ids_are_the_newest_steps_with_their_n_step_future(prioritized):
    env = FakeFlatEnv(num_envs=2)
    spec = ReplaySpec(2 * 10, 2, env.obs_shape, env.obs_dtype, n_step=3)
    buf = PrioritizedReplayBuffer(spec, seed=0) if prioritized else ReplayBuffer(spec, seed=0)
    drive(env, 23, replay=buf)                                               # wrapped: 23 steps in 10 slots
    expected = [s % 10 * 2 + e for s in (17, 18, 19) for e in (0, 1)]        # step 19: the newest with 3 after it
    assert buf.ready_ids(3).tolist() == expected
    if prioritized:                                                          # exactly those can be sampled
        assert (buf.mass_at(buf.ready_ids(3)) > 0).all()
        assert (buf.mass_at(np.array([0, 1, 2, 3, 4, 5])) == 0).all()      # steps 20-22: no future yet


def test_overwritten_marks_the_slots_of_the_newest_writes():
    env = FakeFlatEnv(num_envs=2)
    buf = ReplayBuffer(ReplaySpec(2 * 5, 2, env.obs_shape, env.obs_dtype), seed=0)
    drive(env, 7, replay=buf)                                                # cursor at slot 2
    ids = np.arange(buf.id_count())
    assert buf.id_count() == 10 and not buf.overwritten(ids, 0).any()
    assert (ids[buf.overwritten(ids, 2)] // 2).tolist() == [0, 0, 1, 1]      # slots 0 and 1, the newest two
    assert buf.overwritten(ids, 5).all() and buf.overwritten(ids, 9).all()


def test_mass_weighs_a_buffer_by_what_sampling_draws_from_it():
    env = FakeFlatEnv(num_envs=2)
    spec = ReplaySpec(2 * 16, 2, env.obs_shape, env.obs_dtype, n_step=2)
    uniform, prioritized = ReplayBuffer(spec), PrioritizedReplayBuffer(spec, alpha=1.0)
    for buf in (uniform, prioritized):
        drive(env, 9, replay=buf)
    assert uniform.mass() == len(uniform) == 2 * 7
    prioritized.update_priorities(prioritized.ready_ids(2), np.array([3.0, 4.0, 5.0, 6.0]))
    assert prioritized.mass() == pytest.approx(prioritized.mass_at(np.arange(prioritized.id_count())).sum())


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
