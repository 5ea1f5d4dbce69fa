"""An Ape-X actor (agents/distributed/actor.py) against a replay server running in this process."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.support import NO_RAY, cartpole

pytest.importorskip("ray", reason=NO_RAY)

from agents.distributed import actor as actor_module  # noqa: E402
from agents.distributed.actor import ActorWorker  # noqa: E402
from agents.distributed.replay_server import ReplayServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class LocalHandle:
    """A plain object behind Ray's handle interface: ``handle.method.remote(...)`` runs it here."""

    def __init__(self, obj, ray):
        self.obj, self.ray = obj, ray

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        return SimpleNamespace(remote=lambda *a, **k: self.ray.put(method(*a, **k)))


def test_actor_initial_priorities_land_on_their_transitions(ray_cluster, monkeypatch):
    """An actor's chunk priorities are |TD errors| of exactly the server-side transitions they are set on."""
    ray = ray_cluster
    cfg = cartpole(prioritized=True, n_step=3, actor_chunk_steps=20, num_envs=2, buffer_size=2 * 200)
    server = ReplayServer(cfg, (4,), np.float32, 2, actors=1)
    monkeypatch.setattr(actor_module.ray, "get_actor", lambda name: LocalHandle(server, ray))
    actor = ActorWorker(cfg, 0, 1, "replay")
    state = {k: v.numpy() for k, v in actor.agent.policy_state_dict().items()}
    for _ in range(3):
        stats = actor.collect([ray.put(state)], 0, 0.4)
    assert stats["steps"] == 40
    buffer = server.buffers[0]
    ready = 3 * 20 - cfg.n_step                               # steps with their 3-step future
    t, env = np.repeat(np.arange(ready), 2), np.tile(np.arange(2), ready)
    batch = buffer.gather(t, env, np.ones(len(t), np.float32))
    expected = (actor.agent.priorities(batch) + cfg.priority_eps) ** cfg.priority_alpha
    assert np.allclose(buffer.tree.get(t * 2 + env), expected, rtol=1e-5)
    assert (buffer.tree.get(np.arange(ready * 2, 60 * 2)) == 0).all()
