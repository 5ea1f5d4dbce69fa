"""The Ape-X learner (agents/distributed/learner.py) with two actors on a local Ray: it learns CartPole,
and goes on when an actor is killed and restarted."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from agents.run import prepare_run_dir
from rl import checkpoint as ckpt
from rl.cli import run_cli
from tests.support import NO_RAY, cartpole

pytest.importorskip("ray", reason=NO_RAY)

from agents.distributed.learner import DistributedTrainer, Window  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_window_averages_what_the_actors_delivered_since_the_last_log():
    window = Window()
    window.add(0, {"version": 90, "steps": 40, "acting_seconds": 0.5}, updates=100)
    window.add(0, {"version": -1, "steps": 40, "acting_seconds": 0.3}, updates=100)    # before any weights
    window.add(1, {"version": 98, "steps": 40, "acting_seconds": 0.0}, updates=104)
    assert window.scalars(3) == {"distributed/actor_0/steps_per_s": 100.0, "distributed/weight_lag_updates": pytest.approx((10 + 100 + 6) / 3),
                                 "distributed/weight_lag_updates_max": 100}
    assert window.scalars(3) == {}                                                     # cleared at each log


def make_trainer(tmp_path, cfg, actors=2, name="run"):
    run_dir = tmp_path / name
    prepare_run_dir(run_dir, cfg, "cartpole")
    return DistributedTrainer(cfg, run_dir, actors=actors, preset="cartpole", show_progress=False)


@pytest.mark.slow
def test_distributed_cartpole_learns_to_the_solved_line(ray_cluster, tmp_path):
    """The cartpole preset run by two actors (Ape-X epsilons 0.4 and 0.4^8) and a learner solves CartPole:
    within the preset's 100k steps a periodic evaluation (10 games) reaches 250, which ends the run
    (target_return), and the network kept as best.pt then scores >= 195 (the classic solved line, the bar
    of the single-process learning tests in test_rainbow.py; an untrained net scores about 10-30) under
    rl-evaluate's own protocol, 20 fresh games at epsilon 0.05.

    Not the 500 the single-process preset reaches: the actors' timing makes a distributed run unrepeatable,
    and over 7 full runs here best.pt scored 423-500 (median 464), so a 475 bar would fail CI about half the
    time. The stop was at 300 until a CI run's evaluations peaked at 284.70 (70k steps) and the run never stopped.
    best.pt rather than latest.pt: DQN on CartPole can collapse after solving it (a run scored 500 at
    50k steps and 103 at 100k)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scripts import evaluate as evaluate_cli

    cfg = cartpole(eval_every=10_000, eval_episodes=10, target_return=250.0)
    assert cfg.total_steps == 100_000 and cfg.lr_end_fraction == 0.0   # the preset's own budget and schedule
    assert (cfg.actor_chunk_steps, cfg.weight_sync_every) == (10, 20)  # and its short chunks, frequent syncs
    trainer = make_trainer(tmp_path, cfg)
    try:
        assert trainer.train() == "solved"
    finally:
        trainer.close()
    evaluations = [json.loads(line) for line in (tmp_path / "run/evaluations.jsonl").read_text().splitlines()]
    means = [r["mean"] for r in evaluations]
    stop = cfg.target_return
    assert means[-1] >= stop and all(m < stop for m in means[:-1])      # stopped at the first that reached it
    assert evaluations[-1]["step"] == trainer.step
    result = tmp_path / "evaluation.json"
    assert run_cli(evaluate_cli.main, [str(tmp_path / "run/checkpoints/best.pt"), "--episodes", "20",
                                       "--json", str(result)], prog="rl-evaluate") == 0
    scores = json.loads(result.read_text())
    assert scores["episodes"] == 20 and scores["mean"] >= 195, scores["returns"]
    payload = ckpt.load(tmp_path / "run/checkpoints/latest.pt")         # what rl-evaluate would load
    # updates follow the single-process schedule, one per train_frequency agent steps after learning_starts, up
    # to what the stop left owed: at most a round of chunks beyond the backlog at which actors wait
    owed = (trainer.step - cfg.learning_starts) // cfg.train_frequency - payload["agent"]["updates"]
    assert 0 <= owed <= 2 * 2 * cfg.actor_chunk_steps * cfg.num_envs // cfg.train_frequency, owed
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    wanted = {"distributed/actor_0/steps_per_s", "distributed/actor_1/steps_per_s", "distributed/replay_insert_per_s",
              "distributed/replay_sample_per_s", "distributed/weight_lag_updates", "distributed/updates_per_s",
              "charts/episodic_return", "losses/td_loss", "charts/SPS", "eval/mean_return"}
    assert wanted <= tags, wanted - tags
    lags = [e.value for e in acc.Scalars("distributed/weight_lag_updates")]
    assert max(lags) < 4 * cfg.weight_sync_every + 2 * cfg.actor_chunk_steps * cfg.num_envs


def test_killed_actor_is_restarted_and_training_goes_on(ray_cluster, tmp_path):
    """Actor 0 is killed at step 2,500; Ray restarts it and the learner takes chunks from the new incarnation.
    The run is long enough never to end by itself: once the restarted actor has delivered, the test stops it
    the way Ctrl-C does, so a slow machine (a restart takes seconds) cannot end the run first."""
    ray = ray_cluster
    cfg = cartpole(total_steps=1_000_000, learning_starts=1_000)
    trainer = make_trainer(tmp_path, cfg)
    seen = {}

    def kill_actor_0_then_stop():
        deadline = time.monotonic() + 120
        while trainer.step < 2_500 and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["killed_at"] = trainer.step
        ray.kill(trainer.fleet.handles[0], no_restart=False)        # a crash, as far as Ray can tell
        deadline = time.monotonic() + 120
        while 1 not in trainer.fleet.incarnations_seen[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["restarted_by"] = trainer.step
        os.kill(os.getpid(), signal.SIGINT)                   # Ctrl-C: the loop stops after this step

    killer = threading.Thread(target=kill_actor_0_then_stop, daemon=True)
    killer.start()
    try:
        status = trainer.train()
        killer.join(5)
        alive = ray.get(trainer.fleet.handles[0].identity.remote(), timeout=60)
        fleet = trainer.fleet
    finally:
        trainer.close()
    assert status == "stopped" and seen["killed_at"] >= 2_500
    assert seen["killed_at"] < seen["restarted_by"] <= trainer.step < cfg.total_steps
    assert alive["incarnation"] == 1 and fleet.restarts[0] >= 1
    assert fleet.incarnations_seen[0] == {0, 1}                   # chunks before and after the restart
    owed = (trainer.step - cfg.learning_starts) // cfg.train_frequency - trainer.agent.updates
    assert 0 <= owed <= 2 * 2 * cfg.actor_chunk_steps * cfg.num_envs // cfg.train_frequency, owed
