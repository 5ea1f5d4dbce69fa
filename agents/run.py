"""What every training loop shares, whatever produces its experience: the run directory (config.toml,
run.json), the counters, checkpoints and resume, periodic evaluation (best.pt), the divergence check, the
update schedule, and the tail each loop step ends with (log, evaluate, checkpoint, stop).

The single-process Trainer (agents/runner.py) and the Ape-X learner (agents/distributed/learner.py) each
hold a :class:`Run` and drive it from their own loop; :meth:`Run.train` wraps that loop in a logger, a
progress bar, a stop request and run.json's status, and hands it a :class:`Loop`.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.build import validated
from agents.dqn import DQNAgent
from agents.evaluation import play, protocol_line, score_line
from agents.policy import is_policy_file, load_training_checkpoint
from envs import is_atari
from rl import checkpoint as ckpt
from rl import numerics
from rl.config import (
    ConfigError,
    TrainConfig,
    base_config,
    dumps_toml,
    format_value,
    from_dict,
    load_toml,
    resumable_keys,
    session_keys,
)
from rl.logging import RECENT_GAMES, Logger, Progress, RateMeter, process_identity, read_evaluations
from rl.replay import ReplayBuffer

EVAL_SEED_OFFSET = 10_000          # evaluation games never share seeds with the run's training games
# what evaluations.jsonl keeps of the online weights' play beside the average's (eval_online)
ONLINE_FIGURES = ("mean", "std", "median", "min", "max", "episodes", "returns", "lengths", "human_normalized")
HEARTBEAT_SECONDS = 30.0           # how often a running run brings run.json up to date (rl-runs reads it)
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


def check_extras(cfg: TrainConfig) -> None:
    """Refuse, before any work, a config that needs an optional package that is missing."""
    if cfg.eval_video:
        from envs.video import require_video
        require_video("eval_video = true", control=not is_atari(cfg.env))


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, preset: str | None) -> None:
    """Create a new run directory and write its config; refuse to touch an existing run."""
    check_extras(cfg)
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


def load_run_config(run_dir: Path) -> TrainConfig:
    """The config a run directory was trained with (``--resume``)."""
    if run_dir.is_file():
        policy = is_policy_file(run_dir)
        what = "a weights-only policy file (rl-export), which cannot be resumed" if policy else "a file"
        raise ConfigError(f"--resume {str(run_dir)!r} is {what}; pass the run directory rl-train wrote (it holds "
                          f"config.toml and checkpoints/latest.pt)")
    path = run_dir / "config.toml"
    if not path.exists():
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.toml there; pass a directory made by rl-train")
    return from_dict(TrainConfig, load_toml(path))


def new_config(preset: str | None, config_file: str | Path | None, overrides: dict[str, Any]
               ) -> tuple[TrainConfig, str]:
    """defaults <- preset (breakout unless named) <- config file <- ``overrides``, validated; and the preset."""
    cfg, preset = base_config(preset, config_file)
    return validated(from_dict(TrainConfig, overrides, base=cfg)), preset


def resumed_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides`` of resumable settings only, validated."""
    resumable = resumable_keys()
    fixed = sorted(set(overrides) - resumable)
    if fixed:
        raise ConfigError(f"{fixed[0]} cannot change when resuming; resumable: {', '.join(sorted(resumable))}")
    return validated(from_dict(TrainConfig, overrides, base=load_run_config(run_dir)))


def record_resume(run_dir: Path, cfg: TrainConfig, step: int) -> list[str]:
    """Write the resumable settings a resume changed into ``run_dir``'s config.toml, with a comment naming the
    step, so the next ``--resume`` keeps them (session settings, such as threads, are left as the file has them).
    Returns the changes as ``key = new (was old)``."""
    path = run_dir / "config.toml"
    saved = load_toml(path)
    before = from_dict(TrainConfig, saved)
    changed = {key: getattr(cfg, key) for key in sorted(resumable_keys() - session_keys())
               if getattr(before, key) != getattr(cfg, key)}
    if not changed:
        return []
    notes = [f"{key} = {format_value(value)} (was {format_value(getattr(before, key))})"
             for key, value in changed.items()]
    header = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#"))
    header += f"# resumed at step {step:,} with {'; '.join(notes)}\n"
    try:
        ckpt.atomic_write(path, lambda f: f.write((header + dumps_toml({**saved, **changed})).encode()))
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}; the run's files are intact") from None
    return notes


