"""The Ape-X replay server (agents/distributed/replay_server.py), without a cluster: chunks from fake
actors whose frames say where they came from."""
from __future__ import annotations

import numpy as np
import pytest

from rl.config import TrainConfig
from rl.replay import TERMINATED, TRUNCATED
from tests.support import NO_RAY

pytest.importorskip("ray", reason=NO_RAY)

from agents.distributed.chunk import Chunk  # noqa: E402
from agents.distributed.replay_server import ReplayServer  # noqa: E402

FRAME = (2, 3)   # pixels: actor + 1, env, step, incarnation, episode, 1 (so no real frame is all zero)


class FakeActor:
    """Chunks as an actor sends them, with frames that say where they came from."""

    def __init__(self, actor: int, incarnation: int, num_envs: int, rng: np.random.Generator):
        self.actor, self.incarnation, self.E, self.rng = actor, incarnation, num_envs, rng
        self.step = 0
        self.episode = np.zeros(num_envs, int)
        self.first = np.ones(num_envs, bool)

    def frame(self, e: int, step: int, episode: int) -> np.ndarray:
        return np.array([[self.actor + 1, e, step % 256], [self.incarnation, episode % 256, 1]], np.uint8)

    def frames(self) -> np.ndarray:
        return np.stack([self.frame(e, self.step, self.episode[e]) for e in range(self.E)])[:, None]

    def chunk(self, T: int):
        obs = np.zeros((T, self.E, 1, *FRAME), np.uint8)
        terminated = self.rng.random((T, self.E)) < 0.1
        truncated = ~terminated & (self.rng.random((T, self.E)) < 0.05)
        first = np.zeros((T, self.E), bool)
        finals = {}
        for k in range(T):
            obs[k], first[k] = self.frames(), self.first
            if truncated[k].any():
                rows = np.flatnonzero(truncated[k])   # the cut episode's own next frame
                finals[k] = (rows, np.stack([self.frame(e, self.step + 1, self.episode[e]) for e in rows])[:, None])
            self.step += 1
            self.first = terminated[k] | truncated[k]
            self.episode += self.first
        return Chunk(obs, self.rng.integers(0, 4, (T, self.E)), self.rng.random((T, self.E), np.float32),
                                 terminated, truncated, first, finals, self.frames())


def server_config(**overrides) -> TrainConfig:
    values = {"num_envs": 3, "frame_stack": 4, "n_step": 3, "gamma": 0.9, "buffer_size": 3 * 2 * 64, "seed": 5,
              "actor_chunk_steps": 10, **overrides}
    return TrainConfig(**values)


