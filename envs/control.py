"""Small control tasks through gymnasium's vector envs, for fast checks."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from envs.base import VecEnv

CONTROL_TASKS = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1", "mountain_car": "MountainCar-v0"}


class ControlEnv(VecEnv):
    def __init__(self, task: str, num_envs: int, seed: int):
        super().__init__(num_envs, seed)
        self.env = gym.make_vec(CONTROL_TASKS[task], num_envs=num_envs, vectorization_mode="sync",
                                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
        self.obs_shape = tuple(self.env.single_observation_space.shape)
        self.obs_dtype = np.dtype(np.float32)
        self.num_actions = int(self.env.single_action_space.n)
        self.protocol = {"task": CONTROL_TASKS[task]}
        self._actions = None

    def _reset(self, seeds, mask):
        if mask is None:
            return self.env.reset(seed=[int(s) for s in seeds])[0].astype(np.float32)
        full = [None] * self.num_envs  # gymnasium wants one seed slot per env; unmasked ones are ignored
        for e, s in zip(np.flatnonzero(mask), seeds):
            full[e] = int(s)
        return self.env.reset(seed=full, options={"reset_mask": mask})[0].astype(np.float32)

    def _send(self, actions):
        self._actions = actions

    def _recv(self):
        obs, reward, term, trunc, info = self.env.step(self._actions)
        episode_end = term | trunc
        final_obs = obs
        if episode_end.any():
            final_obs = obs.copy()
            final_obs[episode_end] = np.stack(info["final_obs"][episode_end])
        return obs.astype(np.float32), reward.astype(np.float32), term, trunc & ~term, episode_end, final_obs

    def close(self):
        self.env.close()
