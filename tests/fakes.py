"""A fake stacked vector env with ale-py's semantics, for replay tests without a ROM."""
from __future__ import annotations

import numpy as np

from envs.base import VecEnv


class FakeStackedEnv(VecEnv):
    """Frames are unique counters; stacks pad a new game with zeros and run on across lost lives.

    ``p_life``: chance a step loses a life (terminated, game goes on); ``p_over``: game over;
    ``p_trunc``: time-limit truncation.
    """

    def __init__(self, num_envs=3, seed=0, stack=4, frame_shape=(2, 3), p_life=0.05, p_over=0.03, p_trunc=0.03):
        super().__init__(num_envs, seed)
        self.stack, self.frame_shape = stack, frame_shape
        self.obs_shape = (stack, *frame_shape)
        self.obs_dtype = np.dtype(np.int32)
        self.num_actions = 4
        self.protocol = {}
        self.p = (p_life, p_over, p_trunc)
        self.rng = np.random.default_rng(seed)
        self.counter = 0
        self.cur = np.zeros((num_envs, *self.obs_shape), np.int32)

    def _frame(self):
        self.counter += 1
        return np.full(self.frame_shape, self.counter, np.int32)

    def _reset(self, seeds, mask):
        envs = range(self.num_envs) if mask is None else np.flatnonzero(mask)
        for e in envs:
            self.cur[e] = 0
            self.cur[e, -1] = self._frame()
        return self.cur.copy()

    def _send(self, actions):
        self.actions = actions

    def _advance(self, e):
        self.cur[e] = np.concatenate([self.cur[e, 1:], self._frame()[None]], 0)

    def _recv(self):
        n = self.num_envs
        u = self.rng.random((n, 3))
        life, over, trunc = u[:, 0] < self.p[0], u[:, 1] < self.p[1], u[:, 2] < self.p[2]
        trunc &= ~over
        reward = self.rng.integers(-2, 5, n).astype(np.float32)
        for e in range(n):
            self._advance(e)
        final = self.cur.copy()
        episode_end = over | trunc
        # SAME_STEP autoreset, as the real backends do
        obs = self._reset(None, episode_end) if episode_end.any() else self.cur.copy()
        return obs, reward, life | over, trunc, episode_end, final


class FakeFlatEnv(FakeStackedEnv):
    """Vector observations (no stack), like CartPole."""

    def __init__(self, **kw):
        super().__init__(stack=1, frame_shape=(3,), **kw)
        self.obs_shape = (3,)
        self.cur = np.zeros((self.num_envs, 3), np.int32)

    def _reset(self, seeds, mask):
        envs = range(self.num_envs) if mask is None else np.flatnonzero(mask)
        for e in envs:
            self.cur[e] = self._frame()
        return self.cur.copy()

    def _advance(self, e):
        self.cur[e] = self._frame()


