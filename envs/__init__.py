"""Environment factories. ``make_env(cfg)`` returns a :class:`envs.base.VecEnv`.

``cfg.env`` is an ALE game in snake_case (ale-py's C++ vector env, :mod:`envs.atari`), a control-task alias, or
``gym:ID`` for any registered gymnasium env with discrete actions (:mod:`envs.gym`).
"""
from __future__ import annotations

import difflib
from functools import lru_cache

from envs.base import EnvStep, VecEnv
from envs.gym import ALIASES, PREFIX
from rl.config import ConfigError


@lru_cache(maxsize=1)
def env_names() -> tuple[str, ...]:
    """The env names that need no ``gym:`` prefix: the control-task aliases and the ALE games."""
    from envs.atari import atari_games
    return tuple(ALIASES) + atari_games()


def gym_id(name: str) -> str | None:
    """The gymnasium id behind an env name (an alias's target, or ID of ``gym:ID``); None for an ALE game."""
    if name.startswith(PREFIX):
        return name[len(PREFIX):]
    return ALIASES.get(name)


def is_atari(name: str) -> bool:
    return gym_id(name) is None


def check_config(cfg) -> None:
    """The config rules that need to know the environment; ConfigError names the value and what is allowed.
    A gymnasium env is made once here (after importing ``gym_packages``) to read its spaces, so an env DQN
    cannot run is refused before any work."""
    env_id = gym_id(cfg.env)
    if env_id is None:
        names = env_names()
        if cfg.env not in names:
            close = difflib.get_close_matches(cfg.env, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"env = {cfg.env!r} is not allowed{hint}; choose a control task ({', '.join(ALIASES)}), "
                              f"an ALE game in snake_case such as breakout, pong, space_invaders, or gym:ID for a "
                              f"registered gymnasium env")
        if cfg.gym_packages:
            raise ConfigError(f"gym_packages = {cfg.gym_packages!r} is not allowed for env {cfg.env!r}: ALE games "
                              f"come from ale-py; gym_packages registers gym:ID envs")
        kind, obs_shape = "image", (cfg.frame_stack, 84, 84)
    else:
        if not env_id:
            raise ConfigError(f"env = {cfg.env!r} is not allowed: name a gymnasium id after 'gym:', "
                              f"such as gym:CartPole-v1")
        from envs.gym import probe
        encoding, metadata = probe(cfg.env, env_id, cfg.gym_packages)
        kind, obs_shape = ("image" if encoding.kind == "image" else "vector"), encoding.shape
        if cfg.eval_video and "rgb_array" not in metadata.get("render_modes", ()):
            raise ConfigError(f"eval_video = true is not allowed for env {cfg.env!r}: it cannot render rgb_array "
                              f"frames (its render modes: {', '.join(metadata.get('render_modes', ())) or 'none'})")
    _check_network(cfg, kind, tuple(obs_shape))


def _check_network(cfg, kind: str, obs_shape: tuple[int, ...]) -> None:
    """Images need an image network that fits them; vectors the MLP."""
    from rl.networks import IMAGE_NETWORKS, networks_fitting

    if kind == "vector":
        if cfg.network != "mlp":
            raise ConfigError(f"network = {cfg.network!r} is not allowed for env {cfg.env!r}: its observations are "
                              f"vectors [D] = {list(obs_shape)}; use mlp")
        if cfg.augmentation:
            raise ConfigError(f"augmentation = true is not allowed for env {cfg.env!r}: random shifts need image "
                              f"observations")
        return
    fitting = networks_fitting(obs_shape)
    if cfg.network not in IMAGE_NETWORKS:
        raise ConfigError(f"network = {cfg.network!r} is not allowed for env {cfg.env!r}: its observations are "
                          f"images [C, H, W] = {list(obs_shape)}; use {' or '.join(fitting)}")
    if cfg.network not in fitting:
        raise ConfigError(f"network = {cfg.network!r} is not allowed for env {cfg.env!r}: its images [C, H, W] = "
                          f"{list(obs_shape)} are too small for it; use {' or '.join(fitting)}")


def make_env(cfg, *, num_envs: int | None = None, seed: int | None = None, evaluation: bool = False) -> VecEnv:
    """Build the vector env ``cfg`` describes. ``evaluation`` turns off training-only signals
    (a lost life is not terminal); scores are raw full-game scores either way."""
    n = num_envs or cfg.num_envs
    seed = cfg.seed if seed is None else seed
    env_id = gym_id(cfg.env)
    if env_id is not None:
        from envs.gym import GymEnv
        return GymEnv(env_id, n, seed, packages=cfg.gym_packages)
    from envs.atari import AtariEnv
    return AtariEnv(cfg.env, n, seed, num_threads=cfg.env_threads, sticky_action_prob=cfg.sticky_action_prob,
                    noop_max=cfg.noop_max, frame_skip=cfg.frame_skip, frame_stack=cfg.frame_stack,
                    max_episode_frames=cfg.max_episode_frames,
                    life_loss_terminal=cfg.life_loss_terminal and not evaluation)


__all__ = ["EnvStep", "VecEnv", "check_config", "env_names", "gym_id", "is_atari", "make_env"]
