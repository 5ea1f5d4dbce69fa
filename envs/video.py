"""Raw RGB video of evaluation games, written as MP4 or GIF.

The agent sees 84x84 grayscale stacks; a person wants the game in colour. A *camera* is a twin of the
env with the same game settings but full-size RGB frames, reset with the same seeds and fed the same
actions. The emulators are deterministic given both, so the twin plays the very same games:
tests/test_video.py checks rewards, episode ends and the frames themselves step for step, and
:class:`FilmedEnv` re-checks rewards and episode ends on every step, so a drift cannot go unnoticed.

Encoding needs the optional ``video`` extra: imageio with imageio-ffmpeg (which ships its own ffmpeg
binary) for MP4, Pillow for GIF, pygame for rendering the control tasks. Gymnasium envs are filmed through
their own ``rgb_array`` rendering.
"""
from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.base import VecEnv

INSTALL_HINT = "pip install 'rl-dqn[video]'"
FORMATS = (".mp4", ".gif")


def video_format(path: Path, what: str = "--video") -> str:
    """``.mp4`` or ``.gif`` from the file name; anything else is bad input."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        from rl.config import ConfigError
        raise ConfigError(f"{what} {str(path)!r} is not allowed: the name must end in .mp4 or .gif")
    return suffix


def require_video(what: str, *, control: bool = False) -> None:
    """Fail fast, in one line, when the optional packages for video are missing."""
    from rl.config import ConfigError

    packages = {"imageio": "imageio", "imageio_ffmpeg": "imageio-ffmpeg", "PIL": "pillow"}
    if control:
        packages["pygame"] = "pygame"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame greets on stdout otherwise
    for module, package in packages.items():
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"{what} needs the video extra ({package} is not installed): {INSTALL_HINT}") from None
    try:
        importlib.import_module("imageio_ffmpeg").get_ffmpeg_exe()
    except RuntimeError as exc:
        raise ConfigError(f"{what} needs an ffmpeg binary ({exc}): {INSTALL_HINT}") from None


# --- cameras: RGB twins of the envs ----------------------------------------------------------

class AtariCamera:
    """An ale-py vector env with the game settings of an :class:`envs.atari.AtariEnv` but 210x160 RGB
    frames and no stacking, built with the same ``ALE_OPTIONS``; FilmedEnv checks on every step that
    the two play the same game."""

    def __init__(self, protocol: dict, num_envs: int):
        from ale_py.vector_env import AtariVectorEnv

        from envs.atari import ALE_OPTIONS

        self.env = AtariVectorEnv(
            protocol["game"], num_envs, num_threads=min(num_envs, os.cpu_count() or 1),
            repeat_action_probability=protocol["sticky_action_prob"], noop_max=protocol["noop_max"],
            frameskip=protocol["frame_skip"], max_num_frames_per_episode=protocol["max_episode_frames"],
            **ALE_OPTIONS, grayscale=False, img_height=210, img_width=160, stack_num=1,
        )
        self.fps = 60.0 / protocol["frame_skip"]       # the emulator runs at 60 Hz; one frame per agent step

    def reset(self, seeds: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seeds, options=None if mask is None else {"reset_mask": mask})
        return obs[:, -1]                               # [N, 210, 160, 3]

    def send(self, actions: np.ndarray) -> None:
        self.env.send(actions.astype(np.int32, copy=False))

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames (an ended game's last frame where one ended), raw rewards, episode ends."""
        obs, reward, term, trunc, info = self.env.recv()
        end = term | trunc
        frames = obs[:, -1]
        if end.any():
            frames = frames.copy()
            frames[end] = info["final_obs"][end, -1]
        return frames, reward, end

    def close(self) -> None:
        self.env.close()


