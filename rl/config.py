"""The package's configs, each setting declared once (rl.settings.setting) with its help, unit and range:
TrainConfig and EvaluateConfig, their cross-field rules, presets and config files.

The CLI flags, the saved ``config.toml``, the presets and the README's table all come from the dataclass
fields here. Validation happens at the boundary, before any work starts, and raises ConfigError with one
line naming the bad value and what is allowed. ConfigError, from_dict and setting are rl.settings' own,
imported here for use and for callers that build configs.
"""
from __future__ import annotations

import dataclasses
import difflib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from rl.settings import ConfigError, from_dict, setting
from rl.stats import BOOTSTRAP_REPS

EVALUATE_SEED = 12345        # rl-evaluate's default --seed; rl-sweep scores checkpoints with it too
EVALUATE_ENVS = 8            # rl-evaluate's default --num-envs (fewer when fewer games are played)
PRECISIONS = ("fp32", "bf16", "auto")   # the network arithmetic rl-train runs and rl-evaluate plays in


def _optimizer_choices() -> tuple[str, ...]:
    from rl.registry import optimizer_choices
    return optimizer_choices()


def _loss_choices() -> tuple[str, ...]:
    from rl.registry import loss_choices
    return loss_choices()


@dataclass
class TrainConfig:
    """DQN training settings. Defaults are the Nature-DQN/CleanRL Breakout setting.

    Units: *agent steps* count one action in one env (Atari: 4 emulator frames); a vector step
    of N envs is N agent steps. *Updates* count gradient steps.
    """

    # environment
    env: str = setting("breakout", "environment: an ALE game in snake_case (breakout, pong, ...), a control task "
                                   "(cartpole, acrobot, mountain_car), or gym:ID for any registered gymnasium env "
                                   "with discrete actions (gym:MinAtar/Breakout-v1)")
    gym_packages: list[str] = setting(None, "modules imported before a gym:ID env is made, so that they can register "
                                            "their environments (like the RL Zoo's --gym-packages)", factory=list)
    num_envs: int = setting(8, "parallel environments", low=1, high=1024)
    env_threads: int = setting(0, "emulator threads for Atari (0 = one per core)", low=0, high=1024, session=True)
    sticky_action_prob: float = setting(0.0, "probability of repeating the previous action (0 = Nature DQN, 0.25 = ALE v5)",
                                        low=0.0, high=1.0)
    noop_max: int = setting(30, "at most this many no-op actions at the start of each game", low=0, high=1000)
    frame_skip: int = setting(4, "emulator frames per agent step (max-pooled over the last two)", low=1, high=64)
    frame_stack: int = setting(4, "frames stacked into one observation", low=1, high=16)
    max_episode_frames: int = setting(108_000, "emulator frames before a game is truncated (30 min at 60 Hz)", low=1)
    life_loss_terminal: bool = setting(True, "treat a lost life as terminal for the TD target (training only)")
    reward_clip: bool = setting(True, "learn from sign(reward); episode statistics stay raw game scores")
    # schedule, in agent steps
    total_steps: int = setting(10_000_000, "agent steps to train (all envs together)", low=1, resumable=True)
    learning_starts: int = setting(80_000, "agent steps of experience before the first update", low=0)
    train_frequency: int = setting(4, "agent steps per gradient update", low=1)
    target: str = setting("hard", "target network: hard copy every target_update steps, polyak every update, "
                          "or none (bootstrap from the online net)", choices=("hard", "polyak", "none"))
    target_update: int = setting(1_000, "agent steps between hard target syncs", low=1)
    tau: float = setting(0.005, "Polyak rate when target = polyak: theta' <- tau theta + (1 - tau) theta'",
                         low=0.0, high=1.0, low_open=True)
    epsilon_start: float = setting(1.0, "exploration rate at step 0", low=0.0, high=1.0)
    epsilon_end: float = setting(0.01, "exploration rate after the decay", low=0.0, high=1.0)
    exploration_fraction: float = setting(0.1, "fraction of total_steps over which epsilon decays linearly",
                                          low=0.0, high=1.0)
    # learner
    buffer_size: int = setting(1_000_000, "replay capacity in transitions", low=1)
    replay_device: str = setting("auto", "where the replay lives: host (numpy arrays), device (torch tensors on the "
                                         "networks' device, batches built by gathers there), or auto = device on "
                                         "CUDA, host elsewhere", choices=("auto", "host", "device"))
    batch_size: int = setting(32, "transitions per update", low=1)
    gamma: float = setting(0.99, "discount factor", low=0.0, high=1.0)
    n_step: int = setting(1, "steps of reward summed into each TD target", low=1, high=100)
    double: bool = setting(False, "Double DQN: the online net picks a', the target net values it")
    network: str = setting("nature_cnn", "Q-network encoder: nature_cnn, impala_cnn or minatar_cnn (images), "
                                         "mlp (vectors)", choices=("nature_cnn", "impala_cnn", "minatar_cnn", "mlp"))
    hidden_sizes: list[int] = setting(None, "MLP hidden layer widths", low=1, factory=lambda: [120, 84])
    # Rainbow-family switches (Hessel et al. 2018); each composes with the others
    dueling: bool = setting(False, "dueling streams: Q = V + A - mean(A) (Wang et al. 2016)")
    noisy: bool = setting(False, "factorised noisy linear layers explore instead of epsilon (Fortunato et al. 2018)")
    noisy_sigma: float = setting(0.5, "initial noise scale sigma_0 of noisy layers", low=0.0, low_open=True)
    distributional: bool = setting(False, "C51 categorical value distribution (Bellemare et al. 2017)")
    num_atoms: int = setting(51, "C51 value atoms", low=2, high=1001)
    v_min: float = setting(-10.0, "C51 support minimum")
    v_max: float = setting(10.0, "C51 support maximum")
    prioritized: bool = setting(False, "prioritized replay, proportional variant (Schaul et al. 2016)")
    priority_alpha: float = setting(0.5, "priority exponent: P(i) ~ p_i^alpha", low=0.0, high=1.0)
    priority_beta_start: float = setting(0.4, "importance-weight exponent at step 0, annealed linearly", low=0.0, high=1.0)
    priority_beta_end: float = setting(1.0, "importance-weight exponent at total_steps", low=0.0, high=1.0)
    priority_eps: float = setting(1e-6, "added to every priority so no transition starves", low=0.0, low_open=True)
    augmentation: bool = setting(False, "random shifts of the stacked frames, as in DrQ (Kostrikov et al. 2021)")
    aug_pad: int = setting(4, "random shift range in pixels", low=1, high=20)
    reset_every: int = setting(0, "gradient updates between re-initialisations of the Q head, the layers after the "
                                  "encoder (Nikishin et al. 2022); 0 = never", low=0)
    eval_ema: float = setting(0.0, "evaluation plays a running average of the online weights, moved this far toward "
                                   "them after every update (Polyak averaging; 0 = play the online weights; "
                                   "switched on by a resume, it starts from the online weights)",
                              low=0.0, high=1.0, resumable=True)
    optimizer: str = setting("adam", "optimizer name from rl.registry", choices=_optimizer_choices)
    optimizer_kwargs: dict = setting(None, "extra optimizer options, e.g. {eps = 1.5e-4}", factory=dict)
    learning_rate: float = setting(1e-4, "optimizer step size", low=0.0, low_open=True)
    lr_end_fraction: float = setting(1.0, "final learning rate as a fraction of learning_rate (linear decay; 1 = constant)",
                                     low=0.0, high=1.0)
    loss: str = setting("mse", "TD loss name from rl.registry", choices=_loss_choices)
    max_grad_norm: float = setting(10.0, "clip the gradient's global norm to this (0 = off)", low=0.0)
    # run
    seed: int = setting(1, "seed for torch, numpy and the environments", low=0, high=2**31 - 1)
    device: str = setting("auto", "where the networks live", choices=("auto", "cpu", "cuda"), session=True)
    torch_threads: int = setting(0, "torch intra-op threads (0 = torch's default)", low=0, high=1024, session=True)
    precision: str = setting("fp32", "network arithmetic: fp32, bf16 autocast (losses and targets stay fp32), or "
                                     "auto = bf16 where the device has native bf16 (CUDA; CPUs with AVX512-BF16 or AMX), "
                                     "else fp32", choices=PRECISIONS)
    channels_last: bool = setting(False, "NHWC memory layout for the CNN (faster convolutions on many CPUs and GPUs)")
    compile: bool = setting(False, "torch.compile the encoder (a one-off compile; on CPU it needs a C++ compiler)")
    log_every: int = setting(1_000, "agent steps between TensorBoard scalar writes", low=1, resumable=True)
    checkpoint_every: int = setting(250_000, "agent steps between periodic checkpoints", low=1, resumable=True)
    keep_checkpoints: int = setting(3, "periodic checkpoints kept besides latest.pt", low=0, resumable=True)
    save_replay: bool = setting(True, "save the replay buffer with each checkpoint for an exact resume", resumable=True)
    # evaluation during training: rl-evaluate's protocol on a separate env and seed
    eval_every: int = setting(0, "agent steps between evaluations (0 = off)", low=0, resumable=True)
    eval_episodes: int = setting(10, "full games per evaluation, raw scores", low=1, high=10_000, resumable=True)
    eval_epsilon: float = setting(0.05, "exploration rate while evaluating", low=0.0, high=1.0, resumable=True)
    target_return: float = setting(0.0, "stop the run once a periodic evaluation's mean return reaches this, "
                                        "like SB3's StopTrainingOnRewardThreshold (0 = never; needs eval_every)", resumable=True)
    eval_online: bool = setting(True, "with eval_ema > 0, each evaluation also plays the online weights on the "
                                      "same seeds, for comparison (best.pt follows the average)", resumable=True)
    eval_video: bool = setting(False, "film one game per evaluation into RUN_DIR/videos and TensorBoard "
                                      "(needs the video extra)", resumable=True)
    # distributed acting (rl-train --actors N): Ape-X on Ray (Horgan et al. 2018); num_envs is per actor
    actor_epsilon_base: float = setting(0.4, "Ape-X: actor i of N explores with eps = base^(1 + alpha * i / (N - 1))",
                                        low=0.0, high=1.0)
    actor_epsilon_alpha: float = setting(7.0, "Ape-X: the alpha of actor_epsilon_base's spread", low=0.0)
    actor_epsilon_anneal: bool = setting(False, "each actor's epsilon falls linearly from epsilon_start to its Ape-X "
                                                "value over exploration_fraction of total_steps (false: fixed from "
                                                "the start, as in Ape-X)")
    actor_chunk_steps: int = setting(50, "vector steps an actor collects per chunk sent to the replay "
                                         "(num_envs agent steps each)", low=1)
    weight_sync_every: int = setting(100, "learner updates between weight publications to the actors", low=1)
    actor_max_restarts: int = setting(10, "times Ray restarts a crashed actor before training goes on without it",
                                      low=0)


