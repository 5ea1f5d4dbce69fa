"""Ape-X on Ray (Horgan et al. 2018, https://arxiv.org/abs/1803.00933): distributed acting, one learner.

    rl-train --preset cartpole --actors 2                      # Ray started here with this machine's cores
    rl-train --preset breakout --actors 8 --ray-address auto   # join the cluster 'ray start' runs

The layout, and the only new code is the moving of data between the usual pieces:

    ActorWorker i (Ray actor)  make_env + an acting copy of DQNAgent, epsilon_i from Ape-X's spread (fixed,
                               or annealed down to it with actor_epsilon_anneal; the learner sends it);
                               every actor_chunk_steps vector steps it sends a Chunk (and, with prioritized
                               replay, the chunk's initial priorities) to the replay server
    ReplayServer (Ray actor)   one rl.replay buffer per actor, so an actor's env streams never mix with
                               another's; samples across them in proportion to size (or priority mass)
    learner (this process)     DQNAgent.update on sampled batches; publishes the Q weights through Ray's
                               object store every weight_sync_every updates

The learner keeps the single-process schedule: one update per train_frequency agent steps collected
(the replay ratio of the presets), a hard target sync every target_update agent steps, and
actors wait while the learner owes more than one round of chunks. Exact resume is not attempted: the
replay lives in a Ray actor (possibly on another node) and is not saved; --resume restores the learner
(weights, optimizer, counters) and refills learning_starts steps before updating again.

Ray is imported here and in scripts/sweep.py only; the single-process package never imports it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

try:
    import ray
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("distributed training needs Ray: pip install -e '.[distributed]'") from exc

from agents.build import make_agent, make_replay, replay_spec
from agents.dqn import DQNAgent, resolve_device
from agents.evaluation import evaluate_checkpoint
from agents.run import Loop, Run, RunDirError, RunOwner, TrainingDiverged, prepare_run_dir
from agents.runner import Trainer
from envs import is_atari, make_env
from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig
from rl.logging import Progress
from rl.replay import Batch, ReplayBuffer
from rl.schedules import LinearSchedule

SAMPLE_BLOCK = 16            # batches per replay round trip; the next block is fetched while this one trains
WAIT_SECONDS = 0.05          # how long the learner blocks for new chunks when it owes no update
RESTART_RETRY_SECONDS = 0.5  # a restarting actor (ActorUnavailableError) is asked again after this
MARKER = "distributed.json"  # in the run directory: actors, Ray address, where each worker runs


def actor_epsilon(i: int, n: int, base: float, alpha: float) -> float:
    """Ape-X's exploration spread: actor i of n acts with eps_i = base^(1 + alpha * i / (n - 1));
    a single actor uses ``base``. With base 0.4 and alpha 7: 0.4 for actor 0 down to 0.4^8 = 0.00066."""
    return float(base ** (1 + alpha * i / (n - 1))) if n > 1 else float(base)


def actor_epsilon_schedules(cfg: TrainConfig, actors: int) -> list[LinearSchedule]:
    """Each actor's epsilon as a function of the run's agent steps: its Ape-X value throughout, or with
    ``actor_epsilon_anneal`` falling to it from epsilon_start over exploration_fraction of the run, the
    shape of the single-process schedule (an untrained net then explores on every actor, as it does there)."""
    decay = int(cfg.exploration_fraction * cfg.total_steps)
    finals = [actor_epsilon(i, actors, cfg.actor_epsilon_base, cfg.actor_epsilon_alpha) for i in range(actors)]
    return [LinearSchedule(cfg.epsilon_start if cfg.actor_epsilon_anneal else e, e, decay) for e in finals]


def check_config(cfg: TrainConfig, actors: int) -> None:
    """Refuse, before any work, an actor count or replay split the distributed layout cannot run."""
    if actors < 1:
        raise ConfigError(f"--actors {actors} is not allowed: must be >= 1")
    stack = cfg.frame_stack if is_atari(cfg.env) else 1
    # each actor's buffer must hold a whole chunk plus the history and n-step future around it
    need = actors * cfg.num_envs * (cfg.actor_chunk_steps + stack + cfg.n_step + 1)
    if cfg.buffer_size < need:
        raise ConfigError(f"buffer_size = {cfg.buffer_size} is not allowed with --actors {actors}: each actor's "
                          f"share must hold num_envs * (actor_chunk_steps + frame_stack + n_step + 1) transitions, "
                          f"so buffer_size >= {need}")


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` ('auto': the one ``ray start`` runs on this node), or, without an
    address, start Ray here with this machine's cores. Returns True when this call started or joined Ray
    (the caller then shuts it down); False when this process was already connected."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING"}
    if address is None:     # "local": a new instance even where 'ray start' runs a cluster (or RAY_ADDRESS is set)
        kwargs.update(address="local", num_cpus=os.cpu_count() or 1)
    else:
        kwargs.update(address=address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ray-address {address!r}: cannot connect to a Ray cluster ({first}); "
                          f"start one with 'ray start --head' or leave --ray-address out") from None
    return True


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


def writable_batch(batch: Batch) -> Batch:
    """Arrays Ray hands back are read-only views of its object store; torch wants writable memory."""
    return Batch(*(np.require(a, requirements="W") for a in batch))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def _identity() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.util.get_node_ip_address()}


# --- Ray actors (plain classes; ray.remote wraps them at start, so they unit-test without a cluster) ---

class ReplayServer:
    """The replay memory of all actors: one ReplayBuffer (or PrioritizedReplayBuffer) per actor, each with
    ``num_envs`` lockstep streams, so stacks and n-step windows never mix actors. Sampling draws how many
    transitions come from each buffer from a multinomial over sizes (uniform) or priority masses
    (prioritized), which gives every transition the same probability as one big buffer would."""

    def __init__(self, cfg: TrainConfig, obs_shape, obs_dtype, num_actions: int, actors: int):
        spec = replay_spec(cfg, obs_shape, np.dtype(obs_dtype), num_actions, cfg.buffer_size // actors)
        self.prioritized = cfg.prioritized
        self.buffers: list[ReplayBuffer] = [make_replay(cfg, spec, seed=_seed(cfg.seed, 7, i)) for i in range(actors)]
        self.ids_per_buffer = self.buffers[0].id_count()       # global index = buffer * this + local
        self.rng = np.random.default_rng(_seed(cfg.seed, 8))
        self.registrations = [0] * actors       # incarnations of each actor so far
        self.incarnation = [-1] * actors        # the live incarnation; chunks of older ones are dropped
        self.tails: list[np.ndarray | None] = [None] * actors
        self.writes = np.zeros(actors, np.int64)  # vector steps written per buffer, for stale-priority checks
        self.inserted = 0                       # transitions added, all buffers
        self.sampled = 0                        # transitions sampled
        self.dropped = 0                        # chunks of dead incarnations that arrived late

    def identity(self) -> dict[str, Any]:
        return _identity()

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
        buffer = self.buffers[actor]
        for k in range(len(chunk.obs)):
            final = None
            if k in chunk.finals:
                rows, frames = chunk.finals[k]
                final = np.zeros_like(chunk.obs[k])
                final[rows] = frames
            buffer.add(chunk.obs[k], chunk.action[k], chunk.reward[k], chunk.terminated[k], chunk.truncated[k],
                       chunk.first[k], final)
        if chunk.priority is not None:
            buffer.update_priorities(buffer.ready_ids(len(chunk.priority)), chunk.priority.ravel())
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


class ActorWorker:
    """One Ape-X actor: its own vector env and a copy of the agent used only to act (and, with prioritized
    replay, to compute initial priorities). Ray restarts it after a crash; the new incarnation registers
    with the replay server, which cuts the streams the old one left open, and plays fresh episodes."""

    def __init__(self, cfg: TrainConfig, index: int, actors: int, replay_name: str):
        torch.set_num_threads(1)                # acting is one small forward pass per vector step
        # looked up by name: a handle passed in would be a constructor argument Ray may be unable to
        # restore for a restart (ray-project/ray#53727)
        self.cfg, self.index, self.replay = cfg, index, ray.get_actor(replay_name)
        self.incarnation = ray.get(self.replay.register.remote(index))
        seed = _seed(cfg.seed, 1 + index, self.incarnation)
        torch.manual_seed(seed)
        self.env = make_env(cfg, seed=seed)
        self.agent = make_agent(cfg, self.env.obs_shape, self.env.num_actions, "cpu", seed=seed)  # own exploration
        self.epsilon = actor_epsilon_schedules(cfg, actors)[index](0)   # the learner sends the current one
        self.stack = replay_spec(cfg, self.env.obs_shape, self.env.obs_dtype, self.env.num_actions).stack
        self.version = -1                                     # learner updates behind the weights held
        self.obs = self.env.reset()
        self.first = np.ones(self.env.num_envs, bool)
        self.steps = 0                                        # vector steps taken by this incarnation
        self.local = None
        if cfg.prioritized:   # the recent steps, to rebuild the stacks and n-step returns priorities need
            slots = cfg.actor_chunk_steps + self.stack + cfg.n_step + 1
            self.local = ReplayBuffer(replay_spec(cfg, self.env.obs_shape, self.env.obs_dtype,
                                                  self.env.num_actions, slots * self.env.num_envs))

    def identity(self) -> dict[str, Any]:
        return {**_identity(), "actor": self.index, "incarnation": self.incarnation, "epsilon": self.epsilon}

    def set_weights(self, state: dict[str, np.ndarray], version: int) -> None:
        # the target too: initial priorities bootstrap from these weights
        self.agent.load_policy_weights({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.version = version

    def collect(self, weights: list, version: int, epsilon: float) -> dict[str, Any]:
        """Act ``actor_chunk_steps`` vector steps at ``epsilon`` with the weights of learner update ``version``
        (``weights`` holds their object ref, fetched only when the version changed), send the chunk to the
        replay and return what the learner logs."""
        self.epsilon = epsilon
        if version != self.version:
            self.set_weights(ray.get(weights[0]), version)
        started = time.perf_counter()
        cfg, env = self.cfg, self.env
        T, E = cfg.actor_chunk_steps, env.num_envs
        shown = compact(self.obs, self.stack)
        obs = np.empty((T, *shown.shape), shown.dtype)
        action = np.empty((T, E), np.int64)
        reward = np.empty((T, E), np.float32)
        terminated, truncated, first = (np.empty((T, E), bool) for _ in range(3))
        finals: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        finished: list[tuple[float, int]] = []
        for k in range(T):
            actions = self.agent.act(self.obs, self.epsilon)
            out = env.step(actions)
            r = np.sign(out.reward) if cfg.reward_clip else out.reward
            obs[k], action[k], reward[k] = compact(self.obs, self.stack), actions, r
            terminated[k], truncated[k], first[k] = out.terminated, out.truncated, self.first
            if out.truncated.any():
                rows = np.flatnonzero(out.truncated)
                finals[k] = (rows, np.array(compact(out.final_obs, self.stack)[rows]))
            if self.local is not None:
                self.local.add(self.obs, actions, r, out.terminated, out.truncated, self.first, out.final_obs)
            self.first, self.obs = out.episode_end, out.obs
            finished.extend((ret, length) for _, ret, length in out.finished)
        self.steps += T
        tail = np.array(compact(self.obs, self.stack))
        chunk = Chunk(obs, action, reward, terminated, truncated, first, finals, tail,
                      self._initial_priorities(T) if self.local is not None else None)
        acted = time.perf_counter() - started
        replay_size = ray.get(self.replay.add.remote(self.index, self.incarnation, chunk))  # backpressure
        return {"actor": self.index, "incarnation": self.incarnation, "steps": T * E, "finished": finished,
                "seconds": time.perf_counter() - started, "acting_seconds": acted, "version": version,
                "replay_size": replay_size}

    def _initial_priorities(self, T: int) -> np.ndarray | None:
        """Priorities of this incarnation's steps whose n-step future arrived during the chunk: steps
        j = c-n-R .. c-n-1 after c steps, R = min(T, c - n); the server aligns them the same way."""
        R = min(T, self.steps - self.cfg.n_step)
        if R <= 0:
            return None
        batch = self.local.transitions(self.local.ready_ids(R))     # the same n-step targets as sampling
        return self.agent.priorities(batch).reshape(R, self.env.num_envs)


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


def publish_weights(agent: DQNAgent) -> Any:
    """The Q weights as host arrays in Ray's object store; actors fetch them by reference."""
    return ray.put({k: v.numpy() for k, v in agent.policy_state_dict().items()})


