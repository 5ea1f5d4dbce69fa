"""The vector-env contract the agent and replay rely on.

Every backend runs in SAME_STEP autoreset mode and this wrapper re-seeds each new episode from
``(seed, env index, episode number)``. That makes an env's state a pure function of its episode
seed and the actions taken since, which is what :meth:`VecEnv.state_dict` saves and
:meth:`VecEnv.load_state_dict` replays for an exact resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EnvStep:
    """One vector step. Rows are envs."""

    obs: np.ndarray          # [N, *obs_shape], what to act on next (a new episode's first obs where one ended)
    reward: np.ndarray       # float32[N], raw game reward
    terminated: np.ndarray   # bool[N], no bootstrapping past this step (game over, or a lost life when training)
    truncated: np.ndarray    # bool[N], time limit: bootstrap from final_obs
    episode_end: np.ndarray  # bool[N], the game ended (terminated for good or truncated)
    final_obs: np.ndarray    # [N, *obs_shape], last obs of envs whose episode ended, else == obs
    finished: list[tuple[int, float, int]] = field(default_factory=list)  # (env, raw return, length) per ended game


def episode_seed(seed: int, env: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, env, episode]).generate_state(1)[0] & 0x7FFFFFFF)


class VecEnv:
    """Base class: backends implement ``_reset(seeds, mask)``, ``_send(actions)``, ``_recv()``."""

    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    protocol: dict[str, Any]
    frame_stack: int = 1      # frames stacked in obs_shape[0], each stored once in the replay (Atari); 1: none

    def __init__(self, num_envs: int, seed: int):
        self.num_envs = num_envs
        self.seed = seed
        self.episode = np.zeros(num_envs, np.int64)       # episodes begun per env
        self.ep_return = np.zeros(num_envs, np.float64)
        self.ep_length = np.zeros(num_envs, np.int64)
        self.actions_since_reset: list[list[int]] = [[] for _ in range(num_envs)]
        self._pending: np.ndarray | None = None

    # backend hooks ---------------------------------------------------------------------------
    def _reset(self, seeds: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _send(self, actions: np.ndarray) -> None:
        raise NotImplementedError

    def _recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """obs, reward, terminated (learner's), truncated, episode_end, final_obs."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # contract --------------------------------------------------------------------------------
    def _seeds(self, envs) -> np.ndarray:
        return np.array([episode_seed(self.seed, int(e), int(self.episode[e])) for e in envs], np.int64)

    def reset(self) -> np.ndarray:
        self.episode[:] = 0
        self.ep_return[:] = 0
        self.ep_length[:] = 0
        self.actions_since_reset = [[] for _ in range(self.num_envs)]
        return self._reset(self._seeds(range(self.num_envs)), None)

    def send(self, actions: np.ndarray) -> None:
        """Start stepping all envs; the emulators run while the caller does other work."""
        self._pending = np.asarray(actions)
        self._send(self._pending)

    def recv(self) -> EnvStep:
        obs, reward, terminated, truncated, episode_end, final_obs = self._recv()
        self.ep_return += reward
        self.ep_length += 1
        for e, a in enumerate(self._pending):
            self.actions_since_reset[e].append(int(a))
        finished = []
        if episode_end.any():
            ended = np.flatnonzero(episode_end)
            finished = [(int(e), float(self.ep_return[e]), int(self.ep_length[e])) for e in ended]
            self.ep_return[ended] = 0
            self.ep_length[ended] = 0
            self.episode[ended] += 1
            for e in ended:
                self.actions_since_reset[e] = []
            mask = np.zeros(self.num_envs, bool)
            mask[ended] = True
            obs = self._reset(self._seeds(ended), mask)
        return EnvStep(obs, reward.astype(np.float32), terminated, truncated, episode_end, final_obs, finished)

    def step(self, actions: np.ndarray) -> EnvStep:
        self.send(actions)
        return self.recv()

    # exact resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "episode": self.episode.tolist(),
            "ep_return": self.ep_return.tolist(),
            "ep_length": self.ep_length.tolist(),
            "actions_since_reset": [list(a) for a in self.actions_since_reset],
        }

    def load_state_dict(self, state: dict[str, Any]) -> np.ndarray:
        """Rebuild every env's state by replaying its actions since its episode's seeded reset.

        Envs step in lockstep, so an env with fewer actions to replay first takes filler no-ops and is
        reset at the moment that leaves exactly its own actions to go. Returns the current obs.
        """
        self.seed = int(state["seed"])
        self.episode = np.array(state["episode"], np.int64)
        history = [list(a) for a in state["actions_since_reset"]]
        longest = max(len(h) for h in history)
        obs = self._reset(self._seeds(range(self.num_envs)), None)
        for k in range(longest + 1):
            starting = [e for e, h in enumerate(history) if longest - len(h) == k]
            if starting:
                mask = np.zeros(self.num_envs, bool)
                mask[starting] = True
                obs = self._reset(self._seeds(starting), mask)
            if k == longest:
                break
            actions = np.array([h[k - (longest - len(h))] if k >= longest - len(h) else 0
                                for h in history], np.int64)
            self._send(actions)
            obs = self._recv()[0]
        self.actions_since_reset = history
        self.ep_return = np.array(state["ep_return"], np.float64)
        self.ep_length = np.array(state["ep_length"], np.int64)
        return obs