@dataclass
class EvaluateConfig:
    """rl-evaluate's settings (and rl_dqn.evaluate's): which games are played and how."""

    episodes: int = setting(30, "full games to play", low=1, high=1_000_000)
    epsilon: float | None = setting(None, "exploration during evaluation (unset: the run's eval_epsilon; 0.05 is the "
                                          "Nature protocol, 0.001 DrQ(epsilon)'s)", low=0.0, high=1.0)
    seed: int = setting(EVALUATE_SEED, "evaluation seed, distinct from training", low=0, high=2**31 - 1)
    num_envs: int | None = setting(None, f"parallel games (unset: min(episodes, {EVALUATE_ENVS}))", low=1, high=1024)
    device: str = setting("cpu", "where the network plays", choices=("auto", "cpu", "cuda"))
    online: bool = setting(False, "play the online weights even where the run kept a weight average for evaluation "
                                  "(eval_ema > 0), which is what plays by default")
    video_episodes: int | None = setting(None, "with a video: film only the first this many games (unset: all)",
                                         low=1)
    precision: str | None = setting(None, "the network's arithmetic while playing (unset: the run's precision "
                                          "setting, resolved on this machine as rl-train would; fp32 plays the "
                                          "same on any machine up to float rounding)", choices=PRECISIONS)


