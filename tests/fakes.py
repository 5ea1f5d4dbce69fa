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
