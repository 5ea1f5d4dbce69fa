"""Ape-X's settings and Ray plumbing: the layout check, each actor's epsilon, the connection to a cluster,
and the helpers for what crosses Ray's object store."""
from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import ray

from agents.dqn import DQNAgent
from envs import is_atari
from rl.config import ConfigError, TrainConfig
from rl.replay import Batch
from rl.schedules import LinearSchedule


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
    if cfg.replay_device == "device":
        raise ConfigError(f"replay_device = 'device' is not allowed with --actors {actors}: the Ape-X replay actor "
                          f"keeps host (numpy) replays; use auto or host")
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


def writable_batch(batch: Batch) -> Batch:
    """Arrays Ray hands back are read-only views of its object store; torch wants writable memory."""
    return Batch(*(np.require(a, requirements="W") for a in batch))


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2^31) for one part of the run (an actor's incarnation, a replay buffer) from the run's."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def worker_identity() -> dict[str, Any]:
    """Where this worker runs: pid, host and node address, for distributed.json and the curious."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.util.get_node_ip_address()}


def publish_weights(agent: DQNAgent) -> Any:
    """The Q weights as host arrays in Ray's object store; actors fetch them by reference."""
    return ray.put({k: v.numpy() for k, v in agent.policy_state_dict().items()})
