"""What an Ape-X actor sends the replay server: a Chunk of consecutive vector steps, built step by step by
a ChunkRecorder and written into the actor's replay buffer by :meth:`Chunk.write`."""
from __future__ import annotations

import dataclasses

import numpy as np

from rl.replay import ReplayBuffer, StepWriter


def compact(obs: np.ndarray, stack: int) -> np.ndarray:
    """What the replay stores of an observation: the newest frame of a stack (kept as a stack of one, which
    ReplayBuffer.add reads as obs[:, -1]), or the whole vector. Cuts Atari traffic by the stack size."""
    return obs[:, -1:] if stack > 1 else obs


@dataclasses.dataclass
class Chunk:
    """``T`` consecutive vector steps of one actor's ``E`` envs, in ReplayBuffer.add's terms."""

    obs: np.ndarray          # [T, E, *compact obs], what the agent acted on
    action: np.ndarray       # [T, E]
    reward: np.ndarray       # float32[T, E], clipped if reward_clip (as the learner sees it)
    terminated: np.ndarray   # bool[T, E]
    truncated: np.ndarray    # bool[T, E]
    first: np.ndarray        # bool[T, E]
    finals: dict[int, tuple[np.ndarray, np.ndarray]]  # step k -> (env rows, compact final obs) of truncations
    tail: np.ndarray         # [E, *compact obs], the observation after the last step
    priority: np.ndarray | None = None  # float[R, E]: initial priorities of the R newest steps with an n-step future

    def write(self, buffer: ReplayBuffer) -> None:
        """Store these steps in ``buffer``, step by step as the actor took them, and set the initial priorities
        on the steps they belong to (the R newest with an n-step future)."""
        for k in range(len(self.obs)):
            final = None
            if k in self.finals:
                rows, frames = self.finals[k]
                final = np.zeros_like(self.obs[k])
                final[rows] = frames
            buffer.add(self.obs[k], self.action[k], self.reward[k], self.terminated[k], self.truncated[k],
                       self.first[k], final)
        if self.priority is not None:
            buffer.update_priorities(buffer.ready_ids(len(self.priority)), self.priority.ravel())


class ChunkRecorder(StepWriter):
    """An actor's steps, taken with ``add_step`` as the replay takes them, gathered into one Chunk after another;
    the first-of-episode flags carry over from chunk to chunk. ``local``, where given, gets every step too (the
    actor's recent steps, from which it computes initial priorities)."""

    def __init__(self, num_envs: int, stack: int, local: ReplayBuffer | None = None):
        super().__init__(num_envs)
        self.stack, self.local = stack, local

    def begin(self, steps: int, obs: np.ndarray) -> None:
        """Start a chunk of ``steps`` vector steps; ``obs`` [E, *obs_shape] is what the agent acts on first."""
        shown, E = compact(obs, self.stack), len(obs)
        self.k = 0
        self.obs = np.empty((steps, *shown.shape), shown.dtype)
        self.action = np.empty((steps, E), np.int64)
        self.reward = np.empty((steps, E), np.float32)
        self.terminated, self.truncated, self.firsts = (np.empty((steps, E), bool) for _ in range(3))
        self.finals: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, obs, action, reward, terminated, truncated, first, final_obs=None) -> None:
        k = self.k
        self.obs[k], self.action[k], self.reward[k] = compact(obs, self.stack), action, reward
        self.terminated[k], self.truncated[k], self.firsts[k] = terminated, truncated, first
        if truncated.any():
            rows = np.flatnonzero(truncated)
            self.finals[k] = (rows, np.array(compact(final_obs, self.stack)[rows]))
        if self.local is not None:
            self.local.add(obs, action, reward, terminated, truncated, first, final_obs)
        self.k += 1

    def chunk(self, tail_obs: np.ndarray, priority: np.ndarray | None = None) -> Chunk:
        """The chunk begun last, ``tail_obs`` being the observation after its last step."""
        return Chunk(self.obs, self.action, self.reward, self.terminated, self.truncated, self.firsts, self.finals,
                     np.array(compact(tail_obs, self.stack)), priority)
