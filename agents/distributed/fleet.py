"""The workers of an Ape-X run: starting them, and the learner's view of its actors (Fleet)."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from agents.distributed.actor import ActorWorker
from agents.distributed.replay_server import ReplayServer
from rl.config import TrainConfig
from rl.logging import Progress

RESTART_RETRY_SECONDS = 0.5  # a restarting actor (ActorUnavailableError) is asked again after this


def start_workers(cfg: TrainConfig, obs_shape, obs_dtype: np.dtype, num_actions: int, actors: int) -> tuple[Any, list]:
    """Start the replay server (on this node: batches cross no network; it needs memory, not a core) and
    ``actors`` ActorWorkers spread over the cluster; returns their handles (server, [actor 0, ...])."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    here = ray.get_runtime_context().get_node_id()
    replay_name = f"rl-replay-{os.getpid()}-{time.time_ns()}"
    server = ray.remote(ReplayServer).options(
        name=replay_name, num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=True),
    ).remote(cfg, obs_shape, np.dtype(obs_dtype).str, num_actions, actors)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    per_actor = min(1.0, cpus / actors)                    # more actors than cores share them
    worker = ray.remote(ActorWorker).options(num_cpus=per_actor, max_restarts=cfg.actor_max_restarts,
                                             max_task_retries=0, scheduling_strategy="SPREAD")
    return server, [worker.remote(cfg, i, actors, replay_name) for i in range(actors)]


class Fleet:
    """The actors of a run as the learner sees them: which are collecting a chunk, idle, waiting out a
    restart or dead for good, and how often each was restarted."""

    def __init__(self, handles: list, max_restarts: int):
        self.handles = handles                      # Ray actor handles, index = actor number
        self.max_restarts = max_restarts
        self.in_flight: dict[Any, int] = {}          # collect() ref -> actor
        self.idle = set(range(len(handles)))
        self.dead: set[int] = set()
        self.resting: dict[int, float] = {}          # restarting actor -> when to ask it again
        self.restarts = [0] * len(handles)           # times Ray restarted each actor (its newest incarnation seen)
        self.failures = [0] * len(handles)           # calls that failed because the actor died
        self.incarnations_seen: dict[int, set[int]] = defaultdict(set)

    def in_flight_count(self) -> int:
        """Chunks asked for and not yet harvested."""
        return len(self.in_flight)

    def submit(self, collect: Callable[[Any, int], Any], more: Callable[[], bool]) -> None:
        """Ask each idle, live actor that is not waiting out a restart for a chunk (``collect(handle, i)``
        returns the call's ref), as long as ``more()`` allows."""
        for i in sorted(self.idle - self.dead):
            if self.resting.get(i, 0.0) > time.monotonic():
                continue
            if not more():
                return
            self.in_flight[collect(self.handles[i], i)] = i
            self.idle.discard(i)

    def harvest(self, timeout: float, progress: Progress) -> list[tuple[int, dict[str, Any]]]:
        """(actor, stats) of the chunks delivered within ``timeout`` seconds. An actor Ray is restarting is
        asked again after RESTART_RETRY_SECONDS; a crash counts towards actor_max_restarts."""
        if not self.in_flight:
            time.sleep(min(timeout, RESTART_RETRY_SECONDS))     # every live actor is restarting
            return []
        done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
        if done:
            done, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)
        delivered = []
        for ref in done:
            i = self.in_flight.pop(ref)
            self.idle.add(i)
            try:
                stats = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                self.resting[i] = time.monotonic() + RESTART_RETRY_SECONDS  # Ray is restarting it: not a new death
                continue
            except ray.exceptions.RayActorError as exc:
                self._crashed(i, exc, progress)
                continue
            self.incarnations_seen[i].add(stats["incarnation"])
            self.restarts[i] = max(self.restarts[i], stats["incarnation"])
            delivered.append((i, stats))
        return delivered

    def _crashed(self, i: int, exc: Exception, progress: Progress) -> None:
        self.failures[i] += 1
        if self.failures[i] <= self.max_restarts:
            progress.write(f"rl-train: actor {i} died ({type(exc).__name__}); Ray restarts it "
                           f"(at most {self.max_restarts} times)")
            return
        self.dead.add(i)
        progress.write(f"rl-train: actor {i} died for good ({type(exc).__name__}); "
                       f"{len(self.handles) - len(self.dead)} actors go on")
        if len(self.dead) == len(self.handles):
            raise RuntimeError("every actor died; see the Ray logs (ray logs cluster)") from None
