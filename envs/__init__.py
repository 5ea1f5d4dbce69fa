"""Environment factories. ``make_env(cfg)`` returns a :class:`envs.base.VecEnv`."""
from __future__ import annotations

import difflib
from functools import lru_cache

from envs.base import EnvStep, VecEnv
from envs.control import CONTROL_TASKS
from rl.config import ConfigError


@lru_cache(maxsize=1)
def env_names() -> tuple[str, ...]:
    from envs.atari import atari_games
    return tuple(CONTROL_TASKS) + atari_games()


def is_atari(name: str) -> bool:
    return name not in CONTROL_TASKS


def check_config(cfg) -> None:
    """The config rules that need to know the environment; ConfigError names the value and what is allowed."""
    names = env_names()
    if cfg.env not in names:
        close = difflib.get_close_matches(cfg.env, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"env = {cfg.env!r} is not allowed{hint}; choose a control task ({', '.join(CONTROL_TASKS)}) "
                          f"or an ALE game in snake_case such as breakout, pong, space_invaders")
    if is_atari(cfg.env) == (cfg.network == "mlp"):
        allowed = "nature_cnn or impala_cnn" if is_atari(cfg.env) else "mlp"
        raise ConfigError(f"network = {cfg.network!r} is not allowed for env {cfg.env!r}: use {allowed}")
    if cfg.augmentation and not is_atari(cfg.env):
        raise ConfigError(f"augmentation = true is not allowed for env {cfg.env!r}: random shifts need image observations")


def make_env(cfg, *, num_envs: int | None = None, seed: int | None = None, evaluation: bool = False) -> VecEnv:
    """Build the vector env ``cfg`` describes. ``evaluation`` turns off training-only signals
    (a lost life is not terminal); scores are raw full-game scores either way."""
    n = num_envs or cfg.num_envs
    seed = cfg.seed if seed is None else seed
    if not is_atari(cfg.env):
        from envs.control import ControlEnv
        return ControlEnv(cfg.env, n, seed)
    from envs.atari import AtariEnv
    return AtariEnv(cfg.env, n, seed, num_threads=cfg.env_threads, sticky_action_prob=cfg.sticky_action_prob,
                    noop_max=cfg.noop_max, frame_skip=cfg.frame_skip, frame_stack=cfg.frame_stack,
                    max_episode_frames=cfg.max_episode_frames,
                    life_loss_terminal=cfg.life_loss_terminal and not evaluation)


__all__ = ["EnvStep", "VecEnv", "check_config", "env_names", "is_atari", "make_env"]
