"""See what the agent does: the RGB twin plays the very same games, rl-evaluate --video writes MP4 and
GIF files that decode back frame for frame, and periodic evaluation reaches TensorBoard and
evaluations.jsonl without touching the training itself."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs.atari import AtariEnv
from envs.gym import GymEnv
from envs.video import AtariCamera, FilmedEnv, GymCamera, gif_delay_ms, rgb_frame
from rl import checkpoint as ckpt
from rl.cli import run_cli
from scripts import evaluate as evaluate_cli
from scripts import train as train_cli

QUIET = ["--no-progress", "--torch-threads", "1", "--no-save-replay"]


class LastFrames:
    """A recorder that keeps each env's newest frame and counts finished games."""

    def __init__(self):
        self.current, self.ended = {}, 0

    def frame(self, env, episode, frame):
        self.current[env] = frame

    def end(self, env, episode):
        self.ended += 1


def as_agent_frame(rgb: np.ndarray) -> np.ndarray:
    """Roughly what ALE hands the agent: luminance, shrunk to 84x84."""
    return np.asarray(Image.fromarray(rgb).convert("L").resize((84, 84), Image.BILINEAR), np.float64)


def test_atari_rgb_twin_plays_the_same_game():
    """Same seeds and actions, sticky actions on: rewards and game ends agree at every step (FilmedEnv
    raises otherwise) and every colour frame is the agent's own frame in colour."""
    env = AtariEnv("breakout", 3, seed=5, num_threads=1, sticky_action_prob=0.25, max_episode_frames=800,
                   life_loss_terminal=False)
    recorder = LastFrames()
    filmed = FilmedEnv(env, AtariCamera(env.protocol, 3), recorder)
    rng = np.random.default_rng(0)
    try:
        filmed.reset()
        rewards, correlations = 0.0, []
        for t in range(400):
            step = filmed.step(rng.integers(0, env.num_actions, 3))
            rewards += step.reward.sum()
            if t % 20 == 0 or step.episode_end.any():
                for e in range(3):
                    rgb = recorder.current[e]
                    assert rgb.shape == (210, 160, 3)
                    correlations.append(np.corrcoef(as_agent_frame(rgb).ravel(), step.obs[e, -1].ravel())[0, 1])
    finally:
        filmed.close()
    assert recorder.ended >= 3 and rewards > 0          # resets and scoring were both exercised
    assert min(correlations) > 0.99, min(correlations)


@pytest.mark.parametrize("seed_offset", [0, 1], ids=["same-seeds", "other-seeds"])
def test_control_twin_in_step_and_drift_is_caught(seed_offset):
    env = GymEnv("CartPole-v1", 2, seed=3)
    camera = GymCamera(env.protocol, 2)
    reset = camera.reset
    camera.reset = lambda seeds, mask: reset(seeds + seed_offset, mask)
    recorder = LastFrames()
    filmed = FilmedEnv(env, camera, recorder)
    rng = np.random.default_rng(0)
    try:
        filmed.reset()
        if seed_offset:
            with pytest.raises(RuntimeError, match="out of step"):
                for _ in range(300):
                    filmed.step(rng.integers(0, 2, 2))
        else:
            for _ in range(300):
                filmed.step(rng.integers(0, 2, 2))
            assert recorder.ended >= 4 and recorder.current[0].shape == (400, 600, 3)
    finally:
        filmed.close()


def test_rendered_frames_become_sharp_uint8_rgb():
    """MinAtar renders its 10x10 grid as floats in [0, 1], 10x10 pixels: the video gets uint8 RGB, each cell a
    16x16 block; frames of 160 pixels or more pass unchanged."""
    grid = np.zeros((10, 10, 3), np.float32)
    grid[2, 3] = (1.0, 0.5, 0.0)
    frame = rgb_frame(grid)
    assert frame.dtype == np.uint8 and frame.shape == (160, 160, 3)
    assert (frame[32:48, 48:64] == (255, 128, 0)).all() and frame.sum() == 16 * 16 * (255 + 128)
    assert rgb_frame(np.full((7, 7), 9, np.uint8)).shape == (168, 168, 3)       # grey to RGB; even sides
    big = np.random.default_rng(0).integers(0, 256, (400, 600, 4), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_frame(big), big[..., :3])                  # alpha dropped, size kept