@dataclass
class RecordConfig:
    """``rl-supervised record``'s settings: how a trained agent plays while its demonstrations are recorded."""

    steps: int = setting(5000, "agent steps to record, all envs together", low=1)
    epsilon: float = setting(0.0, "chance of a random action while recording; labels stay greedy", low=0.0, high=1.0)
    seed: int = setting(0, "environment seed", low=0, high=2**31 - 1)
    num_envs: int = setting(4, "parallel environments", low=1, high=1024)
    device: str = setting("cpu", "where the network plays", choices=("auto", "cpu", "cuda"))
    torch_threads: int = setting(1, "torch intra-op threads (1 is fastest for small networks; 0 = torch's default)",
                                 low=0)


@dataclass
class BenchConfig:
    """``rl-bench``'s measurement sizes (the config it measures is a TrainConfig)."""

    env_steps: int = setting(20_000, "agent steps for the env ceiling", low=1)
    updates: int = setting(100, "gradient updates for the learner ceiling", low=1)
    replay_steps: int = setting(20_000, "transitions inserted for the replay figures", low=1)
    train_steps: int = setting(4_000, "agent steps of real training, after learning starts", low=1)
    fill_steps: int = setting(2_000, "agent steps before learning starts in that run", low=1)


@dataclass
class SweepConfig:
    """``rl-sweep``'s own settings (its runs are TrainConfigs)."""

    cpus_per_run: float = setting(1.0, "cores Ray reserves for each run; runs go in parallel as cores allow",
                                  low=0.0, low_open=True)
    bootstrap_reps: int = setting(BOOTSTRAP_REPS, "bootstrap resamples for each IQM's 95% CI (rliable's default)",
                                  low=1)
    actors: int = setting(0, "Ape-X actors per run: each grid point trains as rl-train --actors N does, one after "
                             "another on the whole cluster (0: single-process runs, in parallel as cores allow)",
                          low=0)


