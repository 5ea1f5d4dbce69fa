"""The learner of an Ape-X run, in this process: updates on batches from the replay server, weights out to
the actors, and the run's logging, evaluation and checkpoints through agents/run.py."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from agents.build import make_agent
from agents.distributed.cluster import actor_epsilon_schedules, check_config, publish_weights, writable_batch
from agents.distributed.fleet import Fleet, start_workers
from agents.dqn import resolve_device
from agents.run import Loop, Run, RunDirError, RunOwner
from envs import make_env
from rl import checkpoint as ckpt
from rl.config import TrainConfig
from rl.logging import Progress
from rl.schedules import LinearSchedule

SAMPLE_BLOCK = 16            # batches per replay round trip; the next block is fetched while this one trains
WAIT_SECONDS = 0.05          # how long the learner blocks for new chunks when it owes no update
MARKER = "distributed.json"  # in the run directory: actors, Ray address, where each worker runs


class Window:
    """What the actors delivered since the last log: steps and acting seconds per actor, weight lag."""

    def __init__(self):
        self.values: dict[str, float] = defaultdict(float)

    def add(self, i: int, stats: dict[str, Any], updates: int) -> None:
        lag = updates - max(stats["version"], 0)        # learner updates between the chunk's weights and now
        self.values[f"steps_{i}"] += stats["steps"]
        self.values[f"seconds_{i}"] += stats["acting_seconds"]
        self.values["lag"] += lag
        self.values["lag_max"] = max(self.values["lag_max"], lag)
        self.values["chunks"] += 1

    def scalars(self, actors: int) -> dict[str, float]:
        w, out = self.values, {}
        for i in range(actors):
            if w[f"seconds_{i}"] > 0:
                out[f"distributed/actor_{i}/steps_per_s"] = w[f"steps_{i}"] / w[f"seconds_{i}"]
        if w["chunks"]:
            out["distributed/weight_lag_updates"] = w["lag"] / w["chunks"]
            out["distributed/weight_lag_updates_max"] = w["lag_max"]
        self.values.clear()
        return out


class DistributedTrainer(RunOwner):
    """The learner of an Ape-X run, in this process, on the same run skeleton as the single-process Trainer
    (agents/run.py: run directory, run.json, checkpoints, evaluation, divergence checks, the loop's tail).
    Acting and replay live in Ray actors started by :meth:`train` and stopped by :meth:`close` (also after
    Ctrl-C)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, actors: int, preset: str | None = None,
                 show_progress: bool | None = None, owns_ray: bool = False):
        check_config(cfg, actors)
        self.cfg, self.num_actors, self.owns_ray = cfg, actors, owns_ray
        self.device = resolve_device(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        probe = make_env(cfg, num_envs=1)                       # shapes only; the actors own the envs
        self.obs_shape, self.obs_dtype, self.num_actions = probe.obs_shape, probe.obs_dtype, probe.num_actions
        probe.close()
        self.agent = make_agent(cfg, self.obs_shape, self.num_actions, self.device)
        self.run = Run(cfg, run_dir, self.agent, preset=preset, show_progress=show_progress, meta=self._meta)
        self.beta = LinearSchedule(cfg.priority_beta_start, cfg.priority_beta_end, cfg.total_steps)
        self.epsilons = actor_epsilon_schedules(cfg, actors)   # actor i's epsilon at agent step t: epsilons[i](t)
        self.server = None                                      # the replay server's handle, once started
        self.fleet: Fleet | None = None
        self.replay_size = 0                                    # transitions sampleable in the replay server
        self.metrics: dict[str, torch.Tensor] = {}              # the last update's
        self.published: tuple[Any, int] = (None, -1)            # the weights' object ref and their update count
        self.sample_ref = None                                  # the next block of batches, on its way
        self.learned_to = 0                                     # agent steps the updates have seen
        self.window = Window()
        self.last = (0.0, 0, 0)                                 # time, updates and steps at the last log

    # --- checkpoints: the learner only -----------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        restarts = self.fleet.restarts if self.fleet is not None else [0] * self.num_actors
        return {"distributed": {"actors": self.num_actors, "restarts": restarts}}

    def restore(self) -> None:
        """Continue the learner from ``latest.pt`` (of a distributed or a single-process run): weights,
        optimizer, counters. The replay is not saved, so updates pause for learning_starts fresh steps."""
        self.run.load(self.device)
        self.run.refill("distributed runs do not save their replay")

    # --- workers -------------------------------------------------------------------------------------
    def _start_workers(self, progress: Progress) -> None:
        self.server, handles = start_workers(self.cfg, self.obs_shape, self.obs_dtype, self.num_actions,
                                             self.num_actors)
        self.fleet = Fleet(handles, self.cfg.actor_max_restarts)
        where = ray.get([a.identity.remote() for a in handles] + [self.server.identity.remote()])
        self._write_marker(workers=where[:-1], replay=where[-1])
        nodes = sorted({w["node"] for w in where})
        progress.write(f"rl-train: {self.num_actors} actors on {len(nodes)} node(s) ({', '.join(nodes)}), "
                       f"epsilons {self._epsilon_text()}; replay on {where[-1]['node']}")

    def _epsilon_text(self) -> str:
        if self.cfg.actor_epsilon_anneal:
            return (f"{self.cfg.epsilon_start:.3g} -> {', '.join(f'{e.end:.3g}' for e in self.epsilons)} "
                    f"over {self.epsilons[0].duration:,} steps")
        return ", ".join(f"{e.end:.3g}" for e in self.epsilons)

    def _write_marker(self, **where: Any) -> None:
        """RUN_DIR/distributed.json: this run's checkpoints hold the learner only (rl-train refuses to resume it
        without --actors), and where the workers run (pids and nodes, for the curious and for tests)."""
        path = self.run.run_dir / MARKER
        info = {"actors": self.num_actors, "ray_address": ray.get_runtime_context().gcs_address, **where}
        try:
            ckpt.atomic_write(path, lambda f: f.write(json.dumps(info, indent=1).encode()))
        except OSError as exc:
            raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Stop every actor and the replay server (and Ray, when this process started it)."""
        for handle in [*(self.fleet.handles if self.fleet is not None else []), self.server]:
            if handle is not None:
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:   # already gone, or the cluster went away first
                    pass
        self.fleet, self.server = None, None
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()

    # --- the loop --------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> str:
        """Start the workers and learn until total_steps, a stop request, ``stop_at`` or ``target_return``."""
        return self.run.train(self._loop, stop_at, np.zeros((1, *self.obs_shape), self.obs_dtype))

    def _loop(self, loop: Loop) -> str:
        self._write_marker()
        self._start_workers(loop.progress)
        self.learned_to, self.last = self.run.step, (time.perf_counter(), self.agent.updates, self.run.step)
        self._publish()
        while True:
            self._take(loop, self.fleet.harvest(0, loop.progress))
            self.fleet.submit(self._collect, self._room_for_more)
            lr = self.agent.set_step(self.run.step)
            todo = self._owed()
            if todo > 0:
                self._learn(todo)
            elif self.run.step >= self.cfg.total_steps and not self.fleet.in_flight_count():
                return "finished"
            else:
                self._take(loop, self.fleet.harvest(WAIT_SECONDS, loop.progress))   # ahead: wait for data
            status = loop.end_of_step(lambda: self._log(loop, lr))
            if status is not None:
                return status

    def _owed(self) -> int:
        return 0 if self.run.pause_learning(self.replay_size) else self.run.updates_owed()

    def _room_for_more(self) -> bool:
        """Whether another chunk is wanted: the run needs the steps, and the learner owes at most a round of
        chunks' worth of updates (else the actors wait for it)."""
        chunk_steps = self.cfg.actor_chunk_steps * self.cfg.num_envs                   # agent steps per chunk
        coming = self.run.step + self.fleet.in_flight_count() * chunk_steps
        return coming < self.cfg.total_steps and self._owed() <= self.num_actors * chunk_steps // self.cfg.train_frequency

    def _collect(self, actor: Any, i: int) -> Any:
        ref, version = self.published
        return actor.collect.remote([ref], version, self.epsilons[i](self.run.step))

    def _publish(self) -> None:
        self.published = (publish_weights(self.agent), self.agent.updates)

    def _take(self, loop: Loop, delivered: list[tuple[int, dict[str, Any]]]) -> None:
        """Count the chunks the actors delivered, and the games that ended in them."""
        for i, stats in delivered:
            self.replay_size = stats["replay_size"]
            loop.record(stats["steps"], stats["finished"], actor=i)
            self.window.add(i, stats, self.agent.updates)

    def _learn(self, todo: int) -> None:
        """``todo`` updates on batches sampled from the replay server, SAMPLE_BLOCK per round trip (the next
        block is fetched while this one trains); priorities go back, weights out every weight_sync_every."""
        cfg, agent = self.cfg, self.agent
        beta = self.beta(self.run.step)
        if self.sample_ref is None:
            self.sample_ref = self.server.sample.remote(cfg.batch_size, beta, min(todo, SAMPLE_BLOCK))
        batches, writes = ray.get(self.sample_ref)
        rest = todo - len(batches)
        self.sample_ref = (self.server.sample.remote(cfg.batch_size, beta, min(rest, SAMPLE_BLOCK))
                           if rest > 0 else None)
        index, priority = [], []
        for batch in batches:
            self.metrics = agent.update(writable_batch(batch))
            if cfg.prioritized:
                index.append(batch.index)
                priority.append(self.metrics["priority"].float().cpu().numpy())
        agent.steps_done(self.learned_to, self.run.step)                # a hard target syncs here
        self.learned_to = self.run.step
        if index:
            self.server.update_priorities.remote(np.concatenate(index), np.concatenate(priority), writes)
        if agent.updates - self.published[1] >= cfg.weight_sync_every:
            self._publish()

    def _log(self, loop: Loop, lr: float) -> None:
        run, agent = self.run, self.agent
        now = time.perf_counter()
        dt = max(now - self.last[0], 1e-9)
        updates = agent.updates - self.last[1]
        values = {"charts/learning_rate": lr, "charts/SPS": loop.rate(run.step),
                  "charts/episodes": run.episodes, "charts/replay_size": self.replay_size,
                  "charts/updates": agent.updates,
                  "distributed/updates_per_s": updates / dt,
                  "distributed/replay_insert_per_s": (run.step - self.last[2]) / dt,
                  "distributed/replay_sample_per_s": updates * self.cfg.batch_size / dt,
                  "distributed/actor_restarts": sum(self.fleet.restarts),
                  **{f"distributed/actor_{i}/epsilon": e(run.step) for i, e in enumerate(self.epsilons)},
                  **self.window.scalars(self.num_actors)}
        loop.log(values, self.metrics, self.replay_size)
        self.last = (now, agent.updates, run.step)