def rgb_frame(frame: np.ndarray, min_side: int = 160) -> np.ndarray:
    """A rendered frame as the writers take it: uint8 RGB [H, W, 3] (floats in [0, 1] scaled to 0-255, grey
    repeated, alpha dropped), enlarged by a whole factor, pixels kept square and sharp, until its shorter
    side reaches ``min_side``: MinAtar renders its 10x10 grid as 10x10 pixels."""
    x = np.asarray(frame)
    if x.dtype.kind == "f":
        x = np.rint(np.clip(x, 0.0, 1.0) * 255.0)
    x = x.astype(np.uint8)
    if x.ndim == 2:
        x = x[..., None]
    x = np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[..., :3]
    factor = -(-min_side // min(x.shape[:2]))
    if factor > 1:
        factor += factor % 2                          # even sides: yuv420p halves them
        x = x.repeat(factor, axis=0).repeat(factor, axis=1)
    return x


class GymCamera:
    """A :class:`envs.gym.GymEnv` twin in ``rgb_array`` mode (offscreen: no display needed), made from the env's
    protocol (its gym id, and the gym_packages that register it)."""

    def __init__(self, protocol: dict, num_envs: int):
        from envs.gym import GymEnv

        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")   # nothing is shown; stops SDL probing for a display
        from rl.config import ConfigError

        # gymnasium's env checker saw the env when it was made to play; its warnings about rendered frames
        # (floats, no render_fps: MinAtar's) are rgb_frame's and this fps default's to handle
        self.env = GymEnv(protocol["gym_id"], num_envs, 0, packages=protocol.get("gym_packages", ()),
                          render_mode="rgb_array", env_checker=False)
        modes = self.env.envs[0].metadata.get("render_modes", ())
        if "rgb_array" not in modes:
            self.env.close()
            raise ConfigError(f"a video of {protocol['gym_id']!r} is not possible: it cannot render rgb_array "
                              f"frames (its render modes: {', '.join(modes) or 'none'})")
        # the env's own frame rate; 15 fps (the Atari videos') where it states none, as MinAtar does
        self.fps = float(self.env.envs[0].metadata.get("render_fps") or 15)

    def reset(self, seeds: np.ndarray, mask: np.ndarray | None) -> list[np.ndarray | None]:
        self.env._reset(seeds, mask)
        chosen = set(range(self.env.num_envs) if mask is None else np.flatnonzero(mask).tolist())
        return [rgb_frame(self.env.render(e)) if e in chosen else None for e in range(self.env.num_envs)]

    def send(self, actions: np.ndarray) -> None:
        self.env._send(actions)

    def recv(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        _, reward, _, _, end, _ = self.env._recv()
        # an ended episode is not reset yet: its last frame
        return [rgb_frame(self.env.render(e)) for e in range(self.env.num_envs)], reward, end

    def close(self) -> None:
        self.env.close()


def camera_for(env: VecEnv):
    from envs.atari import AtariEnv
    from envs.gym import GymEnv

    if isinstance(env, AtariEnv):
        return AtariCamera(env.protocol, env.num_envs)
    if isinstance(env, GymEnv):
        return GymCamera(env.protocol, env.num_envs)
    raise TypeError(f"no camera for {type(env).__name__}")


# --- writers ------------------------------------------------------------------------------------

def gif_delay_ms(fps: float) -> int:
    return 10 * max(2, round(100 / fps))      # browsers slow delays under 20 ms down to 100 ms


def encode_gif(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """An endlessly looping GIF. Its delays are whole centiseconds, so 15 fps becomes 70 ms a frame
    (Pillow merges identical neighbours into one longer frame: playing time counts frames, not frame count)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=gif_delay_ms(fps), loop=0)
    return out.getvalue()


def _mp4_writer(path: Path, fps: float):
    import imageio.v2 as imageio

    # macro_block_size=2: yuv420p needs even sides only; the default 16 would rescale 210x160 frames.
    return imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=2,
                              ffmpeg_log_level="error", output_params=["-movflags", "+faststart"])


def read_frames(path: Path, limit: int | None = None) -> np.ndarray:
    """Decode a video back to uint8[T, H, W, 3] (at most ``limit`` frames)."""
    import imageio.v3 as iio

    frames = []
    for frame in iio.imiter(path, **({"plugin": "FFMPEG"} if Path(path).suffix.lower() == ".mp4" else {})):
        frames.append(frame[..., :3])
        if limit is not None and len(frames) >= limit:
            break
    return np.stack(frames)


class EpisodeRecorder:
    """Writes the chosen games, ``(env, episode)`` in the order given, one after another into one file.

    Games in parallel envs overlap in time, so an MP4 game streams into its own segment file and the
    segments are joined at the end by ffmpeg without re-encoding: memory stays flat however long the
    games. Pillow has no streaming GIF writer, so GIF frames are held in memory: use GIF for short clips.
    The file appears only when complete (written beside it, then renamed).
    """

    def __init__(self, path: Path, chosen: Sequence[tuple[int, int]], fps: float):
        self.path = Path(path)
        self.gif = video_format(self.path) == ".gif"
        self.chosen = [tuple(c) for c in chosen]
        self.fps = fps
        self.counts = {c: 0 for c in self.chosen}        # frames written per chosen game
        self.done: set[tuple[int, int]] = set()
        self.gif_frames: dict[tuple[int, int], list[np.ndarray]] = {c: [] for c in self.chosen}
        self.writers: dict[tuple[int, int], object] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))

    def _segment(self, game: tuple[int, int]) -> Path:
        return self.tmp / f"game{self.chosen.index(game):05d}.mp4"

    def frame(self, env: int, episode: int, frame: np.ndarray) -> None:
        game = (env, episode)
        if game not in self.counts or game in self.done:
            return
        if self.gif:
            self.gif_frames[game].append(np.array(frame))
        else:
            if game not in self.writers:
                self.writers[game] = _mp4_writer(self._segment(game), self.fps)
            self.writers[game].append_data(frame)
        self.counts[game] += 1

    def end(self, env: int, episode: int) -> None:
        game = (env, episode)
        if game in self.counts:
            self.done.add(game)
            if game in self.writers:
                self.writers.pop(game).close()

    def save(self) -> list[int]:
        """Join the chosen games into ``path``; returns the frames per game."""
        missing = [g for g in self.chosen if g not in self.done]
        if missing:
            raise RuntimeError(f"games {missing} (env, episode) did not finish; nothing written to {self.path}")
        out = self.tmp / f"all{self.path.suffix}"
        if self.gif:
            out.write_bytes(encode_gif([f for g in self.chosen for f in self.gif_frames[g]], self.fps))
        elif len(self.chosen) == 1:
            out = self._segment(self.chosen[0])
        else:
            import imageio_ffmpeg

            (self.tmp / "list.txt").write_text("".join(f"file '{self._segment(g).name}'\n" for g in self.chosen))
            done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "concat", "-i", "list.txt",
                                   "-c", "copy", "-movflags", "+faststart", out.name], cwd=self.tmp,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"ffmpeg could not join the games into {self.path}: {done.stderr.strip()[-300:]}")
        os.replace(out, self.path)
        self.close()
        return [self.counts[g] for g in self.chosen]

    def close(self) -> None:
        """Drop unfinished segments and the scratch directory."""
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        self.gif_frames.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class FilmedEnv(VecEnv):
    """``env`` with its camera twin in lockstep; the chosen games' frames go to ``recorder``.

    Each game gets its first frame and one frame per step (its length + 1 frames in all). It subclasses
    VecEnv so the episode seeds come from the one place that makes them and reach both twins alike.
    """

    def __init__(self, env: VecEnv, camera, recorder: EpisodeRecorder):
        super().__init__(env.num_envs, env.seed)
        self.env, self.camera, self.recorder = env, camera, recorder
        self.obs_shape, self.obs_dtype, self.num_actions = env.obs_shape, env.obs_dtype, env.num_actions
        self.frame_stack = env.frame_stack
        self.protocol = env.protocol

    def _reset(self, seeds, mask):
        obs = self.env._reset(seeds, mask)
        frames = self.camera.reset(seeds, mask)
        for e in range(self.num_envs) if mask is None else np.flatnonzero(mask):
            self.recorder.frame(e, int(self.episode[e]), frames[e])
        return obs

    def _send(self, actions):
        self.env._send(actions)
        self.camera.send(actions)

    def _recv(self):
        out = self.env._recv()
        frames, reward, end = self.camera.recv()
        if not (np.array_equal(reward, out[1]) and np.array_equal(end, out[4])):
            raise RuntimeError(f"the video camera fell out of step with the game (rewards {reward} vs {out[1]}, "
                               f"episode ends {end} vs {out[4]}); its settings must match the env's")
        for e in range(self.num_envs):
            self.recorder.frame(e, int(self.episode[e]), frames[e])
        for e in np.flatnonzero(end):
            self.recorder.end(int(e), int(self.episode[e]))
        return out

    def close(self):
        self.env.close()
        self.camera.close()
