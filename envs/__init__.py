"""Environment factories. ``make_env(cfg)`` returns a :class:`envs.base.VecEnv`."""
from __future__ import annotations

from functools import lru_cache

from envs.base import EnvStep, VecEnv
from envs.control import CONTROL_TASKS


@lru_cache(maxsize=1)
def env_names() -> tuple[str, ...]:
    from envs.atari import atari_games
    return tuple(CONTROL_TASKS) + atari_games()


def is_atari(name: str) -> bool:
    return name not in CONTROL_TASKS


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


__all__ = ["EnvStep", "VecEnv", "env_names", "is_atari", "make_env"]