def drive(env, steps, seed=0, replay=None):
    """Random actions for ``steps`` vector steps, each stored in ``replay`` if given, as the trainer stores
    them. Returns [(obs acted on, actions, EnvStep)] per step."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    log = []
    for _ in range(steps):
        a = rng.integers(0, env.num_actions, env.num_envs)
        out = env.step(a)
        if replay is not None:
            replay.add_step(obs, a, out.reward, out)
        log.append((obs, a, out))
        obs = out.obs
    return log


def random_batch(rng: np.random.Generator, size: int, obs_dim: int = 4, num_actions: int = 2):
    """A replay-shaped batch of random vector observations (CartPole-sized by default), all weights 1."""
    from rl.replay import Batch
    return Batch(rng.normal(size=(size, obs_dim)).astype(np.float32), rng.integers(0, num_actions, size),
                 rng.normal(size=size).astype(np.float32), np.full(size, 0.99, np.float32),
                 rng.normal(size=(size, obs_dim)).astype(np.float32), np.arange(size), np.ones(size, np.float32))


# --- a user's package of gymnasium envs, for gym:ID and gym_packages -------------------------------------------

GYM_PACKAGE = "rl_test_gym_envs"   # conftest's gym_package fixture writes GYM_PACKAGE_SOURCE under this name
GYM_PACKAGE_SOURCE = '''\
"""Gymnasium envs for rl-dqn's tests; importing this module registers them, as gym_packages does."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Corridor(gym.Env):
    """Cells 0..length-1, the position a Discrete observation; action 1 steps right, 0 left, and a step slips
    the other way with probability 0.1. Reaching the last cell scores 1 and ends the episode; random play often
    runs into the time limit first, a good policy gets there in about length steps. ``action_start`` numbers
    the two actions from there (gymnasium's Discrete(n, start)); an action outside the space is refused."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, length=8, render_mode=None, action_start=0):
        self.length, self.render_mode = length, render_mode
        self.observation_space = spaces.Discrete(length)
        self.action_space = spaces.Discrete(2, start=action_start)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(0, 2))
        return self.pos, {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action} is not in {self.action_space}")
        move = 1 if action == self.action_space.start + 1 else -1
        if self.np_random.random() < 0.1:
            move = -move
        self.pos = min(max(self.pos + move, 0), self.length - 1)
        done = self.pos == self.length - 1
        return self.pos, float(done), done, False, {}

    def render(self):
        frame = np.zeros((8, 8 * self.length, 3), np.uint8)
        frame[:, 8 * self.pos:8 * self.pos + 8] = 255
        return frame


class Catch(gym.Env):
    """A ball falls down a size x size grid from a random column; the paddle on the bottom row moves left, stays
    or moves right, and scores 1 per ball caught; a miss ends the episode. Observations are bool [H, W, 2]
    (ball, paddle), channels last. As in MinAtar, actions are sticky (p 0.25) and the last action outlives a
    reset, so an env reused for the next episode would not replay the same game from the same seed."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size=7, render_mode=None):
        self.size, self.render_mode = size, render_mode
        self.observation_space = spaces.Box(0, 1, (size, size, 2), bool)
        self.action_space = spaces.Discrete(3)
        self.last_action = 1

    def _obs(self):
        obs = np.zeros((self.size, self.size, 2), bool)
        obs[self.ball_row, self.ball_col, 0] = True
        obs[self.size - 1, self.paddle, 1] = True
        return obs

    def _new_ball(self):
        self.ball_row, self.ball_col = 0, int(self.np_random.integers(0, self.size))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.paddle = self.size // 2
        self._new_ball()
        return self._obs(), {}

    def step(self, action):
        if self.np_random.random() < 0.25:
            action = self.last_action
        self.last_action = int(action)
        self.paddle = min(max(self.paddle + self.last_action - 1, 0), self.size - 1)
        self.ball_row += 1
        reward, terminated = 0.0, False
        if self.ball_row == self.size - 1:
            if self.ball_col == self.paddle:
                reward = 1.0
                self._new_ball()
            else:
                terminated = True
        return self._obs(), reward, terminated, False, {}

    def render(self):
        return self._obs().astype(np.float32)[..., [0, 1, 0]]     # floats in [0, 1], as MinAtar renders


class DictObs(gym.Env):
    """A Dict observation, which DQN here does not take."""

    observation_space = spaces.Dict({"position": spaces.Discrete(3)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"position": 0}, {}

    def step(self, action):
        return {"position": 0}, 0.0, True, False, {}


gym.register("RlTest/Corridor-v0", entry_point=f"{__name__}:Corridor", max_episode_steps=50)
gym.register("RlTest/OffsetCorridor-v0", entry_point=f"{__name__}:Corridor", max_episode_steps=50,
             kwargs={"action_start": -1})
gym.register("RlTest/Catch-v0", entry_point=f"{__name__}:Catch", max_episode_steps=200)
gym.register("RlTest/DictObs-v0", entry_point=f"{__name__}:DictObs")
'''
