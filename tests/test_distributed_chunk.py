"""What an Ape-X actor sends (agents/distributed/chunk.py): chunks recorded step by step and written into a
replay leave it exactly as adding the same steps directly would."""
from __future__ import annotations

import numpy as np
import pytest

from rl.replay import ReplayBuffer, ReplaySpec
from tests.fakes import FakeFlatEnv, FakeStackedEnv
from tests.support import NO_RAY

pytest.importorskip("ray", reason=NO_RAY)

from agents.distributed.chunk import ChunkRecorder, compact  # noqa: E402


def same_contents(a: ReplayBuffer, b: ReplayBuffer) -> None:
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        np.testing.assert_array_equal(x, y)
    assert (a.cursor, a.size) == (b.cursor, b.size)


@pytest.mark.parametrize("stack", [1, 4], ids=["vector", "stacked"])
def test_chunks_written_into_a_replay_equal_the_steps_added_directly(stack):
    env = FakeStackedEnv(num_envs=3, p_trunc=0.1) if stack > 1 else FakeFlatEnv(num_envs=3, p_trunc=0.1)
    spec = ReplaySpec(3 * 40, 3, env.obs_shape, env.obs_dtype, stack=stack, n_step=3)
    direct, via_chunks, local = ReplayBuffer(spec), ReplayBuffer(spec), ReplayBuffer(spec)
    recorder = ChunkRecorder(3, stack, local)
    rng = np.random.default_rng(0)
    obs = env.reset()
    for _ in range(5):                                                   # 5 chunks of 10 steps: wraps the buffers
        recorder.begin(10, obs)
        for _ in range(10):
            action = rng.integers(0, env.num_actions, 3)
            out = env.step(action)
            direct.add_step(obs, action, out.reward, out)
            recorder.add_step(obs, action, out.reward, out)
            obs = out.obs
        chunk = recorder.chunk(obs)
        assert chunk.obs.shape[2:] == compact(obs, stack).shape[1:]     # newest frames only: 1/stack the traffic
        np.testing.assert_array_equal(chunk.tail, compact(obs, stack))
        chunk.write(via_chunks)
    assert chunk.truncated.any() and not chunk.first.all()              # both kinds of flag crossed the wire
    same_contents(direct, via_chunks)
    same_contents(direct, local)
    assert recorder.episode_starts() == direct.episode_starts()


def test_a_chunk_sets_its_initial_priorities_on_the_steps_they_belong_to():
    from rl.replay import PrioritizedReplayBuffer
    env = FakeFlatEnv(num_envs=2, p_trunc=0.0, p_over=0.0, p_life=0.0)
    spec = ReplaySpec(2 * 30, 2, env.obs_shape, env.obs_dtype, n_step=2)
    replay, recorder = PrioritizedReplayBuffer(spec, alpha=1.0, eps=0.0), ChunkRecorder(2, 1)
    obs = env.reset()
    recorder.begin(6, obs)
    for _ in range(6):
        out = env.step(np.zeros(2, np.int64))
        recorder.add_step(obs, np.zeros(2, np.int64), out.reward, out)
        obs = out.obs
    priority = np.arange(1.0, 9.0).reshape(4, 2)                         # steps 0..3 have their 2-step future
    recorder.chunk(obs, priority).write(replay)
    np.testing.assert_array_equal(replay.mass_at(np.arange(12)), [*priority.ravel(), 0, 0, 0, 0])
