"""The real environments: Atari semantics (lives, full games, raw scores) and exact state restore."""
from __future__ import annotations

import numpy as np
import pytest

from envs import make_env
from envs.base import episode_seed
from rl.config import TrainConfig
from rl.replay import ReplayBuffer, ReplaySpec
from tests.fakes import drive

BREAKOUT = TrainConfig(env="breakout", num_envs=2)
CARTPOLE = TrainConfig(env="cartpole", network="mlp", num_envs=3)


play = drive


def test_breakout_replay_rebuilds_exactly_what_the_agent_saw():
    env = make_env(BREAKOUT)
    buf = ReplayBuffer(ReplaySpec(2 * 1000, 2, env.obs_shape, env.obs_dtype, stack=4, num_actions=4))
    log = play(env, 700, replay=buf)
    lives_lost = sum(int((o.terminated & ~o.episode_end).sum()) for _, _, o in log)
    games = sum(len(o.finished) for _, _, o in log)
    assert lives_lost >= 4 and games >= 2  # both kinds of boundary happened
    t = np.repeat(np.arange(699), 2)
    e = np.tile(np.arange(2), 699)
    stacks = buf.stacks(t, e)
    for i in range(len(t)):
        np.testing.assert_array_equal(stacks[i], log[t[i]][0][e[i]])
    batch = buf.gather(t, e, np.ones(len(t), np.float32))
    for i in range(len(t)):
        obs, a, out = log[t[i]]
        assert batch.action[i] == a[e[i]]
        assert batch.reward[i] == out.reward[e[i]]
        assert (batch.discount[i] == 0) == bool(out.terminated[e[i]])
        if not out.terminated[e[i]]:
            np.testing.assert_array_equal(batch.next_obs[i], out.final_obs[e[i]])


def test_breakout_games_are_whole_and_scores_raw():
    env = make_env(BREAKOUT)
    log = play(env, 800)
    finished = [f for _, _, o in log for f in o.finished]
    assert finished
    # a full game of random Breakout lasts five lives: well over 100 agent steps
    assert min(length for _, _, length in finished) > 100
    rewards = np.concatenate([o.reward for _, _, o in log])
    assert set(np.unique(rewards)) <= {0, 1, 4, 7}  # Breakout's raw brick values, never clipped
    # a new game starts from a zero-padded stack
    for obs, _, out in log:
        for e in np.flatnonzero(out.episode_end):
            assert (out.obs[e, :3] == 0).all() and out.obs[e, 3].any()


def test_evaluation_env_has_no_life_loss_terminals():
    env = make_env(BREAKOUT, evaluation=True)
    log = play(env, 600)
    for _, _, out in log:
        np.testing.assert_array_equal(out.terminated, out.episode_end & ~out.truncated)


@pytest.mark.parametrize("cfg,steps", [(BREAKOUT, 300), (CARTPOLE, 120)])
def test_state_restore_replays_to_the_same_state(cfg, steps):
    env = make_env(cfg)
    log = play(env, steps, seed=4)
    state = env.state_dict()
    fresh = make_env(cfg)
    obs = fresh.load_state_dict(state)
    np.testing.assert_array_equal(obs, log[-1][2].obs)
    rng = np.random.default_rng(9)
    for _ in range(150):
        a = rng.integers(0, env.num_actions, env.num_envs)
        x, y = env.step(a), fresh.step(a)
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.reward, y.reward)
        np.testing.assert_array_equal(x.terminated, y.terminated)
        assert x.finished == y.finished


def _standard_pipeline(noop_max: int):
    """gymnasium's own Atari preprocessing, as Nature, Dopamine and SB3 describe it: frame skip 1
    underneath, 4 max-pooled frames per step, 84x84 grayscale, a zero-padded stack of 4, whole games."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")


def test_breakout_observations_equal_gymnasiums_standard_pipeline():
    """Same seed, same actions: every observation, reward, lost life and game end is identical, over
    two whole games. No-op starts are off on both sides (each library draws their count from its own RNG)."""
    ours = make_env(TrainConfig(env="breakout", num_envs=1, noop_max=0))
    theirs = _standard_pipeline(noop_max=0)
    obs = ours.reset()
    ref, info = theirs.reset(seed=episode_seed(ours.seed, 0, 0))
    np.testing.assert_array_equal(obs[0], ref)
    lives, rng, games, lives_lost, steps = info["lives"], np.random.default_rng(0), 0, 0, 0
    while games < 2:
        a = int(rng.integers(ours.num_actions))
        out = ours.step(np.array([a]))
        ref, reward, term, trunc, info = theirs.step(a)
        steps += 1
        assert out.reward[0] == reward
        assert bool(out.episode_end[0]) == (term or trunc)
        lost = info["lives"] < lives
        lives = info["lives"]
        assert bool(out.terminated[0]) == (lost or term)   # a lost life is terminal for the learner
        lives_lost += int(lost and not term)
        if out.episode_end[0]:
            np.testing.assert_array_equal(out.final_obs[0], ref)
            games += 1
            ref, info = theirs.reset(seed=episode_seed(ours.seed, 0, games))
            lives = info["lives"]
        np.testing.assert_array_equal(out.obs[0], ref, err_msg=f"step {steps}")
    assert lives_lost >= 8 and steps > 200