def check_evaluate(cfg: EvaluateConfig, filming: bool) -> EvaluateConfig:
    """Cross-field rules for EvaluateConfig; ``filming``: a video path was given."""
    if cfg.video_episodes is not None:
        if not filming:
            raise ConfigError("video_episodes needs a video to film into (rl-evaluate --video PATH)")
        if cfg.video_episodes > cfg.episodes:
            raise ConfigError(f"video_episodes = {cfg.video_episodes} is not allowed: must be <= episodes "
                              f"({cfg.episodes})")
    return cfg


def resumable_keys(cls=None) -> frozenset[str]:
    """The settings ``rl-train --resume`` may change: declared with ``resumable=True`` or ``session=True``."""
    return frozenset(f.name for f in fields(cls or TrainConfig) if f.metadata.get("resumable"))


def session_keys(cls=None) -> frozenset[str]:
    """The resumable settings that hold for one session only (declared with ``session=True``): a resume's
    value for them is not written back to the run's config.toml."""
    return frozenset(f.name for f in fields(cls or TrainConfig) if f.metadata.get("session"))


def validate_train(cfg: TrainConfig) -> TrainConfig:
    """Cross-field rules for TrainConfig; field-level rules are checked by :func:`from_dict`, and the rules
    that need to know the environment by ``envs.check_config`` (``agents.build.validated`` runs all three)."""
    from rl.registry import RegistryError, make_loss, optimizer_kwargs

    cfg = from_dict(TrainConfig, dataclasses.asdict(cfg))
    if cfg.batch_size > cfg.buffer_size:
        raise ConfigError(f"batch_size = {cfg.batch_size} is not allowed: must be <= buffer_size ({cfg.buffer_size})")
    if cfg.learning_starts >= cfg.total_steps:
        raise ConfigError(f"learning_starts = {cfg.learning_starts} is not allowed: "
                          f"must be < total_steps ({cfg.total_steps})")
    if cfg.buffer_size < cfg.num_envs * (cfg.frame_stack + cfg.n_step + 1):
        raise ConfigError(f"buffer_size = {cfg.buffer_size} is not allowed: must hold at least "
                          f"num_envs * (frame_stack + n_step + 1) = {cfg.num_envs * (cfg.frame_stack + cfg.n_step + 1)}")
    if cfg.target_return != 0 and cfg.eval_every == 0:
        raise ConfigError(f"target_return = {cfg.target_return} is not allowed with eval_every = 0: "
                          f"the target is checked at periodic evaluations, so set eval_every > 0 (or target_return = 0)")
    if cfg.double and cfg.target == "none":
        raise ConfigError("double = true is not allowed with target = 'none': the online net would both pick and "
                          "value a', which is plain DQN; set double = false, or target = 'hard' or 'polyak'")
    if cfg.epsilon_end > cfg.epsilon_start:
        raise ConfigError(f"epsilon_end = {cfg.epsilon_end} is not allowed: must be <= epsilon_start ({cfg.epsilon_start})")
    from rl.registry import get_loss
    if not cfg.distributional and get_loss(cfg.loss).target == "class":
        raise ConfigError(f"loss = {cfg.loss!r} is not allowed for scalar TD targets: use mse, l1 or huber "
                          f"(cross_entropy needs distributional = true)")
    if cfg.distributional:
        if cfg.v_min >= cfg.v_max:
            raise ConfigError(f"v_min = {cfg.v_min} is not allowed: must be < v_max ({cfg.v_max})")
        if get_loss(cfg.loss).name != "cross_entropy":
            raise ConfigError(f"loss = {cfg.loss!r} is not allowed with distributional = true: use cross_entropy")
    if cfg.compile and cfg.device != "cuda" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        raise ConfigError("compile = true is not allowed here: torch.compile on CPU needs a C++ compiler "
                          "(none of c++, g++, clang++ is on PATH); install one or set compile = false")
    try:
        optimizer_kwargs(cfg.optimizer, {**cfg.optimizer_kwargs, "lr": cfg.learning_rate})
        make_loss(cfg.loss)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


