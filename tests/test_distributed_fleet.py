"""The learner's view of its actors (agents/distributed/fleet.py): who gets the next chunk, and what comes back."""
from __future__ import annotations

import time

import pytest

from tests.support import NO_RAY

pytest.importorskip("ray", reason=NO_RAY)

from agents.distributed.fleet import Fleet  # noqa: E402


class Quiet:
    def write(self, line: str) -> None:
        pass


def test_submit_asks_idle_live_rested_actors_while_more_is_wanted():
    fleet = Fleet(["a0", "a1", "a2", "a3"], max_restarts=1)
    fleet.dead.add(1)
    fleet.resting[2] = time.monotonic() + 60                        # waiting out a restart
    asked = []
    fleet.submit(lambda handle, i: asked.append(handle) or f"ref{i}", more=lambda: True)
    assert asked == ["a0", "a3"] and fleet.in_flight == {"ref0": 0, "ref3": 3} and fleet.in_flight_count() == 2
    fleet.idle.update({0, 3})
    fleet.in_flight.clear()
    fleet.submit(lambda handle, i: asked.append(handle) or f"ref{i}", more=lambda: len(asked) < 3)
    assert asked == ["a0", "a3", "a0"] and fleet.idle == {1, 2, 3}               # 1 dead, 2 resting, 3 not wanted


def test_harvest_returns_delivered_chunks_and_counts_incarnations(ray_cluster):
    ray = ray_cluster

    @ray.remote
    def chunk(i, incarnation):
        return {"actor": i, "incarnation": incarnation, "steps": 8}

    fleet = Fleet(["a0", "a1"], max_restarts=1)
    fleet.submit(lambda handle, i: chunk.remote(i, i), more=lambda: True)
    delivered = []
    deadline = time.monotonic() + 60
    while fleet.in_flight_count() and time.monotonic() < deadline:
        delivered += fleet.harvest(1.0, Quiet())
    assert sorted(i for i, _ in delivered) == [0, 1] and fleet.idle == {0, 1}
    assert fleet.restarts == [0, 1] and fleet.incarnations_seen == {0: {0}, 1: {1}}
    assert fleet.harvest(0.0, Quiet()) == []                           # nothing in flight: a short wait, nothing
