"""Any gymnasium environment with discrete actions, as a :class:`envs.base.VecEnv`.

``env = "gym:ID"`` names a registered gymnasium id; ``cartpole``, ``acrobot`` and ``mountain_car`` are
aliases of three classic-control ids. Modules in ``gym_packages`` are imported first, so a user's package can
register its environments (the RL Zoo's ``--gym-packages``); a package that declares a ``gymnasium.envs``
entry point (the plugin hook gymnasium < 1.0 ran by itself, as MinAtar does) has it run too.

Observations become what the networks take:

- a Box of rank 2 [H, W] or rank 3 [H, W, C] (gymnasium's channels-last) with bool or integer values in
  0..255 is an image: uint8 [C, H, W], bool as 0/255 so that every image encoder's /255 sees 0/1;
- a Discrete is a one-hot float32 vector;
- any other Box is flattened to a float32 vector.

Other observation spaces (Dict, Tuple, Text, ...) and non-Discrete action spaces are refused by
:func:`space_problem`. There is no frame stacking (``frame_stack`` is 1): the replay stores each whole
observation.

Every episode is played by a freshly made env reset with the episode's seed, so nothing an env carries across
its own resets can leak into the next episode (MinAtar keeps the previous episode's last action for its sticky
actions). An env's state is then a function of its episode seed and the actions since, which is what
:meth:`VecEnv.load_state_dict` needs for an exact resume.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.base import VecEnv
from rl.config import ConfigError

ALIASES = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1", "mountain_car": "MountainCar-v0"}
PREFIX = "gym:"

_hooks_run: set[str] = set()          # gymnasium.envs entry points already run in this process


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def import_packages(packages: Sequence[str]) -> None:
    """Import each module of ``gym_packages`` and run the ``gymnasium.envs`` entry points its distribution
    declares; a module that fails is named in a one-line ConfigError."""
    for name in packages:
        try:
            importlib.import_module(name)
        except Exception as exc:            # ImportError, or whatever the module raises while importing
            raise ConfigError(f"gym_packages: module {name!r} cannot be imported "
                              f"({type(exc).__name__}: {_one_line(exc)})") from None
        top = name.split(".")[0]
        for hook in importlib.metadata.entry_points(group="gymnasium.envs"):
            if hook.module.split(".")[0] != top or hook.value in _hooks_run:
                continue
            try:
                registrar = hook.load()
                if callable(registrar):
                    registrar()
            except Exception as exc:
                raise ConfigError(f"gym_packages: {name!r}'s gymnasium.envs hook {hook.value!r} failed "
                                  f"({type(exc).__name__}: {_one_line(exc)})") from None
            _hooks_run.add(hook.value)


def require_registered(env_id: str, name: str) -> None:
    """Refuse an id gymnasium does not know, with the closest registered one."""
    if env_id in gym.registry:
        return
    import difflib
    close = difflib.get_close_matches(env_id, list(gym.registry), n=1, cutoff=0.6)
    hint = f" (did you mean '{PREFIX}{close[0]}'?)" if close else ""
    raise ConfigError(f"env = {name!r} is not allowed: no gymnasium environment {env_id!r} is registered{hint}; "
                      f"a package that registers it goes in gym_packages")


@dataclass(frozen=True)
class Encoding:
    """How one observation of a gymnasium space becomes a network input."""

    kind: str                    # "image" (uint8 [C, H, W]), "one_hot" or "vector" (float32 [D])
    shape: tuple[int, ...]
    dtype: np.dtype
    start: int = 0               # a Discrete space's first value (the one-hot index 0)

    def encode(self, obs: Any) -> np.ndarray:
        if self.kind == "one_hot":
            out = np.zeros(self.shape, np.float32)
            out[int(obs) - self.start] = 1.0
            return out
        x = np.asarray(obs)
        if self.kind == "vector":
            return x.astype(np.float32).reshape(self.shape)
        x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)         # [H, W, C] -> [C, H, W]
        return x.astype(np.uint8) * np.uint8(255) if x.dtype == bool else x.astype(np.uint8)


def observation_encoding(space: gym.Space) -> Encoding | None:
    """The encoding of ``space``, or None when it is not supported."""
    if isinstance(space, gym.spaces.Discrete):
        return Encoding("one_hot", (int(space.n),), np.dtype(np.float32), int(space.start))
    if not isinstance(space, gym.spaces.Box):
        return None
    shape = tuple(int(n) for n in space.shape)
    if len(shape) in (2, 3) and space.dtype.kind in "biu" and (
            space.dtype == bool or (space.low.min() >= 0 and space.high.max() <= 255)):
        height, width = shape[:2]
        channels = shape[2] if len(shape) == 3 else 1
        return Encoding("image", (channels, height, width), np.dtype(np.uint8))
    return Encoding("vector", (max(1, int(np.prod(shape))),), np.dtype(np.float32))


def space_problem(observation_space: gym.Space, action_space: gym.Space) -> str | None:
    """Why DQN cannot run on these spaces (a phrase to follow the env's name), or None when it can."""
    if not isinstance(action_space, gym.spaces.Discrete):
        return (f"its action space {_one_line(action_space)} is not Discrete: DQN picks one of a finite set "
                f"of actions")
    if observation_encoding(observation_space) is None:
        return (f"its observation space {_one_line(observation_space)} is not supported: use a Box (a vector, or "
                f"an image [H, W] or [H, W, C]) or a Discrete")
    return None


def probe(name: str, env_id: str, packages: Sequence[str]) -> tuple[Encoding, dict[str, Any]]:
    """Make the env once and check its spaces: (its observation encoding, its metadata). Every failure is a
    one-line ConfigError naming ``name`` (the config's env)."""
    import_packages(packages)
    require_registered(env_id, name)
    try:
        env = gym.make(env_id)
    except Exception as exc:
        raise ConfigError(f"env = {name!r} cannot be made ({type(exc).__name__}: {_one_line(exc)})") from None
    try:
        problem = space_problem(env.observation_space, env.action_space)
        if problem:
            raise ConfigError(f"env = {name!r} is not allowed: {problem}")
        return observation_encoding(env.observation_space), dict(env.metadata)
    finally:
        env.close()


class GymEnv(VecEnv):
    """``num_envs`` copies of one gymnasium env, stepped in turn; see the module docstring."""

    def __init__(self, env_id: str, num_envs: int, seed: int, *, packages: Sequence[str] = (),
                 render_mode: str | None = None, env_checker: bool = True):
        super().__init__(num_envs, seed)
        import_packages(packages)
        self.env_id, self.packages, self.render_mode = env_id, list(packages), render_mode
        self.env_checker = env_checker
        self.envs = [self._make() for _ in range(num_envs)]
        problem = space_problem(self.envs[0].observation_space, self.envs[0].action_space)
        if problem:
            raise ConfigError(f"gymnasium env {env_id!r} is not allowed: {problem}")
        self.encoding = observation_encoding(self.envs[0].observation_space)
        self.obs_shape, self.obs_dtype = self.encoding.shape, self.encoding.dtype
        self.num_actions = int(self.envs[0].action_space.n)
        self.action_start = int(self.envs[0].action_space.start)
        self.protocol = {"gym_id": env_id, "gym_packages": list(packages)}
        self.stepped = [False] * num_envs        # an env that has stepped is replaced at its next reset
        self.ended = [False] * num_envs          # its episode is over: not stepped again until reset
        self._obs = np.zeros((num_envs, *self.obs_shape), self.obs_dtype)
        self._actions: np.ndarray | None = None

    def _make(self, check: bool = True) -> gym.Env:
        kwargs = {"render_mode": self.render_mode} if self.render_mode else {}
        return gym.make(self.env_id, disable_env_checker=not (check and self.env_checker), **kwargs)

    def _reset(self, seeds, mask):
        chosen = range(self.num_envs) if mask is None else np.flatnonzero(mask)
        for e, seed in zip(chosen, seeds):
            if self.stepped[e]:
                self.envs[e].close()
                self.envs[e] = self._make(check=False)   # the first copy was checked; its twins are the same env
                self.stepped[e] = False
            obs, _ = self.envs[e].reset(seed=int(seed))
            self._obs[e] = self.encoding.encode(obs)
            self.ended[e] = False
        return self._obs.copy()

    def _send(self, actions):
        self._actions = actions

    def _recv(self):
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for e, (env, action) in enumerate(zip(self.envs, self._actions)):
            if self.ended[e]:        # only while load_state_dict steps filler actions before this env's reset
                continue
            obs, reward[e], terminated[e], truncated[e], _ = env.step(int(action) + self.action_start)
            self._obs[e] = self.encoding.encode(obs)
            self.stepped[e] = True
            self.ended[e] = bool(terminated[e] or truncated[e])
        obs = self._obs.copy()       # an ended episode's last observation: VecEnv.recv resets that env next
        return obs, reward, terminated, truncated & ~terminated, terminated | truncated, obs

    def render(self, env: int) -> np.ndarray:
        """Env ``env``'s current frame (needs ``render_mode``)."""
        return self.envs[env].render()

    def close(self):
        for env in self.envs:
            env.close()