# --- presets and TOML -------------------------------------------------------------------------

def preset_names() -> list[str]:
    root = resources.files("presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; choose one of: {', '.join(names)}")
    return tomllib.loads(resources.files("presets").joinpath(f"{name}.toml").read_text())


DEFAULT_PRESET = "breakout"


def base_config(preset: str | None, config_file: str | Path | None) -> tuple[TrainConfig, str]:
    """defaults <- preset (breakout unless named) <- config file. Returns the (unvalidated) config
    and the preset used."""
    preset = preset or DEFAULT_PRESET
    cfg = TrainConfig()
    if preset:
        cfg = from_dict(TrainConfig, load_preset(preset), base=cfg)
    if config_file:
        cfg = from_dict(TrainConfig, load_toml(config_file), base=cfg)
    return cfg, preset


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None


def format_value(value: Any) -> str:
    """A value as the command line spells it (strings bare, lists and tables in TOML's inline syntax):
    for labels and run names, never for files (:func:`dumps_toml` writes those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """A config as a TOML document, written by tomli-w (any string, any key)."""
    import tomli_w
    return tomli_w.dumps(dict(data))


# --- documentation ----------------------------------------------------------------------------

def settings_table(shown: TrainConfig | None = None) -> str:
    """Every TrainConfig key as a Markdown table: key, value in ``shown`` (the default preset's by default),
    whether ``--resume`` may change it, and its help. The README's table is this text (a test checks)."""
    shown = shown if shown is not None else base_config(None, None)[0]
    rows = ["| key | breakout | resumable | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(TrainConfig):
        value = format_value(getattr(shown, f.name))
        resumable = "this session" if f.metadata.get("session") else "yes" if f.metadata.get("resumable") else ""
        rows.append(f"| `{f.name}` | `{value}` | {resumable} | "
                    f"{f.metadata['help'].replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":        # python -m rl.config: the README's settings table
    print(settings_table(), end="")
