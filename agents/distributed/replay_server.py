"""The replay memory of an Ape-X run, a Ray actor: one buffer per actor, sampled as one."""
from __future__ import annotations

from typing import Any

import numpy as np

from agents.build import make_replay, replay_spec
from agents.distributed.chunk import Chunk
from agents.distributed.cluster import derived_seed, worker_identity
from envs import is_atari
from rl.config import TrainConfig
from rl.replay import Batch, ReplayBuffer


class ReplayServer:
    """The replay memory of all actors: one ReplayBuffer (or PrioritizedReplayBuffer) per actor, each with
    ``num_envs`` lockstep streams, so stacks and n-step windows never mix actors. Sampling draws how many
    transitions come from each buffer from a multinomial over sizes (uniform) or priority masses
    (prioritized), which gives every transition the same probability as one big buffer would.
    A plain class: ray.remote wraps it at start, so it unit-tests without a cluster."""

    def __init__(self, cfg: TrainConfig, obs_shape, obs_dtype, num_actions: int, actors: int):
        stack = cfg.frame_stack if is_atari(cfg.env) else 1     # what the actors' envs stack (their frame_stack)
        spec = replay_spec(cfg, obs_shape, np.dtype(obs_dtype), num_actions, stack, cfg.buffer_size // actors)
        self.prioritized = cfg.prioritized
        self.buffers: list[ReplayBuffer] = [make_replay(cfg, spec, seed=derived_seed(cfg.seed, 7, i)) for i in range(actors)]
        self.ids_per_buffer = self.buffers[0].id_count()       # global index = buffer * this + local
        self.rng = np.random.default_rng(derived_seed(cfg.seed, 8))
        self.registrations = [0] * actors       # incarnations of each actor so far
        self.incarnation = [-1] * actors        # the live incarnation; chunks of older ones are dropped
        self.tails: list[np.ndarray | None] = [None] * actors
        self.writes = np.zeros(actors, np.int64)  # vector steps written per buffer, for stale-priority checks
        self.inserted = 0                       # transitions added, all buffers
        self.sampled = 0                        # transitions sampled
        self.dropped = 0                        # chunks of dead incarnations that arrived late

    def identity(self) -> dict[str, Any]:
        return worker_identity()

    def register(self, actor: int) -> int:
        """A (re)started actor announces itself; returns its incarnation number. After a restart the streams
        the dead incarnation left open are cut, bootstrapping from the last observation it reported."""
        k = self.registrations[actor]
        self.registrations[actor] += 1
        if self.tails[actor] is not None:
            self.buffers[actor].cut_streams(self.tails[actor])
            self.tails[actor] = None
        self.incarnation[actor] = k
        return k

    def add(self, actor: int, incarnation: int, chunk: Chunk) -> int:
        """Store a chunk in ``actor``'s buffer; returns the transitions sampleable now (all buffers)."""
        if incarnation != self.incarnation[actor]:
            self.dropped += 1
            return len(self)
        chunk.write(self.buffers[actor])
        self.tails[actor] = np.array(chunk.tail)
        self.writes[actor] += len(chunk.obs)
        self.inserted += chunk.action.size
        return len(self)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buffers)

    def size(self) -> int:
        return len(self)

    def stats(self) -> dict[str, int]:
        return {"inserted": self.inserted, "sampled": self.sampled, "size": len(self), "dropped": self.dropped}

    def sample(self, batch_size: int, beta: float = 0.4, count: int = 1) -> tuple[list[Batch], np.ndarray]:
        """``count`` batches, and the write counters that ``update_priorities`` needs to skip slots
        overwritten in the meantime."""
        self.sampled += batch_size * count
        return [self._sample(batch_size, beta) for _ in range(count)], self.writes.copy()

    def _sample(self, batch_size: int, beta: float) -> Batch:
        mass = np.array([b.mass() for b in self.buffers], np.float64)
        if mass.sum() <= 0:
            raise ValueError("replay buffer holds no complete transition yet")
        counts = self.rng.multinomial(batch_size, mass / mass.sum())
        parts, probs = [], []
        for i in np.flatnonzero(counts):
            buffer = self.buffers[i]
            part = buffer.sample(int(counts[i]), beta) if self.prioritized else buffer.sample(int(counts[i]))
            if self.prioritized:
                probs.append(buffer.mass_at(part.index) / mass.sum())                 # P(j) over all buffers
            parts.append(part._replace(index=part.index + i * self.ids_per_buffer))
        batch = Batch(*(np.concatenate(field) for field in zip(*parts)))
        if self.prioritized:
            weight = (len(self) * np.concatenate(probs)) ** (-beta)                  # (N * P(j))^-beta
            batch = batch._replace(weight=(weight / weight.max()).astype(np.float32))
        return batch

    def update_priorities(self, index: np.ndarray, priority: np.ndarray, writes: np.ndarray) -> None:
        """Priorities for sampled global ``index``; slots rewritten since ``writes`` was taken are skipped."""
        if not self.prioritized:
            return
        buffer_of, local = np.divmod(np.asarray(index), self.ids_per_buffer)
        priority = np.asarray(priority)
        for i in np.unique(buffer_of):
            mine = buffer_of == i
            buffer = self.buffers[i]
            fresh = ~buffer.overwritten(local[mine], int(self.writes[i] - writes[i]))
            if fresh.any():
                buffer.update_priorities(local[mine][fresh], priority[mine][fresh])