# --- the learner ---------------------------------------------------------------------------------

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

    def busy(self) -> bool:
        return bool(self.in_flight)

    def submit(self, collect: Callable[[int], Any], more: Callable[[], bool]) -> None:
        """Ask each idle, live actor that is not waiting out a restart for a chunk (``collect(i)`` returns
        the call's ref), as long as ``more()`` allows."""
        for i in sorted(self.idle - self.dead):
            if self.resting.get(i, 0.0) > time.monotonic():
                continue
            if not more():
                return
            self.in_flight[collect(i)] = i
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
            elif self.run.step >= self.cfg.total_steps and not self.fleet.busy():
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
        coming = self.run.step + len(self.fleet.in_flight) * chunk_steps
        return coming < self.cfg.total_steps and self._owed() <= self.num_actors * chunk_steps // self.cfg.train_frequency

    def _collect(self, i: int) -> Any:
        ref, version = self.published
        return self.fleet.handles[i].collect.remote([ref], version, self.epsilons[i](self.run.step))

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


# --- sweeps: one single-process run per Ray task ----------------------------------------------------

SWEEP_CHECKPOINTS = ("latest", "best")     # what rl-sweep scores in each run: the last network and the best one


def sweep_run(cfg: TrainConfig, run_dir: str, preset: str | None, name: str, threads: int) -> dict[str, Any]:
    """Train one grid point in this (Ray worker) process with the single-process Trainer, then score its
    ``latest.pt`` and ``best.pt`` (the latter only where periodic evaluations wrote one) from disk, as
    ``rl-evaluate FILE --episodes <eval_episodes>`` would. A stopped run is not scored: its network is
    partway. Returns plain data for rl-sweep's table; a failed run is reported, not raised."""
    torch.set_num_threads(cfg.torch_threads or max(1, threads))
    run_dir_ = Path(run_dir)
    result: dict[str, Any] = {"name": name, "seed": cfg.seed, "run_dir": run_dir, "host": socket.gethostname()}
    try:
        prepare_run_dir(run_dir_, cfg, preset)
        trainer = Trainer(cfg, run_dir_, preset=preset, show_progress=False)
        try:
            result["status"] = trainer.train()
            result["step"] = trainer.step
        finally:
            trainer.close()
        if result["status"] == "stopped":
            return result
        files = {"latest": trainer.checkpoints.latest, "best": trainer.checkpoints.best}
        result["eval"] = {}
        for which in SWEEP_CHECKPOINTS:
            if files[which].exists():
                scored = evaluate_checkpoint(files[which], trainer.device)
                result["eval"][which] = {"mean": scored["mean"], "std": scored["std"], "episodes": scored["episodes"],
                                         "epsilon": scored["protocol"]["epsilon"], "seed": scored["protocol"]["seed"]}
    except (TrainingDiverged, RunDirError, ConfigError, ckpt.CheckpointError) as exc:
        result.update(status="failed", error=str(exc))
    return result