def test_a_gym_image_env_is_filmed_in_training_and_by_evaluate(tmp_path, capsys, gym_package):
    """A user's env from gym_packages (Catch renders floats on a 7x7 grid): the periodic evaluation films it,
    and rl-evaluate, rebuilding the env from the checkpoint alone, films the games it scores."""
    run_dir = tmp_path / "catch"
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--network", "minatar_cnn", "--env", "gym:RlTest/Catch-v0",
                                    "--gym-packages", f'["{gym_package}"]', "--total-steps", "300",
                                    "--learning-starts", "100", "--buffer-size", "1000", "--eval-every", "300",
                                    "--eval-episodes", "1", "--eval-epsilon", "1.0", "--eval-video",
                                    "--run-dir", str(run_dir), *QUIET]) == 0
    (record,) = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    frames = iio.imread(run_dir / record["video"]["path"], plugin="FFMPEG", index=None)
    assert frames.shape == (record["lengths"][0] + 1, 168, 168, 3) and record["video"]["fps"] == 15
    video, out = tmp_path / "catch.gif", tmp_path / "results.json"
    assert run_cli(evaluate_cli.main, [str(run_dir / "checkpoints" / "latest.pt"), "--episodes", "2",
                                       "--epsilon", "1.0", "--video", str(video), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert gif_frames(video) == (sum(results["lengths"]) + 2, (168, 168))


@pytest.fixture(scope="module")
def breakout_run(tmp_path_factory) -> Path:
    """A 400-step Breakout run with one filmed evaluation; games end after 150 agent steps."""
    run_dir = tmp_path_factory.mktemp("video") / "breakout"
    code = run_cli(train_cli.main, ["--total-steps", "400", "--learning-starts", "200", "--buffer-size", "2000",
                                    "--num-envs", "4", "--max-episode-frames", "600", "--log-every", "200",
                                    "--eval-every", "400", "--eval-episodes", "2", "--eval-video",
                                    "--run-dir", str(run_dir), *QUIET])
    assert code == 0
    return run_dir


@pytest.fixture(scope="module")
def cartpole_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("video") / "cartpole"
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "400", "--learning-starts", "200",
                                    "--run-dir", str(run_dir), *QUIET]) == 0
    return run_dir / "checkpoints" / "latest.pt"


