"""Atari through ale-py's C++ vector env with the DeepMind preprocessing.

The emulator threads do noop starts, frame skip with max-pool, 84x84 grayscale and frame stacking
(zero-padded at a game's start), which is gymnasium's ``AtariPreprocessing`` + ``FrameStackObservation``
frame for frame. There is no fire-on-reset: ale-py's ``use_fire_reset`` presses FIRE inside the reset, a
game state the standard pipeline never produces, so the agent presses FIRE itself, as in Dopamine. We keep
games whole (no ``episodic_life``: in ale-py 0.12 it restarts the game at the
first lost life) and unclipped (scores stay real); a lost life is detected here from ``info["lives"]``
and, for training, reported as ``terminated`` while the game and the frame stack go on.
"""
from __future__ import annotations

import os

import numpy as np
from gymnasium.vector import AutoresetMode

from envs.base import VecEnv

# Human and random scores for the human-normalised score (Mnih et al. 2015, Table 2 / van Hasselt 2016).
HUMAN_RANDOM = {"breakout": (30.5, 1.7), "pong": (14.6, -20.7), "space_invaders": (1668.7, 148.0),
                "seaquest": (42054.7, 68.4), "beam_rider": (16926.5, 363.9), "qbert": (13455.0, 163.9),
                "enduro": (860.5, 0.0), "ms_pacman": (6951.6, 307.3), "asterix": (7127.7, 210.0)}


def atari_games() -> tuple[str, ...]:
    from ale_py import roms
    return tuple(roms.get_all_rom_ids())


def human_normalized(game: str, score: float) -> float | None:
    if game not in HUMAN_RANDOM:
        return None
    human, random = HUMAN_RANDOM[game]
    return (score - random) / (human - random)


# The ALE options every env of ours shares (the training env here and the RGB camera in envs/video.py).
ALE_OPTIONS = dict(autoreset_mode=AutoresetMode.SAME_STEP, episodic_life=False, life_loss_info=False,
                   reward_clipping=False, use_fire_reset=False)


class AtariEnv(VecEnv):
    def __init__(self, game: str, num_envs: int, seed: int, *, num_threads: int = 0, sticky_action_prob: float = 0.0,
                 noop_max: int = 30, frame_skip: int = 4, frame_stack: int = 4, max_episode_frames: int = 108_000,
                 life_loss_terminal: bool = True):
        from ale_py.vector_env import AtariVectorEnv

        super().__init__(num_envs, seed)
        threads = num_threads or min(num_envs, os.cpu_count() or 1)
        self.env = AtariVectorEnv(
            game, num_envs, num_threads=threads, repeat_action_probability=sticky_action_prob,
            noop_max=noop_max, frameskip=frame_skip, stack_num=frame_stack,
            max_num_frames_per_episode=max_episode_frames, **ALE_OPTIONS,
        )
        self.obs_shape = (frame_stack, 84, 84)
        self.frame_stack = frame_stack
        self.obs_dtype = np.dtype(np.uint8)
        self.num_actions = int(self.env.single_action_space.n)
        self.life_loss_terminal = life_loss_terminal
        self.lives = np.zeros(num_envs, np.int32)
        self.protocol = {"game": game, "sticky_action_prob": sticky_action_prob, "noop_max": noop_max,
                         "frame_skip": frame_skip, "frame_stack": frame_stack,
                         "max_episode_frames": max_episode_frames, "full_games": True, "raw_score": True,
                         "fire_reset": False}

    def _reset(self, seeds, mask):
        options = None if mask is None else {"reset_mask": mask}
        obs, info = self.env.reset(seed=seeds, options=options)
        reset = slice(None) if mask is None else mask
        self.lives[reset] = info["lives"][reset]
        return obs

    def _send(self, actions):
        self.env.send(actions.astype(np.int32, copy=False))

    def _recv(self):
        obs, reward, term, trunc, info = self.env.recv()
        lives = info["lives"]
        episode_end = term | trunc
        life_lost = ~episode_end & (lives < self.lives)
        self.lives = lives.copy()
        terminated = term | (life_lost & self.life_loss_terminal)
        final_obs = obs
        if episode_end.any():
            final_obs = obs.copy()
            final_obs[episode_end] = info["final_obs"][episode_end]
        return obs, reward.astype(np.float32), terminated, trunc & ~term, episode_end, final_obs

    def close(self):
        self.env.close()