def check_sample(batch, gamma: float, ids_per_buffer: int) -> None:
    """Every stack holds one actor/env/incarnation/episode, consecutive steps ending at the sampled one;
    next_obs continues the same episode m steps later (gamma^m), or the transition is terminal."""
    for b in range(len(batch.action)):
        obs, nxt = batch.obs[b], batch.next_obs[b]
        real = obs[obs[:, 1, 2] == 1]                                   # frames that are not padding
        assert len(real) and (obs[-1, 1, 2] == 1)
        ids = {(f[0, 0], f[0, 1], f[1, 0], f[1, 1]) for f in real}
        assert len(ids) == 1, f"a stack mixes streams: {ids}"
        steps = real[:, 0, 2].astype(int)
        assert np.array_equal(steps, np.arange(steps[-1] - len(steps) + 1, steps[-1] + 1))
        assert batch.index[b] // ids_per_buffer == obs[-1, 0, 0] - 1    # the buffer of the frame's actor
        if batch.discount[b] == 0:
            continue                                                    # terminal: nothing to bootstrap from
        m = int(round(np.log(batch.discount[b]) / np.log(gamma)))
        assert 1 <= m <= 3
        last = nxt[-1]
        assert (last[0, 0], last[0, 1], last[1, 0], last[1, 1]) == ids.pop(), "next_obs left the stream"
        assert last[0, 2] == (steps[-1] + m) % 256


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_replay_server_never_mixes_actors_and_cuts_streams_at_a_restart(prioritized):
    cfg = server_config(prioritized=prioritized)
    server = ReplayServer(cfg, (4, *FRAME), np.uint8, 4, actors=2)
    rng = np.random.default_rng(0)
    actors = [FakeActor(a, server.register(a), cfg.num_envs, rng) for a in range(2)]
    for round_ in range(3):
        for fake in actors:
            server.add(fake.actor, fake.incarnation, fake.chunk(10))
    old = actors[0]
    last_t = (server.buffers[0].cursor - 1) % server.buffers[0].slots
    # actor 0 dies; Ray restarts it; a chunk its dead incarnation sent arrives late and is dropped
    actors[0] = FakeActor(0, server.register(0), cfg.num_envs, rng)
    assert actors[0].incarnation == 1
    size = server.size()
    server.add(0, old.incarnation, old.chunk(10))
    assert server.dropped == 1 and server.size() == size
    flags = server.buffers[0].flags[last_t]
    assert ((flags & (TERMINATED | TRUNCATED)) != 0).all()                         # the open streams were cut
    for round_ in range(2):
        for fake in actors:
            server.add(fake.actor, fake.incarnation, fake.chunk(10))
    for _ in range(20):
        batches, writes = server.sample(32, beta=0.5, count=2)
        for batch in batches:
            check_sample(batch, cfg.gamma, server.ids_per_buffer)
            assert batch.weight.max() == pytest.approx(1.0)
    # the cut transitions bootstrap from the tail the dead incarnation reported: sample them directly
    buffer = server.buffers[0]
    for e in range(cfg.num_envs):
        cut = buffer.gather(np.array([last_t]), np.array([e]), np.ones(1, np.float32))
        check_sample(cut, cfg.gamma, server.ids_per_buffer)


def test_replay_server_samples_in_proportion_to_size():
    cfg = server_config(buffer_size=3 * 2 * 200, n_step=1)
    server = ReplayServer(cfg, (4, *FRAME), np.uint8, 4, actors=2)
    rng = np.random.default_rng(1)
    fakes = [FakeActor(a, server.register(a), cfg.num_envs, rng) for a in range(2)]
    for _ in range(9):
        server.add(0, 0, fakes[0].chunk(10))
    for _ in range(3):
        server.add(1, 0, fakes[1].chunk(10))
    share = len(server.buffers[1]) / server.size()
    batches, _ = server.sample(500, count=20)
    from_1 = np.mean(np.concatenate([b.index for b in batches]) // server.ids_per_buffer)
    assert from_1 == pytest.approx(share, abs=0.02)


def test_prioritized_server_takes_actor_priorities_and_skips_stale_updates():
    cfg = server_config(prioritized=True, priority_alpha=0.5, buffer_size=3 * 13, n_step=2)
    server = ReplayServer(cfg, (4, *FRAME), np.uint8, 4, actors=1)
    fake = FakeActor(0, server.register(0), cfg.num_envs, np.random.default_rng(2))
    buffer = server.buffers[0]
    chunk = fake.chunk(10)
    chunk.priority = np.arange(1, 8 * 3 + 1, dtype=np.float64).reshape(8, 3)   # steps 0..7 have a 2-step future
    server.add(0, 0, chunk)
    leaves = buffer.tree.get(np.arange(10 * 3)).reshape(10, 3)
    assert np.allclose(leaves[:8], (chunk.priority + cfg.priority_eps) ** 0.5)
    assert (leaves[8:] == 0).all()                                                # no n-step future yet
    batches, writes = server.sample(6, beta=0.4, count=1)
    # 13 slots per stream: two more chunks of 10 rewrite every one, so this update is stale
    for _ in range(2):
        server.add(0, 0, fake.chunk(10))
    before = buffer.tree.tree.copy()
    server.update_priorities(batches[0].index, np.full(6, 1000.0), writes)
    assert np.array_equal(buffer.tree.tree, before)
    batches, writes = server.sample(6, beta=0.4, count=1)
    server.update_priorities(batches[0].index, np.full(6, 1000.0), writes)          # fresh: applied
    assert np.allclose(buffer.tree.get(batches[0].index), (1000.0 + cfg.priority_eps) ** 0.5)
