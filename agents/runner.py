"""The training loop: env -> agent.act -> replay -> agent.update -> logger / checkpoint.

The emulators step in their own threads between ``env.send`` and ``env.recv`` while the learner
updates on what the replay already holds. Every action is still chosen after all the updates due so
far, the order of a serial act -> step -> update loop, so the overlap adds no policy lag.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.build import make_agent, make_replay, replay_spec
from agents.dqn import resolve_device
from agents.evaluation import play, protocol_line, score_line
from agents.policy import is_policy_file, load_training_checkpoint
from envs import is_atari, make_env
from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig, dumps_toml, from_dict, load_toml
from rl.logging import Logger, Progress, RateMeter, process_identity, read_evaluations
from rl.schedules import LinearSchedule

EVAL_SEED_OFFSET = 10_000          # evaluation games never share seeds with the run's training games
TENSORBOARD_VIDEO_SECONDS = 20     # TensorBoard gets the start of the filmed game; RUN_DIR/videos all of it


class TrainingDiverged(RuntimeError):
    """A non-finite loss, Q-value or weight; the last good checkpoint is kept."""


class RunDirError(RuntimeError):
    """The run directory could not be written (full disk, permissions); earlier files are intact."""


class StopRequested:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one exits at once
    (every file write is atomic, so nothing is left half written)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            os._exit(128 + signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def updates_due(step: int, cfg: TrainConfig) -> int:
    """Gradient updates owed after ``step`` agent steps: one per train_frequency steps past learning_starts."""
    return max(0, step - cfg.learning_starts) // cfg.train_frequency


class Trainer:
    _clock: float | None = None       # perf_counter() up to which wall_time counts; None outside train()

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, preset: str | None = None, show_progress: bool | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.preset = preset
        self.show_progress = show_progress
        self.device = resolve_device(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg)
        self.agent = make_agent(cfg, self.env.obs_shape, self.env.num_actions, self.device)
        self.replay = make_replay(cfg, replay_spec(cfg, self.env.obs_shape, self.env.obs_dtype, self.env.num_actions),
                                  seed=cfg.seed)
        self.beta = LinearSchedule(cfg.priority_beta_start, cfg.priority_beta_end, cfg.total_steps)
        self.checkpoints = ckpt.CheckpointDir(self.run_dir / "checkpoints", cfg.keep_checkpoints)
        self.step = 0                 # agent steps taken, all envs together
        self.episodes = 0             # full games finished
        self.wall_time = 0.0          # seconds of training, summed over resumed sessions
        self.obs = None
        self.refill_until = 0         # after a resume without replay: no updates before this step
        self.skipped_updates = 0      # updates owed while there was nothing to learn from
        self.resume_note = ""
        self.check_extras(cfg)

    # --- run directory ----------------------------------------------------------------------
    @staticmethod
    def prepare_run_dir(run_dir: Path, cfg: TrainConfig, preset: str | None) -> None:
        """Create a new run directory and write its config; refuse to touch an existing run."""
        Trainer.check_extras(cfg)
        if (run_dir / "config.toml").exists():
            raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; continue it with "
                              f"--resume {run_dir} or choose another --run-dir")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            header = f"# rl-train config (preset: {preset or 'none'}); rl-train --resume {run_dir} continues it\n"
            ckpt.atomic_write(run_dir / "config.toml",
                              lambda f: f.write((header + dumps_toml(dataclasses.asdict(cfg))).encode()))
        except OSError as exc:
            raise ConfigError(f"run directory {str(run_dir)!r} is not writable: {exc.strerror}") from None

    def _write_status(self, status: str) -> None:
        info = {"preset": self.preset, "env": self.cfg.env, "status": status, "step": self.step,
                "total_steps": self.cfg.total_steps, "episodes": self.episodes,
                "wall_time": round(self.wall_time, 1), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **process_identity()}               # lets rl-runs tell a dead "running" run from a live one
        try:
            ckpt.atomic_write(self.run_dir / "run.json", lambda f: f.write(json.dumps(info, indent=1).encode()))
        except OSError as exc:
            raise RunDirError(f"cannot write {self.run_dir / 'run.json'}: {exc.strerror or exc}; "
                              f"earlier checkpoints are intact") from None

    # --- checkpoints ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        meta = {
            "step": self.step, "episodes": self.episodes, "wall_time": self.wall_time, "preset": self.preset,
            "first": self.replay.episode_starts(), "env": self.env.state_dict(),
            "refill_until": self.refill_until, "skipped_updates": self.skipped_updates,
            "agent_rng": self.agent.exploration_state(),
        }
        return {"config": dataclasses.asdict(self.cfg), "agent": self.agent.state_dict(),
                "torch_rng": torch.get_rng_state(), "meta": ckpt.encode_meta(meta)}

    def check_finite(self, metrics: dict[str, float] | None = None) -> None:
        """Refuse to go on (or to save) once a loss, Q-value or weight is NaN or infinite."""
        bad = {k: v for k, v in (metrics or {}).items() if not math.isfinite(v)}
        if not bad and not self.agent.weights_finite():
            bad = {"weights": float("nan")}
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            kept = self.checkpoints.latest if self.checkpoints.latest.exists() else "none written yet"
            raise TrainingDiverged(f"non-finite values at step {self.step} ({shown}); training stopped, "
                                   f"last good checkpoint: {kept}")

    def save(self, periodic: bool = False) -> Path:
        self.check_finite()
        try:
            # replay first: latest.pt must never point at a replay that is not on disk yet
            if self.cfg.save_replay:
                self.checkpoints.save_replay(self.replay.state_dict(), self.step)
            return self.checkpoints.save(self.payload(), self.step, periodic)
        except OSError as exc:
            raise RunDirError(f"cannot write a checkpoint in {self.checkpoints.root}: {exc.strerror or exc}; "
                              f"earlier checkpoints are intact") from None

    def restore(self) -> None:
        """Continue from ``latest.pt``: weights, optimizer, counters, RNGs, env state and replay."""
        payload = load_training_checkpoint(self.checkpoints.latest, self.device)
        meta = ckpt.decode_meta(payload["meta"])
        self.agent.load_state_dict(payload["agent"])
        self.agent.load_exploration_state(meta["agent_rng"])
        torch.set_rng_state(payload["torch_rng"])
        self.step, self.episodes, self.wall_time = meta["step"], meta["episodes"], meta["wall_time"]
        self.preset = self.preset or meta.get("preset")     # --resume names no preset: keep the run's own
        self.replay.restart_episodes(meta["first"])
        self.refill_until, self.skipped_updates = meta["refill_until"], meta["skipped_updates"]
        self.obs = self.env.load_state_dict(meta["env"])
        saved = self.checkpoints.load_replay(self.step)
        if saved is not None:
            self.replay.load_state_dict(saved)
            self.resume_note = f"replay restored ({len(self.replay)} transitions)"
        else:
            # Without a saved replay, learning pauses until learning_starts fresh steps refill it.
            self.refill_until = self.step + self.cfg.learning_starts
            self.resume_note = (f"no replay saved with this checkpoint: refilling {self.cfg.learning_starts} "
                                f"steps before updates resume")

    def _tick(self) -> None:
        """Bring wall_time up to now while train() runs, so checkpoints and evaluations record the seconds
        trained so far (evaluations and checkpoints included)."""
        if self._clock is not None:
            now = time.perf_counter()
            self.wall_time += now - self._clock
            self._clock = now

    # --- diagnostics and periodic evaluation --------------------------------------------------
    @staticmethod
    def check_extras(cfg: TrainConfig) -> None:
        """Refuse, before any work, a config that needs an optional package that is missing."""
        if cfg.eval_video:
            from envs.video import require_video
            require_video("eval_video = true", control=not is_atari(cfg.env))

    def _log_diagnostics(self, logger: Logger, metrics: dict[str, torch.Tensor]) -> None:
        """At log time only (one host copy each): histograms of Q(s, .) over the envs' current states and of
        the last update's TD errors, and how full the replay is."""
        logger.histogram("histograms/q_values", self.agent.q_values(self.obs), self.step)
        if "td_error" in metrics:
            logger.histogram("histograms/td_error", metrics["td_error"], self.step)
        logger.scalars({"charts/replay_fill": len(self.replay) / self.cfg.buffer_size}, self.step)

    def evaluate(self, logger: Logger, progress: Progress | None = None) -> dict[str, Any]:
        """Score the current network with rl-evaluate's protocol on its own env and seed; log eval/* to
        TensorBoard and append the results to evaluations.jsonl, which rl-runs reads. A mean above every
        earlier one in evaluations.jsonl saves the network as ``best.pt``: DQN's final network is not always
        its best (CartPole's can collapse late), and a user evaluating a run wants the one that scored."""
        cfg = self.cfg
        video = self.run_dir / "videos" / f"eval_step_{self.step}.mp4" if cfg.eval_video else None
        self._tick()
        wall_time = round(self.wall_time, 1)                # when this network was current, for rl-runs --plot
        try:
            results = play(lambda env: self.agent, cfg, episodes=cfg.eval_episodes, epsilon=cfg.eval_epsilon,
                           seed=cfg.seed + EVAL_SEED_OFFSET, num_envs=cfg.num_envs, video=video, video_episodes=1)
            results["step"] = self.step
            results["wall_time"] = wall_time
            results["best"] = results["mean"] > max((r["mean"] for r in read_evaluations(self.run_dir)),
                                                    default=-math.inf)
            if results["best"]:
                self.check_finite()
                self.checkpoints.save_best(self.payload())
            if video is not None:
                results["video"]["path"] = str(video.relative_to(self.run_dir))    # the run dir may move
            with open(self.run_dir / "evaluations.jsonl", "a") as f:
                f.write(json.dumps(results) + "\n")
            if video is not None:
                from envs.video import encode_gif, read_frames
                clip = read_frames(video, limit=int(TENSORBOARD_VIDEO_SECONDS * results["video"]["fps"]))
                logger.video("eval/video", encode_gif(clip, results["video"]["fps"]), *clip.shape[1:3], self.step)
        except OSError as exc:
            raise RunDirError(f"cannot write the evaluation at step {self.step} in {self.run_dir}: "
                              f"{exc.strerror or exc}; earlier checkpoints are intact") from None
        values = {"eval/mean_return": results["mean"], "eval/std_return": results["std"]}
        if "human_normalized" in results:
            values["eval/human_normalized"] = results["human_normalized"]
        logger.scalars(values, self.step)
        if progress is not None:
            best = ", the best so far: saved as checkpoints/best.pt" if results["best"] else ""
            progress.write(f"eval at step {self.step:,}: {score_line(results)}{best}\n  {protocol_line(results)}")
        return results

    def reached_target(self, results: dict[str, Any]) -> bool:
        """Whether an evaluation's mean return reaches ``target_return`` (when one is set)."""
        return self.cfg.target_return != 0 and results["mean"] >= self.cfg.target_return

    # --- the loop -------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> str:
        """Run until total_steps, a stop request, ``stop_at`` agent steps, or a periodic evaluation that reaches
        ``target_return``. Returns "finished", "stopped" or "solved"."""
        cfg = self.cfg
        if self.obs is None:
            self.obs = self.env.reset()
        logger = Logger(self.run_dir, purge_step=self.step if self.step else None)
        if self.step == 0:
            logger.text("config", "```\n" + dumps_toml(dataclasses.asdict(cfg)) + "```")
            self.agent.add_graph(logger, self.obs[:1])
        progress = Progress(cfg.total_steps, initial=self.step, disable=self.show_progress is False or None)
        self._write_status("running")
        self._clock = time.perf_counter()
        try:
            status = self._loop(stop_at, logger, progress)
        except (TrainingDiverged, RunDirError):
            with contextlib.suppress(RunDirError):
                self._write_status("failed")
            raise
        finally:
            self._tick()
            self._clock = None
            progress.close()
            logger.flush()
            logger.close()
        self.save(periodic=False)
        self._write_status(status)
        return status

    def _loop(self, stop_at: int | None, logger: Logger, progress: Progress) -> str:
        cfg, env, agent, replay = self.cfg, self.env, self.agent, self.replay
        rate = RateMeter(self.step)
        next_log = (self.step // cfg.log_every + 1) * cfg.log_every
        next_checkpoint = (self.step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        next_eval = (self.step // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else math.inf
        metrics: dict[str, torch.Tensor] = {}
        status = "finished"
        with StopRequested() as stop:
            while self.step < cfg.total_steps:
                epsilon = agent.epsilon(self.step)
                actions = agent.act(self.obs, epsilon)
                env.send(actions)                                   # emulators run from here ...
                lr = agent.set_step(self.step)
                due = updates_due(self.step, cfg) - self.skipped_updates
                if self.step < self.refill_until or len(replay) < cfg.batch_size:
                    self.skipped_updates += due - agent.updates     # nothing to learn from yet: forgive them
                else:
                    while agent.updates < due:
                        if cfg.prioritized:
                            batch = replay.sample(cfg.batch_size, beta=self.beta(self.step))
                            metrics = agent.update(batch)
                            replay.update_priorities(batch.index, metrics["priority"].float().cpu().numpy())
                        else:
                            metrics = agent.update(replay.sample(cfg.batch_size))
                    agent.steps_done(self.step, self.step + cfg.num_envs)   # a hard target syncs here
                out = env.recv()                                    # ... to here
                reward = np.sign(out.reward) if cfg.reward_clip else out.reward
                replay.add_step(self.obs, actions, reward, out)
                self.obs = out.obs
                self.step += cfg.num_envs
                returns = [r for _, r, _ in out.finished]
                for _, ret, length in out.finished:
                    self.episodes += 1
                    logger.scalars({"charts/episodic_return": ret, "charts/episodic_length": length}, self.step)
                progress.update(cfg.num_envs, returns)

                if self.step >= next_log:
                    next_log += cfg.log_every
                    values = {"charts/epsilon": epsilon, "charts/learning_rate": lr, "charts/SPS": rate(self.step),
                              "charts/episodes": self.episodes, "charts/replay_size": len(replay)}
                    if metrics:
                        host = {k: v.item() for k, v in metrics.items() if v.dim() == 0}
                        self.check_finite(host)
                        values.update({f"losses/{k}": v for k, v in host.items()})
                        values["charts/updates"] = agent.updates
                    logger.scalars(values, self.step)
                    self._log_diagnostics(logger, metrics)
                if self.step >= next_eval:
                    next_eval += cfg.eval_every
                    paused = time.perf_counter()
                    results = self.evaluate(logger, progress)
                    rate.last_time += time.perf_counter() - paused  # SPS counts training time only
                    if self.reached_target(results):
                        status = "solved"
                        break
                if self.step >= next_checkpoint:
                    next_checkpoint += cfg.checkpoint_every
                    self._tick()
                    self.save(periodic=True)
                    self._write_status("running")
                if stop.requested or (stop_at is not None and self.step >= stop_at and self.step < cfg.total_steps):
                    status = "stopped"
                    break
        return status

    def close(self) -> None:
        self.env.close()


def load_run_config(run_dir: Path) -> TrainConfig:
    if run_dir.is_file():
        policy = is_policy_file(run_dir)
        what = "a weights-only policy file (rl-export), which cannot be resumed" if policy else "a file"
        raise ConfigError(f"--resume {str(run_dir)!r} is {what}; pass the run directory rl-train wrote (it holds "
                          f"config.toml and checkpoints/latest.pt)")
    path = run_dir / "config.toml"
    if not path.exists():
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.toml there; pass a directory made by rl-train")
    return from_dict(TrainConfig, load_toml(path))
