"""Ape-X's settings (agents/distributed/cluster.py): each actor's epsilon and the layout check."""
from __future__ import annotations

import numpy as np
import pytest

from rl.config import ConfigError
from rl.replay import Batch
from tests.support import NO_RAY, cartpole

pytest.importorskip("ray", reason=NO_RAY)

from agents.distributed.cluster import actor_epsilon, actor_epsilon_schedules, check_config, writable_batch  # noqa: E402


def test_actor_epsilons_follow_apex():
    eps = [actor_epsilon(i, 8, 0.4, 7.0) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4 ** 8)
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert actor_epsilon(0, 1, 0.4, 7.0) == pytest.approx(0.4)


@pytest.mark.parametrize("anneal", [False, True])
def test_actor_epsilon_schedules_end_at_the_apex_spread(anneal):
    cfg = cartpole(actor_epsilon_anneal=anneal)           # epsilon_start 1, exploration over 20k of 100k steps
    schedules = actor_epsilon_schedules(cfg, 2)
    apex = [0.4, 0.4 ** 8]
    assert [s(20_000) for s in schedules] == pytest.approx(apex)
    assert [s(10**6) for s in schedules] == pytest.approx(apex)
    at_start = [s(0) for s in schedules]
    assert at_start == pytest.approx([1.0, 1.0] if anneal else apex)
    halfway = [s(10_000) for s in schedules]
    assert halfway == pytest.approx([(1.0 + e) / 2 for e in apex] if anneal else apex)




@pytest.mark.parametrize("actors,buffer_size,ok", [(2, 2 * 4 * (10 + 1 + 1 + 1), True),
                                                   (2, 2 * 4 * (10 + 1 + 1 + 1) - 1, False), (0, 10**6, False)])
def test_each_actor_needs_a_chunk_and_its_surroundings_in_its_share(actors, buffer_size, ok):
    cfg = cartpole(buffer_size=buffer_size, n_step=1)     # 4 envs, chunks of 10 steps, no stack, n_step 1
    if ok:
        check_config(cfg, actors)
    else:
        with pytest.raises(ConfigError, match=f"--actors {actors}"):
            check_config(cfg, actors)


def test_the_replay_actor_refuses_a_device_replay():
    check_config(cartpole(replay_device="auto"), 2)
    with pytest.raises(ConfigError, match="replay_device = 'device' is not allowed with --actors 2"):
        check_config(cartpole(replay_device="device"), 2)


def test_writable_batch_copies_only_what_is_read_only():
    fields = [np.zeros(3) for _ in Batch._fields]
    fields[0].flags.writeable = False
    batch = writable_batch(Batch(*fields))
    assert all(a.flags.writeable for a in batch)
    assert batch.obs is not fields[0] and batch.action is fields[1]