class Every:
    """Due once each time the agent step count reaches the next multiple of ``period`` (never for 0)."""

    def __init__(self, period: int, step: int):
        self.period = period
        self.next = (step // period + 1) * period if period else math.inf

    def due(self, step: int) -> bool:
        if step < self.next:
            return False
        self.next = (step // self.period + 1) * self.period
        return True


class Run:
    """A training run's state and duties, apart from where its experience comes from.

    ``meta`` returns the owner's own checkpoint counters (merged into the run's); ``replay``, when given,
    is saved beside each checkpoint where ``save_replay`` asks for it.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, agent: DQNAgent, *, preset: str | None,
                 show_progress: bool | None, meta: Callable[[], dict[str, Any]], replay: ReplayBuffer | None = None):
        check_extras(cfg)
        self.cfg, self.run_dir, self.agent = cfg, Path(run_dir), agent
        self.preset, self.show_progress = preset, show_progress
        self.owner_meta, self.replay = meta, replay
        self.checkpoints = ckpt.CheckpointDir(self.run_dir / "checkpoints", cfg.keep_checkpoints)
        self.step = 0                 # agent steps taken (by every env, or every actor, together)
        self.episodes = 0             # full games finished
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=RECENT_GAMES)  # raw, newest last
        self.wall_time = 0.0          # seconds of training, summed over resumed sessions
        self.refill_until = 0         # after a resume without replay: no updates before this step
        self.skipped_updates = 0      # updates owed while there was nothing to learn from
        self.resume_note = ""
        self.saved_step: int | None = None   # the step latest.pt holds: where a resume would continue
        self.sps: float | None = None         # agent steps/s over the last heartbeat, everything included
        self._clock: float | None = None   # perf_counter() up to which wall_time counts; None outside train()

    # --- run.json and the clock ------------------------------------------------------------
    def write_status(self, status: str) -> None:
        info = {"preset": self.preset, "env": self.cfg.env, "status": status, "step": self.step,
                "total_steps": self.cfg.total_steps, "checkpoint_step": self.saved_step, "episodes": self.episodes,
                "wall_time": round(self.wall_time, 1), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **process_identity()}               # lets rl-runs tell a dead "running" run from a live one
        if status == "running" and self.sps is not None:
            info["sps"] = round(self.sps, 1)
        if (train := self.training_return()) is not None:
            info["train_return"] = round(train["mean"], 2)
            info["train_games"] = train["games"]
        try:
            ckpt.atomic_write(self.run_dir / "run.json", lambda f: f.write(json.dumps(info, indent=1).encode()))
        except OSError as exc:
            raise RunDirError(f"cannot write {self.run_dir / 'run.json'}: {exc.strerror or exc}; "
                              f"earlier checkpoints are intact") from None

    def training_return(self) -> dict[str, Any] | None:
        """The training games' own score over the last ``RECENT_GAMES`` (mean, std over games, games), as SB3
        logs ep_rew_mean; None before the first game ends."""
        if not self.recent_returns:
            return None
        games = np.array(self.recent_returns)
        return {"mean": float(games.mean()), "std": float(games.std()), "games": int(games.size)}

    def tick(self) -> None:
        """Bring wall_time up to now while train() runs, so checkpoints and evaluations record the seconds
        trained so far (evaluations and checkpoints included)."""
        if self._clock is not None:
            now = time.perf_counter()
            self.wall_time += now - self._clock
            self._clock = now

    # --- checkpoints ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        meta = {"step": self.step, "episodes": self.episodes, "wall_time": self.wall_time, "preset": self.preset,
                "refill_until": self.refill_until, "skipped_updates": self.skipped_updates,
                "recent_returns": list(self.recent_returns), **self.owner_meta()}
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
            if self.replay is not None and self.cfg.save_replay:
                self.checkpoints.save_replay(self.replay.state_dict(), self.step)
            path = self.checkpoints.save(self.payload(), self.step, periodic)
        except OSError as exc:
            raise RunDirError(f"cannot write a checkpoint in {self.checkpoints.root}: {exc.strerror or exc}; "
                              f"earlier checkpoints are intact") from None
        self.saved_step = self.step
        return path

    def load(self, device: torch.device) -> dict[str, Any]:
        """Continue from ``latest.pt``: the agent (weights, optimizer, updates), torch's RNG, the run's counters
        and the run's replay where one was saved with it (else learning pauses for a refill). Returns the
        checkpoint's meta for the owner's own part."""
        payload = load_training_checkpoint(self.checkpoints.latest, device)
        meta = ckpt.decode_meta(payload["meta"])
        self.agent.load_state_dict(payload["agent"])
        torch.set_rng_state(payload["torch_rng"])
        self.step, self.episodes, self.wall_time = meta["step"], meta["episodes"], meta["wall_time"]
        self.recent_returns.extend(meta.get("recent_returns", []))     # older checkpoints have none
        self.saved_step = self.step
        self.preset = self.preset or meta.get("preset")     # --resume names no preset: keep the run's own
        self.refill_until, self.skipped_updates = meta.get("refill_until", 0), meta.get("skipped_updates", 0)
        if self.replay is not None:
            saved = self.checkpoints.load_replay(self.step)
            if saved is None:
                self.refill("no replay saved with this checkpoint")
            else:
                self.replay.load_state_dict(saved)
                self.resume_note = f"replay restored ({len(self.replay)} transitions)"
        recorded = record_resume(self.run_dir, self.cfg, self.step)
        if recorded:
            kept = f"config.toml now keeps {'; '.join(recorded)}"
            self.resume_note = f"{self.resume_note}; {kept}" if self.resume_note else kept
        return meta

    def refill(self, why: str) -> None:
        """Resumed without the replay (``why``): learning pauses until learning_starts fresh steps refill it."""
        self.refill_until = self.step + self.cfg.learning_starts
        self.resume_note = f"{why}: refilling {self.cfg.learning_starts} steps before updates resume"

    # --- the update schedule --------------------------------------------------------------
    def pause_learning(self, replay_size: int) -> bool:
        """Whether there is nothing to learn from yet (a refill after a resume, or fewer transitions than a
        batch); the updates owed meanwhile are forgiven, not caught up later."""
        if self.step < self.refill_until or replay_size < self.cfg.batch_size:
            self.skipped_updates += self.updates_owed()
            return True
        return False

    def updates_owed(self) -> int:
        """Updates the schedule asks for now and the agent has not taken."""
        return max(0, updates_due(self.step, self.cfg) - self.skipped_updates - self.agent.updates)

    # --- evaluation -----------------------------------------------------------------------
    def evaluate(self, logger: Logger, progress: Progress | None = None) -> dict[str, Any]:
        """Score the current network with rl-evaluate's protocol on its own env and seed; log eval/* to
        TensorBoard and append the results to evaluations.jsonl, which rl-runs reads. A mean above every
        earlier one in evaluations.jsonl saves the network as ``best.pt``: DQN's final network is not always
        its best (CartPole's can collapse late), and a user evaluating a run wants the one that scored."""
        cfg = self.cfg
        video = self.run_dir / "videos" / f"eval_step_{self.step}.mp4" if cfg.eval_video else None
        self.tick()
        wall_time = round(self.wall_time, 1)                # when this network was current, for rl-runs --plot
        played = functools.partial(play, lambda env: self.agent, cfg, episodes=cfg.eval_episodes,
                                   epsilon=cfg.eval_epsilon, seed=cfg.seed + EVAL_SEED_OFFSET, num_envs=cfg.num_envs)
        try:
            results = played(video=video, video_episodes=1)
            results["step"] = self.step
            results["wall_time"] = wall_time
            if (train := self.training_return()) is not None:   # the record alone then carries the curve
                results["train"] = train
            if cfg.eval_ema > 0 and cfg.eval_online:      # the same seeds (env, exploration) by the online weights
                online = played(online=True)
                results["online"] = {k: online[k] for k in ONLINE_FIGURES if k in online}
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
        if "online" in results:
            values["eval/online_mean_return"] = results["online"]["mean"]
        if "human_normalized" in results:
            values["eval/human_normalized"] = results["human_normalized"]
        logger.scalars(values, self.step)
        if progress is not None:
            best = ", the best so far: saved as checkpoints/best.pt" if results["best"] else ""
            progress.write(f"eval at step {self.step:,}: {score_line(results)}{best}\n  {protocol_line(results)}")
            if "online" in results:
                progress.write(f"  the online weights, the same seeds: {score_line(results['online'])}")
        return results

    def reached_target(self, results: dict[str, Any]) -> bool:
        """Whether an evaluation's mean return reaches ``target_return`` (when one is set)."""
        return self.cfg.target_return != 0 and results["mean"] >= self.cfg.target_return

    # --- the loop -------------------------------------------------------------------------
    def train(self, body: Callable[[Loop], str], stop_at: int | None, example_obs: np.ndarray) -> str:
        """Run ``body`` (the owner's loop) under a logger, a progress bar and a stop request, keeping run.json
        and wall_time current; a finished, stopped or solved run ends with a checkpoint."""
        cfg = self.cfg
        logger = Logger(self.run_dir, purge_step=self.step if self.step else None)
        if self.step == 0:
            logger.text("config", "```\n" + dumps_toml(dataclasses.asdict(cfg)) + "```")
            self.agent.add_graph(logger, example_obs[:1])
        progress = Progress(cfg.total_steps, initial=self.step, disable=self.show_progress is False or None)
        self.write_status("running")
        self._clock = time.perf_counter()
        try:
            with StopRequested() as stop:
                status = body(Loop(self, logger, progress, stop, stop_at))
        except (TrainingDiverged, RunDirError):
            with contextlib.suppress(RunDirError):
                self.write_status("failed")
            raise
        finally:
            self.tick()
            self._clock = None
            progress.close()
            logger.flush()
            logger.close()
        self.save(periodic=False)
        self.write_status(status)
        return status


class RunOwner:
    """What callers read of a trainer that holds its :class:`Run` as ``self.run``."""

    run: Run

    @property
    def step(self) -> int:
        """Agent steps taken so far."""
        return self.run.step

    @property
    def checkpoints(self) -> ckpt.CheckpointDir:
        return self.run.checkpoints

    @property
    def resume_note(self) -> str:
        """What :meth:`restore` did about the replay, for rl-train to print."""
        return self.run.resume_note


@contextlib.contextmanager
def training(make: Callable[[], Any]) -> Iterator[Any]:
    """The trainer ``make()`` builds, closed after the block, with subnormal floats flushed to zero
    (``rl.numerics``) from before it is built: torch starts its worker threads while the trainer builds
    its network, and only threads started inside the flush flush too."""
    with numerics.subnormals_flushed():
        trainer = make()
        try:
            yield trainer
        finally:
            trainer.close()


class Loop:
    """One :meth:`Run.train` call, as its loop body sees it: the logger, progress bar, SPS meter and stop
    request, what each step records, and the tail each step ends with."""

    def __init__(self, run: Run, logger: Logger, progress: Progress, stop: StopRequested, stop_at: int | None):
        self.run, self.logger, self.progress, self.stop, self.stop_at = run, logger, progress, stop, stop_at
        self.rate = RateMeter(run.step)
        cfg = run.cfg
        self.log_due = Every(cfg.log_every, run.step)
        self.eval_due = Every(cfg.eval_every, run.step)
        self.checkpoint_due = Every(cfg.checkpoint_every, run.step)
        self.beat = (run.step, time.perf_counter())   # the last heartbeat: step and time

    def record(self, steps: int, games: list[tuple[float, int]], actor: int | None = None) -> None:
        """Count ``steps`` more agent steps and the games that ended in them (return, length), on TensorBoard
        (per actor too, for an Ape-X actor) and the progress bar."""
        run = self.run
        run.step += steps
        for ret, length in games:
            run.episodes += 1
            run.recent_returns.append(ret)
            values = {"charts/episodic_return": ret, "charts/episodic_length": length}
            if actor is not None:
                values[f"distributed/actor_{actor}/episodic_return"] = ret
            self.logger.scalars(values, run.step)
        self.progress.update(steps, [ret for ret, _ in games])

    def log(self, values: dict[str, float], metrics: dict[str, torch.Tensor], replay_size: int) -> None:
        """Log ``values`` with the last update's losses (one host copy each, checked for NaN), its TD errors'
        histogram and how full the replay is."""
        run = self.run
        if metrics:
            host = {k: v.item() for k, v in metrics.items() if v.dim() == 0}
            run.check_finite(host)
            values.update({f"losses/{k}": v for k, v in host.items()})
        self.logger.scalars(values, run.step)
        if "td_error" in metrics:
            self.logger.histogram("histograms/td_error", metrics["td_error"], run.step)
        self.logger.scalars({"charts/replay_fill": replay_size / run.cfg.buffer_size}, run.step)

    def end_of_step(self, log: Callable[[], None]) -> str | None:
        """The tail of every loop step, in this order: ``log()`` every log_every steps, an evaluation every
        eval_every steps ('solved' once one reaches target_return), a checkpoint every checkpoint_every steps,
        and 'stopped' on a stop request or at ``stop_at``. Returns the status that ends the loop, or None."""
        run = self.run
        if self.log_due.due(run.step):
            log()
            self.heartbeat()
        if self.eval_due.due(run.step):
            paused = time.perf_counter()
            results = run.evaluate(self.logger, self.progress)
            self.rate.exclude(time.perf_counter() - paused)          # SPS counts training time only
            if run.reached_target(results):
                return "solved"
        if self.checkpoint_due.due(run.step):
            run.tick()
            run.save(periodic=True)
            run.write_status("running")
        if self.stop.requested or (self.stop_at is not None and self.stop_at <= run.step < run.cfg.total_steps):
            return "stopped"
        return None

    def heartbeat(self) -> None:
        """At most every HEARTBEAT_SECONDS, write run.json's step, wall time and speed (agent steps/s since the
        last heartbeat, evaluations and checkpoints included), so rl-runs shows a live run's progress and the
        time it has left rather than where it stood at its last checkpoint."""
        run, (step, then), now = self.run, self.beat, time.perf_counter()
        if now - then >= HEARTBEAT_SECONDS:
            run.sps = (run.step - step) / (now - then)
            run.tick()
            run.write_status("running")
            self.beat = (run.step, now)