def gif_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """Frames a GIF plays for: Pillow merges identical neighbours into one longer frame."""
    with Image.open(path) as im:
        delay, total = gif_delay_ms(15.0), 0
        for i in range(im.n_frames):
            im.seek(i)
            total += im.info["duration"]
        return total // delay, im.size


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_evaluate_writes_playable_video(breakout_run, tmp_path, capsys, suffix):
    video, out = tmp_path / f"games{suffix}", tmp_path / "results.json"
    code = run_cli(evaluate_cli.main, [str(breakout_run / "checkpoints" / "latest.pt"), "--episodes", "3",
                                       "--video", str(video), "--video-episodes", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    expected = results["lengths"][0] + results["lengths"][1] + 2        # each game: first frame + one per step
    assert results["video"]["frames"] == [results["lengths"][0] + 1, results["lengths"][1] + 1]
    if suffix == ".mp4":
        frames = iio.imread(video, plugin="FFMPEG", index=None)
        assert frames.shape == (expected, 210, 160, 3)
    else:
        assert gif_frames(video) == (expected, (160, 210))
    for shown in (f"video: {video}", "3 full games", "epsilon 0.05", "seed 12345", "sticky actions 0.0",
                  "at most 600 frames/game"):
        assert shown in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # scratch segments cleaned up


def test_evaluate_control_gif_defaults_to_all_games(cartpole_checkpoint, tmp_path, capsys):
    video, out = tmp_path / "cartpole.gif", tmp_path / "results.json"
    assert run_cli(evaluate_cli.main, [str(cartpole_checkpoint), "--episodes", "3", "--video", str(video),
                                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["video"]["episodes"] == 3 and results["video"]["fps"] == 50
    with Image.open(video) as im:
        assert im.size == (600, 400)
        assert sum((im.seek(i), im.info["duration"])[1] for i in range(im.n_frames)) == \
            (sum(results["lengths"]) + 3) * gif_delay_ms(50)


@pytest.mark.parametrize("args, message", [
    (["--video", "x.avi"], "must end in .mp4 or .gif"),
    (["--video-episodes", "2"], "video_episodes needs a video to film into (rl-evaluate --video PATH)"),
    (["--video", "x.mp4", "--video-episodes", "5", "--episodes", "3"],
     "video_episodes = 5 is not allowed: must be <= episodes (3)"),
])
def test_evaluate_video_bad_input(cartpole_checkpoint, tmp_path, capsys, args, message):
    args = [a.replace("x.", str(tmp_path / "x.")) for a in args]
    assert run_cli(evaluate_cli.main, [str(cartpole_checkpoint), *args], prog="rl-evaluate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("missing, package", [("imageio", "imageio"), ("imageio_ffmpeg", "imageio-ffmpeg"),
                                              ("PIL", "pillow"), ("pygame", "pygame")])
def test_missing_video_extra_is_one_line_exit_2(cartpole_checkpoint, tmp_path, capsys, monkeypatch, missing, package):
    monkeypatch.setitem(sys.modules, missing, None)                      # import now raises ImportError
    video = tmp_path / "x.mp4"
    assert run_cli(evaluate_cli.main, [str(cartpole_checkpoint), "--video", str(video)], prog="rl-evaluate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'rl-dqn[video]'" in err[0] and f"({package} is not" in err[0], err
    assert not video.exists()
    run_dir = tmp_path / "run"
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--eval-video", "--run-dir", str(run_dir)]) == 2
    assert "eval_video = true needs the video extra" in capsys.readouterr().err
    assert not run_dir.exists()                                          # refused before any work


def test_periodic_evaluation_in_tensorboard_and_jsonl(breakout_run):
    records = [json.loads(line) for line in (breakout_run / "evaluations.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [400]
    record = records[0]
    assert record["episodes"] == 2 and record["protocol"]["epsilon"] == 0.05
    assert record["protocol"]["seed"] != 1                                 # not the training seed
    acc = EventAccumulator(str(breakout_run), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for name, key in (("mean_return", "mean"), ("std_return", "std"), ("human_normalized", "human_normalized")):
        (event,) = acc.Scalars(f"eval/{name}")
        assert event.step == 400 and event.value == pytest.approx(record[key])
    (image,) = acc.Images("eval/video")
    assert image.step == 400 and image.encoded_image_string[:6] == b"GIF89a"
    assert (image.width, image.height) == (160, 210)
    video = breakout_run / record["video"]["path"]
    assert video == breakout_run / "videos" / "eval_step_400.mp4"
    assert len(iio.imread(video, plugin="FFMPEG", index=None)) == record["lengths"][0] + 1
    assert {"histograms/q_values", "histograms/td_error"} <= set(tags["histograms"])
    assert "charts/replay_fill" in tags["scalars"] and tags["graph"]


def test_periodic_evaluation_leaves_training_untouched(tmp_path):
    """Evaluation acts through its own RNG on its own env: the trained weights are bit-identical."""
    common = ["--preset", "cartpole", "--total-steps", "800", "--learning-starts", "200", "--eval-episodes", "2",
              *QUIET]
    assert run_cli(train_cli.main, [*common, "--eval-every", "200", "--run-dir", str(tmp_path / "eval")]) == 0
    assert run_cli(train_cli.main, [*common, "--eval-every", "0", "--target-return", "0", "--run-dir", str(tmp_path / "plain")]) == 0
    with_eval, without = (ckpt.load(tmp_path / run / "checkpoints" / "latest.pt")["agent"]["q"]
                          for run in ("eval", "plain"))
    assert all(torch.equal(with_eval[k], without[k]) for k in without)
    assert len((tmp_path / "eval" / "evaluations.jsonl").read_text().splitlines()) == 4
    assert not (tmp_path / "plain" / "evaluations.jsonl").exists()


def test_best_evaluation_keeps_its_network_as_best_pt(tmp_path, monkeypatch):
    """best.pt is rewritten only when a periodic evaluation beats every earlier one, and holds the network
    that scored it; latest.pt moves on."""
    import agents.run

    real_play, means, snapshots = agents.run.play, iter([3.0, 5.0, 4.0, 5.0]), []

    def scripted_play(agent_for, cfg, **kwargs):
        results = real_play(agent_for, cfg, **kwargs)
        snapshots.append({k: v.clone() for k, v in agent_for(None).policy_state_dict().items()})
        return {**results, "mean": next(means)}

    monkeypatch.setattr(agents.run, "play", scripted_play)
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "800", "--learning-starts", "100",
                                    "--eval-every", "200", "--eval-episodes", "1", "--run-dir", str(tmp_path),
                                    *QUIET]) == 0
    records = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["best"]) for r in records] == [(200, True), (400, True), (600, False), (800, False)]
    best = ckpt.load(tmp_path / "checkpoints" / "best.pt")
    assert ckpt.decode_meta(best["meta"])["step"] == 400
    assert all(torch.equal(best["agent"]["q"][k], snapshots[1][k]) for k in snapshots[1])
    latest = ckpt.load(tmp_path / "checkpoints" / "latest.pt")["agent"]["q"]
    assert not all(torch.equal(latest[k], snapshots[1][k]) for k in latest)


@pytest.mark.parametrize("target, stops_at", [(5.0, 400), (4.5, 400), (6.0, None)])
def test_target_return_stops_at_the_first_evaluation_that_reaches_it(target, stops_at, tmp_path, monkeypatch, capsys):
    """target_return ends the run at the first periodic evaluation whose mean reaches it (status "solved",
    latest.pt and run.json at that step); a target never reached leaves the run to total_steps."""
    import agents.run

    real_play, means = agents.run.play, iter([3.0, 5.0, 4.0, 5.0])
    monkeypatch.setattr(agents.run, "play",
                        lambda agent_for, cfg, **kw: {**real_play(agent_for, cfg, **kw), "mean": next(means)})
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--total-steps", "800", "--learning-starts", "100",
                                    "--eval-every", "200", "--eval-episodes", "1", "--target-return", str(target),
                                    "--run-dir", str(tmp_path), *QUIET]) == 0
    step = stops_at or 800
    assert len((tmp_path / "evaluations.jsonl").read_text().splitlines()) == step // 200
    assert ckpt.decode_meta(ckpt.load(tmp_path / "checkpoints" / "latest.pt")["meta"])["step"] == step
    info = json.loads((tmp_path / "run.json").read_text())
    assert (info["status"], info["step"]) == ("solved" if stops_at else "finished", step)
    err = capsys.readouterr().err
    assert (f"reached target_return {target:g} at step {step}" in err) == bool(stops_at), err


def test_target_return_needs_periodic_evaluation(tmp_path, capsys):
    assert run_cli(train_cli.main, ["--preset", "cartpole", "--eval-every", "0", "--target-return", "475", "--run-dir", str(tmp_path / "r"),
                                    *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target_return = 475.0" in err[0] and "eval_every > 0" in err[0], err
    assert not (tmp_path / "r").exists()
