"""One Ape-X actor, a Ray actor: its own envs, an acting copy of the agent, chunks to the replay server."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from agents.build import make_agent, replay_spec
from agents.distributed.chunk import ChunkRecorder
from agents.distributed.cluster import actor_epsilon_schedules, derived_seed, worker_identity
from envs import make_env
from rl.config import TrainConfig
from rl.replay import ReplayBuffer


class ActorWorker:
    """One Ape-X actor: its own vector env and a copy of the agent used only to act (and, with prioritized
    replay, to compute initial priorities). Ray restarts it after a crash; the new incarnation registers
    with the replay server, which cuts the streams the old one left open, and plays fresh episodes.
    A plain class: ray.remote wraps it at start, so it unit-tests without a cluster."""

    def __init__(self, cfg: TrainConfig, index: int, actors: int, replay_name: str):
        torch.set_num_threads(1)                # acting is one small forward pass per vector step
        # looked up by name: a handle passed in would be a constructor argument Ray may be unable to
        # restore for a restart (ray-project/ray#53727)
        self.cfg, self.index, self.replay = cfg, index, ray.get_actor(replay_name)
        self.incarnation = ray.get(self.replay.register.remote(index))
        seed = derived_seed(cfg.seed, 1 + index, self.incarnation)
        torch.manual_seed(seed)
        self.env = make_env(cfg, seed=seed)
        self.agent = make_agent(cfg, self.env.obs_shape, self.env.num_actions, "cpu", seed=seed)  # own exploration
        self.epsilon = actor_epsilon_schedules(cfg, actors)[index](0)   # the learner sends the current one
        self.stack = self.env.frame_stack
        self.version = -1                                     # learner updates behind the weights held
        self.obs = self.env.reset()
        self.steps = 0                                        # vector steps taken by this incarnation
        self.local = None
        if cfg.prioritized:   # the recent steps, to rebuild the stacks and n-step returns priorities need
            slots = cfg.actor_chunk_steps + self.stack + cfg.n_step + 1
            self.local = ReplayBuffer(replay_spec(cfg, self.env.obs_shape, self.env.obs_dtype,
                                                  self.env.num_actions, self.stack, slots * self.env.num_envs))
        self.recorder = ChunkRecorder(self.env.num_envs, self.stack, self.local)

    def identity(self) -> dict[str, Any]:
        return {**worker_identity(), "actor": self.index, "incarnation": self.incarnation, "epsilon": self.epsilon}

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
        self.recorder.begin(T, self.obs)
        finished: list[tuple[float, int]] = []
        for _ in range(T):
            actions = self.agent.act(self.obs, self.epsilon)
            out = env.step(actions)
            self.recorder.add_step(self.obs, actions, np.sign(out.reward) if cfg.reward_clip else out.reward, out)
            self.obs = out.obs
            finished.extend((ret, length) for _, ret, length in out.finished)
        self.steps += T
        chunk = self.recorder.chunk(self.obs, self._initial_priorities(T) if self.local is not None else None)
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
