"""The single-process training loop: env -> agent.act -> replay -> agent.update, on the shared run
skeleton (agents/run.py: logging, evaluation, checkpoints, stop, resume).

The emulators step in their own threads between ``env.send`` and ``env.recv`` while the learner
updates on what the replay already holds. Every action is still chosen after all the updates due so
far, the order of a serial act -> step -> update loop, so the overlap adds no policy lag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.build import make_agent, make_replay, replay_spec
from agents.dqn import resolve_device
from agents.run import Loop, Run, RunOwner
from envs import make_env
from envs.base import EnvStep
from rl.config import TrainConfig
from rl.device_replay import DeviceReplayBuffer
from rl.schedules import LinearSchedule


class Trainer(RunOwner):
    """One process: its vector env, the agent, the replay, and the run they train in."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, preset: str | None = None, show_progress: bool | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg)
        self.agent = make_agent(cfg, self.env.obs_shape, self.env.num_actions, self.device)
        self.replay = make_replay(cfg, replay_spec(cfg, self.env.obs_shape, self.env.obs_dtype, self.env.num_actions,
                                                   self.env.frame_stack), seed=cfg.seed, device=self.device)
        self.beta = LinearSchedule(cfg.priority_beta_start, cfg.priority_beta_end, cfg.total_steps)
        self.run = Run(cfg, run_dir, self.agent, preset=preset, show_progress=show_progress, meta=self._meta,
                       replay=self.replay)
        self.obs: np.ndarray | None = None      # what the agent acts on next

    # --- checkpoints: the run's, plus the env, the replay's streams and the exploration RNG -----
    def _meta(self) -> dict[str, Any]:
        return {"first": self.replay.episode_starts(), "env": self.env.state_dict(),
                "agent_rng": self.agent.exploration_state()}

    def restore(self) -> None:
        """Continue from ``latest.pt``: weights, optimizer, counters, RNGs, replay and env state."""
        meta = self.run.load(self.device)
        self.agent.load_exploration_state(meta["agent_rng"])
        self.replay.restart_episodes(meta["first"])
        self.obs = self.env.load_state_dict(meta["env"])

    # --- the loop -------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> str:
        """Run until total_steps, a stop request, ``stop_at`` agent steps, or a periodic evaluation that reaches
        ``target_return``. Returns "finished", "stopped" or "solved"."""
        if self.obs is None:
            self.obs = self.env.reset()
        return self.run.train(self._loop, stop_at, self.obs)

    def _loop(self, loop: Loop) -> str:
        cfg, env, agent, run = self.cfg, self.env, self.agent, self.run
        metrics: dict[str, torch.Tensor] = {}
        while run.step < cfg.total_steps:
            epsilon = agent.epsilon(run.step)
            actions = agent.act(self.obs, epsilon)
            env.send(actions)                                   # emulators run from here ...
            lr = agent.set_step(run.step)
            if not run.pause_learning(len(self.replay)):
                metrics = self._learn(run.updates_owed()) or metrics
                agent.steps_done(run.step, run.step + cfg.num_envs)     # a hard target syncs here
            out = env.recv()                                    # ... to here
            self._store(actions, out, loop)
            status = loop.end_of_step(lambda: self._log(loop, metrics, epsilon, lr))
            if status is not None:
                return status
        return "finished"

    def _learn(self, updates: int) -> dict[str, torch.Tensor]:
        """``updates`` gradient steps on fresh batches (priorities written back after each, when prioritized);
        returns the last one's metrics ({} for none)."""
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(updates):
            if self.cfg.prioritized:
                batch = self.replay.sample(self.cfg.batch_size, beta=self.beta(self.run.step))
                metrics = self.agent.update(batch)
                self.replay.update_priorities(batch.index, self._on_replay_side(metrics["priority"].float()))
            else:
                metrics = self.agent.update(self.replay.sample(self.cfg.batch_size))
        return metrics

    def _on_replay_side(self, x: torch.Tensor):
        """A tensor the update returned, where the replay keeps its priorities: as is for a device replay, else
        a host numpy array (one copy)."""
        return x if isinstance(self.replay, DeviceReplayBuffer) else x.cpu().numpy()

    def _store(self, actions: np.ndarray, out: EnvStep, loop: Loop) -> None:
        """The step just taken goes into the replay (reward clipped if the config says so); count it."""
        reward = np.sign(out.reward) if self.cfg.reward_clip else out.reward
        self.replay.add_step(self.obs, actions, reward, out)
        self.obs = out.obs
        loop.record(self.cfg.num_envs, [(ret, length) for _, ret, length in out.finished])

    def _log(self, loop: Loop, metrics: dict[str, torch.Tensor], epsilon: float, lr: float) -> None:
        run = self.run
        values = {"charts/epsilon": epsilon, "charts/learning_rate": lr, "charts/SPS": loop.rate(run.step),
                  "charts/episodes": run.episodes, "charts/replay_size": len(self.replay)}
        if metrics:
            values["charts/updates"] = self.agent.updates
        loop.log(values, metrics, len(self.replay))
        # at log time only (one host copy): Q(s, .) over the envs' current states
        loop.logger.histogram("histograms/q_values", self.agent.q_values(self.obs), run.step)

    def close(self) -> None:
        self.env.close()
