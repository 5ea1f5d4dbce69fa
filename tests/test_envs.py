"""The real environments: Atari semantics (lives, full games, raw scores), any gymnasium env through gym:ID and
gym_packages (observations, refusals, training, resume, evaluation), and exact state restore."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import tomllib
import torch

from benchmarks.gymnasium_loop import standard_pipeline
from envs import make_env
from envs.base import episode_seed
from envs.gym import observation_encoding, space_problem
from rl import checkpoint as ckpt
from rl.cli import run_cli
from rl.config import TrainConfig
from rl.replay import ReplayBuffer, ReplaySpec
from scripts import evaluate as evaluate_cli
from scripts import train as train_cli
from tests.fakes import GYM_PACKAGE, drive

ROOT = Path(__file__).resolve().parents[1]
HAS_MINATAR = importlib.util.find_spec("minatar") is not None
needs_minatar = pytest.mark.skipif(not HAS_MINATAR, reason="MinAtar is not installed: pip install -e '.[minatar]'")
CATCH = TrainConfig(env="gym:RlTest/Catch-v0", gym_packages=[GYM_PACKAGE], network="minatar_cnn", num_envs=3)
MINATAR = TrainConfig(env="gym:MinAtar/Breakout-v1", gym_packages=["minatar"], network="minatar_cnn", num_envs=3)

BREAKOUT = TrainConfig(env="breakout", num_envs=2)
CARTPOLE = TrainConfig(env="cartpole", network="mlp", num_envs=3)


play = drive


def test_breakout_replay_rebuilds_exactly_what_the_agent_saw():
    env = make_env(BREAKOUT)
    buf = ReplayBuffer(ReplaySpec(2 * 1000, 2, env.obs_shape, env.obs_dtype, stack=4, num_actions=4))
    log = play(env, 700, replay=buf)
    lives_lost = sum(int((o.terminated & ~o.episode_end).sum()) for _, _, o in log)
    games = sum(len(o.finished) for _, _, o in log)
    assert lives_lost >= 4 and games >= 2  # both kinds of boundary happened
    t = np.repeat(np.arange(699), 2)
    e = np.tile(np.arange(2), 699)
    stacks = buf.stacks(t, e)
    for i in range(len(t)):
        np.testing.assert_array_equal(stacks[i], log[t[i]][0][e[i]])
    batch = buf.gather(t, e, np.ones(len(t), np.float32))
    for i in range(len(t)):
        obs, a, out = log[t[i]]
        assert batch.action[i] == a[e[i]]
        assert batch.reward[i] == out.reward[e[i]]
        assert (batch.discount[i] == 0) == bool(out.terminated[e[i]])
        if not out.terminated[e[i]]:
            np.testing.assert_array_equal(batch.next_obs[i], out.final_obs[e[i]])


def test_breakout_games_are_whole_and_scores_raw():
    env = make_env(BREAKOUT)
    log = play(env, 800)
    finished = [f for _, _, o in log for f in o.finished]
    assert finished
    # a full game of random Breakout lasts five lives: well over 100 agent steps
    assert min(length for _, _, length in finished) > 100
    rewards = np.concatenate([o.reward for _, _, o in log])
    assert set(np.unique(rewards)) <= {0, 1, 4, 7}  # Breakout's raw brick values, never clipped
    # a new game starts from a zero-padded stack
    for obs, _, out in log:
        for e in np.flatnonzero(out.episode_end):
            assert (out.obs[e, :3] == 0).all() and out.obs[e, 3].any()


def test_evaluation_env_has_no_life_loss_terminals():
    env = make_env(BREAKOUT, evaluation=True)
    log = play(env, 600)
    for _, _, out in log:
        np.testing.assert_array_equal(out.terminated, out.episode_end & ~out.truncated)


@pytest.mark.parametrize("cfg,steps", [
    (BREAKOUT, 300), (CARTPOLE, 120), (CATCH, 300), pytest.param(MINATAR, 300, marks=needs_minatar),
], ids=["breakout", "cartpole", "catch", "minatar"])
def test_state_restore_replays_to_the_same_state(cfg, steps, gym_package):
    """Catch and MinAtar keep the last action across a reset for their sticky actions: a gym env is made afresh
    for each episode, so the restored envs still play the same games."""
    env = make_env(cfg)
    log = play(env, steps, seed=4)
    state = env.state_dict()
    fresh = make_env(cfg)
    obs = fresh.load_state_dict(state)
    np.testing.assert_array_equal(obs, log[-1][2].obs)
    rng = np.random.default_rng(9)
    for _ in range(150):
        a = rng.integers(0, env.num_actions, env.num_envs)
        x, y = env.step(a), fresh.step(a)
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.reward, y.reward)
        np.testing.assert_array_equal(x.terminated, y.terminated)
        assert x.finished == y.finished


def test_breakout_observations_equal_gymnasiums_standard_pipeline():
    """Same seed, same actions: every observation, reward, lost life and game end is identical, over
    two whole games. No-op starts are off on both sides (each library draws their count from its own RNG)."""
    ours = make_env(TrainConfig(env="breakout", num_envs=1, noop_max=0))
    theirs = standard_pipeline("Breakout", noop_max=0)
    obs = ours.reset()
    ref, info = theirs.reset(seed=episode_seed(ours.seed, 0, 0))
    np.testing.assert_array_equal(obs[0], ref)
    lives, rng, games, lives_lost, steps = info["lives"], np.random.default_rng(0), 0, 0, 0
    while games < 2:
        a = int(rng.integers(ours.num_actions))
        out = ours.step(np.array([a]))
        ref, reward, term, trunc, info = theirs.step(a)
        steps += 1
        assert out.reward[0] == reward
        assert bool(out.episode_end[0]) == (term or trunc)
        lost = info["lives"] < lives
        lives = info["lives"]
        assert bool(out.terminated[0]) == (lost or term)   # a lost life is terminal for the learner
        lives_lost += int(lost and not term)
        if out.episode_end[0]:
            np.testing.assert_array_equal(out.final_obs[0], ref)
            games += 1
            ref, info = theirs.reset(seed=episode_seed(ours.seed, 0, games))
            lives = info["lives"]
        np.testing.assert_array_equal(out.obs[0], ref, err_msg=f"step {steps}")
    assert lives_lost >= 8 and steps > 200


# --- any gymnasium env: gym:ID ---------------------------------------------------------------------------------

@pytest.mark.parametrize("space,kind,shape,obs,encoded", [
    (gym.spaces.Box(-1, 1, (3,), np.float64), "vector", (3,), [0.5, -1, 1], [0.5, -1, 1]),
    (gym.spaces.Box(0, 255, (2, 3), np.uint8), "image", (1, 2, 3), [[0, 1, 2], [3, 4, 255]],
     [[[0, 1, 2], [3, 4, 255]]]),
    (gym.spaces.Box(0, 1, (2, 3, 2), bool), "image", (2, 2, 3), [[[0, 0], [0, 0], [0, 1]], [[1, 0], [0, 0], [0, 0]]],
     [[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [0, 0, 0]]]),               # [H, W, C] -> [C, H, W]; bool as 0/255
    (gym.spaces.Box(0, 1000, (2, 2), np.int64), "vector", (4,), [[0, 1], [999, 2]], [0, 1, 999, 2]),
    (gym.spaces.Box(0, 1, (2, 2, 3), np.float32), "vector", (12,), np.full((2, 2, 3), 0.25), [0.25] * 12),
    (gym.spaces.Discrete(4, start=2), "one_hot", (4,), 3, [0, 1, 0, 0]),
])
def test_gym_observations_become_vectors_images_or_one_hots(space, kind, shape, obs, encoded):
    encoding = observation_encoding(space)
    assert (encoding.kind, encoding.shape) == (kind, shape)
    out = encoding.encode(np.asarray(obs, space.dtype))
    assert out.dtype == (np.uint8 if kind == "image" else np.float32) and out.shape == shape
    np.testing.assert_array_equal(out, np.asarray(encoded).reshape(shape))
    assert space_problem(space, gym.spaces.Discrete(2)) is None


@pytest.mark.parametrize("observation,action,words", [
    (gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), gym.spaces.Discrete(2), "observation space Dict"),
    (gym.spaces.Tuple([gym.spaces.Discrete(2)]), gym.spaces.Discrete(2), "observation space Tuple"),
    (gym.spaces.Text(5), gym.spaces.Discrete(2), "observation space Text"),
    (gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (1,)), "action space Box"),
    (gym.spaces.Box(-1, 1, (3,)), gym.spaces.MultiDiscrete([2, 2]), "action space MultiDiscrete"),
])
def test_gym_spaces_dqn_cannot_take_are_named(observation, action, words):
    problem = space_problem(observation, action)
    assert words in problem and "\n" not in problem


def test_gym_env_steps_with_its_own_action_offset_and_protocol(gym_package):
    """The agent's actions are 0..n-1; an env numbering its actions from -1 receives -1 and 0 (it refuses any
    other), and action 1 is its "right"."""
    cfg = TrainConfig(env="gym:RlTest/OffsetCorridor-v0", gym_packages=[gym_package], network="mlp", num_envs=2)
    env = make_env(cfg)
    assert env.obs_shape == (8,) and env.num_actions == 2 and env.frame_stack == 1
    assert env.protocol == {"gym_id": "RlTest/OffsetCorridor-v0", "gym_packages": [gym_package]}
    obs = env.reset()
    assert obs.dtype == np.float32 and (obs.sum(1) == 1).all()          # one-hot positions
    start = obs.argmax(1)
    for _ in range(3):
        obs = env.step(np.ones(2, np.int64)).obs
    assert (obs.argmax(1) > start).all()        # three steps right (a slip back costs one): further right
    for _ in range(3):
        env.step(np.zeros(2, np.int64))


@pytest.mark.parametrize("extra,words", [
    (["--env", "gym:Pendulum-v1"], ["gym:Pendulum-v1", "action space Box", "not Discrete"]),
    (["--env", "gym:RlTest/DictObs-v0", "--gym-packages", f'["{GYM_PACKAGE}"]'],
     ["gym:RlTest/DictObs-v0", "observation space Dict"]),
    (["--env", "gym:CartPole-v1", "--gym-packages", '["no_such_module_for_rl"]'],
     ["gym_packages", "'no_such_module_for_rl'", "ModuleNotFoundError"]),
    (["--env", "gym:RlTest/Corridr-v0", "--gym-packages", f'["{GYM_PACKAGE}"]'],
     ["no gymnasium environment 'RlTest/Corridr-v0'", "did you mean 'gym:RlTest/Corridor-v0'"]),
    (["--env", "gym:RlTest/Catch-v0", "--gym-packages", f'["{GYM_PACKAGE}"]', "--network", "nature_cnn"],
     ["nature_cnn", "[2, 7, 7] are too small", "use impala_cnn or minatar_cnn"]),
    (["--env", "gym:RlTest/Catch-v0", "--gym-packages", f'["{GYM_PACKAGE}"]'],
     ["network = 'mlp'", "images", "minatar_cnn"]),
    (["--env", "gym:CartPole-v1", "--network", "minatar_cnn"], ["vectors", "use mlp"]),
    (["--env", "breakout", "--network", "nature_cnn", "--gym-packages", f'["{GYM_PACKAGE}"]'],
     ["gym_packages", "ALE games"]),
    (["--env", "gym:"], ["gymnasium id after 'gym:'"]),
], ids=["continuous-actions", "dict-observations", "unknown-module", "unknown-id", "image-too-small",
        "mlp-on-images", "cnn-on-vectors", "packages-for-atari", "no-id"])
def test_envs_dqn_cannot_run_are_refused_before_any_work(extra, words, tmp_path, capsys, gym_package):
    """One line naming the env and what is wrong, exit 2, and nothing written."""
    run_dir = tmp_path / "run"
    code = run_cli(train_cli.main, ["--preset", "cartpole", *extra, "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), err[0]
    assert not run_dir.exists()


def test_an_id_only_a_package_registers_is_refused_without_it(tmp_path, gym_package):
    """In a fresh process (this one has imported the package by now): the id is unknown until gym_packages
    names its package, and the message says so."""
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "scripts.train", "--preset", "cartpole",
                           "--env", "gym:RlTest/Corridor-v0", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, err
    assert "no gymnasium environment 'RlTest/Corridor-v0'" in err[0] and "gym_packages" in err[0]
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_gym_id_is_solved_through_the_gym_prefix(tmp_path):
    """FrozenLake-v1 (the slippery 4x4 lake; its Discrete observations reach the MLP one-hot): 30k seeded steps
    (about 40 s on 2 busy cores) reach gymnasium's reward threshold for it, a 0.70 success rate, over 1,000
    greedy games; the best policy's is about 0.74 (with 1-step returns: a 3-step return on the slippery lake
    counts the exploratory slips of the steps after the first). The classic-control ids are either aliases already
    (CartPole-v1, Acrobot-v1, MountainCar-v0), continuous (Pendulum) or CartPole again (v0)."""
    run_dir = tmp_path / "frozenlake"
    code = run_cli(train_cli.main, ["--preset", "cartpole", "--env", "gym:FrozenLake-v1", "--total-steps", "30000",
                                    "--learning-starts", "1000", "--exploration-fraction", "0.3", "--hidden-sizes",
                                    "[64, 64]", "--n-step", "1", "--seed", "1", "--eval-every", "0", "--target-return", "0",
                                    "--run-dir", str(run_dir),
                                    "--no-progress", "--no-save-replay"])
    assert code == 0
    out = tmp_path / "eval.json"
    assert run_cli(evaluate_cli.main, [str(run_dir / "checkpoints" / "latest.pt"), "--episodes", "1000",
                                       "--epsilon", "0", "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["gym_id"] == "FrozenLake-v1"
    assert result["mean"] >= gym.spec("FrozenLake-v1").reward_threshold, result["mean"]


def test_a_users_package_trains_resumes_and_evaluates_through_gym_packages(tmp_path, capsys, gym_package):
    """Corridor lives in a module the test wrote (on sys.path, as a user's package would be): --gym-packages
    imports it before the env is made, the run stops halfway and resumes exactly, and rl-evaluate rebuilds the
    env from the checkpoint alone (importing the package again) and plays the learned corridor walk."""
    # gamma 0.9: a short horizon makes the gaps between the two actions' values large enough to learn in 3,000 steps
    base = ["--preset", "cartpole", "--env", "gym:RlTest/Corridor-v0", "--gym-packages", f'["{gym_package}"]',
            "--total-steps", "3000", "--learning-starts", "500", "--exploration-fraction", "0.3", "--gamma", "0.9",
            "--checkpoint-every", "1000", "--eval-every", "0", "--target-return", "0", "--no-progress", "--torch-threads", "1"]
    assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / "straight")]) == 0
    assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / "split"), "--stop-at", "1500"]) == 0
    assert run_cli(train_cli.main, ["--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    assert_same_weights(tmp_path / "straight", tmp_path / "split")
    assert tomllib.loads((tmp_path / "split" / "config.toml").read_text())["gym_packages"] == [gym_package]
    capsys.readouterr()
    out = tmp_path / "eval.json"
    code = run_cli(evaluate_cli.main, [str(tmp_path / "split" / "checkpoints" / "latest.pt"), "--episodes", "20",
                                       "--epsilon", "0", "--json", str(out), "--no-progress"])
    assert code == 0 and "protocol: RlTest/Corridor-v0" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["protocol"]["gym_packages"] == [gym_package]
    assert result["mean"] == 1.0 and np.mean(result["lengths"]) < 20     # walks right (random: 0.35 in 41 steps)


@pytest.mark.parametrize("env,obs_shape", [
    (["--preset", "cartpole", "--network", "minatar_cnn", "--env", "gym:RlTest/Catch-v0",
      "--gym-packages", f'["{GYM_PACKAGE}"]'], (2, 7, 7)),
    pytest.param(["--preset", "minatar-breakout"], (4, 10, 10), marks=needs_minatar),
], ids=["catch", "minatar-preset"])
def test_an_image_env_trains_with_minatar_cnn_and_resumes_exactly(env, obs_shape, tmp_path, gym_package):
    """bool [H, W, C] observations, stored whole in the replay (no frame stack): a run stopped halfway and
    resumed ends with the uninterrupted run's weights, replay and env states restored bit for bit."""
    base = [*env, "--num-envs", "2", "--total-steps", "600",
            "--learning-starts", "200", "--buffer-size", "2000", "--target-update", "100", "--checkpoint-every", "300",
            "--eval-every", "0", "--target-return", "0", "--no-progress", "--torch-threads", "1"]
    assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / "straight")]) == 0
    assert run_cli(train_cli.main, [*base, "--run-dir", str(tmp_path / "split"), "--stop-at", "300"]) == 0
    assert run_cli(train_cli.main, ["--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    assert_same_weights(tmp_path / "straight", tmp_path / "split")
    payload = ckpt.load(tmp_path / "split" / "checkpoints" / "latest.pt")
    assert ckpt.decode_meta(payload["meta"])["step"] == 600 and payload["agent"]["updates"] >= 199   # 400 steps learn
    frames = np.load(tmp_path / "split" / "checkpoints" / "replay" / "frames.npy")
    assert frames.dtype == np.uint8 and frames.shape[2:] == obs_shape           # whole observations, 0/255
    assert set(np.unique(frames)) == {0, 255}


def assert_same_weights(a, b) -> None:
    wa, wb = (ckpt.load(run / "checkpoints" / "latest.pt")["agent"] for run in (a, b))
    for part in ("q", "target"):
        for name in wa[part]:
            assert torch.equal(wa[part][name], wb[part][name]), f"{part}.{name} differs"
    assert wa["updates"] == wb["updates"]
