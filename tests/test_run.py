"""agents/run.py: the skeleton every training loop runs on (schedule, tail, run.json, save and load)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agents.build import make_agent
from agents.run import Every, Run, RunOwner, TrainingDiverged, prepare_run_dir, updates_due
from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig, from_dict, load_preset

CARTPOLE = from_dict(TrainConfig, load_preset("cartpole"))
pytestmark = pytest.mark.usefixtures("one_thread")


def new_run(tmp_path, **changes) -> Run:
    cfg = dataclasses.replace(CARTPOLE, **changes)
    prepare_run_dir(tmp_path, cfg, "cartpole")
    return Run(cfg, tmp_path, make_agent(cfg, (4,), 2), preset="cartpole", show_progress=False,
               meta=lambda: {"owner": [1, 2]})


def stepping(run: Run, steps: int, on_log=lambda: None):
    """A loop body: ``steps`` agent steps per iteration (a 10-step game ends at step 100), then the tail."""
    def body(loop):
        status = None
        while status is None:
            loop.record(steps, [(10.0, 10)] if run.step + steps == 100 else [])
            status = loop.end_of_step(on_log)
        return status
    return body


def test_every_is_due_once_per_multiple_reached():
    every = Every(5, step=3)
    assert [every.due(s) for s in (4, 5, 7, 12, 14, 15)] == [False, True, False, True, False, True]
    assert not any(Every(0, 0).due(s) for s in (0, 10, 10**9))            # 0: never


def test_updates_are_owed_per_train_frequency_and_forgiven_while_paused(tmp_path):
    run = new_run(tmp_path, learning_starts=100, train_frequency=4, batch_size=32)
    run.step = 140
    assert updates_due(140, run.cfg) == run.updates_owed() == 10
    assert run.pause_learning(replay_size=31)                              # less than a batch: forgiven
    assert run.skipped_updates == 10 and run.updates_owed() == 0
    run.step = 148
    assert not run.pause_learning(replay_size=32) and run.updates_owed() == 2
    run.refill("no replay")
    assert run.refill_until == 248 and "refilling 100 steps" in run.resume_note
    assert run.pause_learning(replay_size=10**6) and run.updates_owed() == 0


def test_the_tail_logs_evaluates_checkpoints_and_stops_in_that_order(tmp_path):
    run = new_run(tmp_path, log_every=100, eval_every=200, checkpoint_every=300, eval_episodes=1,
                  keep_checkpoints=5, target_return=0.0)
    seen = []
    body = stepping(run, 50, lambda: seen.append(("log", run.step)))
    assert run.train(body, stop_at=450, example_obs=np.zeros((1, 4), np.float32)) == "stopped"
    assert seen == [("log", s) for s in (100, 200, 300, 400)]
    evaluations = [json.loads(line)["step"] for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert evaluations == [200, 400] and run.episodes == 1
    assert [p.name for p in run.checkpoints.periodic()] == ["step_000000000300.pt"]
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "stopped"
    meta = ckpt.decode_meta(ckpt.load(run.checkpoints.latest)["meta"])
    assert (meta["step"], meta["episodes"], meta["owner"]) == (450, 1, [1, 2])


def test_each_evaluation_records_the_training_return_rl_runs_reads_from_tensorboard(tmp_path):
    """An evaluation's record carries the training return by its step (the last RECENT_GAMES games, as rl-runs
    computes it from TensorBoard), so a copy of evaluations.jsonl alone, without the run's TensorBoard files,
    still gives every figure of the learning curve."""
    from rl import curves
    from rl.logging import RECENT_GAMES, read_training_returns

    run = new_run(tmp_path, log_every=0, eval_every=400, checkpoint_every=0, eval_episodes=1, target_return=0.0)

    def body(loop):
        status = None
        while status is None:       # a game ends every 2 steps, scoring its step: 150 games by step 300
            loop.record(2, [(float(run.step + 2), 2)] if run.step < 300 else [])
            status = loop.end_of_step(lambda: None)
        return status

    assert run.train(body, stop_at=800, example_obs=np.zeros((1, 4), np.float32)) == "stopped"
    records = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    last = np.arange(2, 301, 2.0)[-RECENT_GAMES:]          # the last 100 games, at steps 102..300
    assert [r["step"] for r in records] == [400, 800]
    assert all(r["train"] == {"mean": last.mean(), "std": last.std(), "games": RECENT_GAMES} for r in records)
    mean, sd, games = curves.training_return_at(*read_training_returns(tmp_path), np.array([400, 800]))
    assert mean.tolist() == [last.mean()] * 2 and games.tolist() == [RECENT_GAMES] * 2
    assert sd == pytest.approx([last.std()] * 2)
    older = {k: v for k, v in records[0].items() if k != "train"}       # written before records carried it
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (older, records[1])))
    mixed = curves.read_curve(tmp_path)                                 # the first from TensorBoard
    assert mixed.train_return.tolist() == mean.tolist() and mixed.train_games.tolist() == games.tolist()
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for events in tmp_path.glob("events.out.tfevents.*"):
        events.unlink()
    copied = curves.read_curve(tmp_path)
    assert copied.train_return.tolist() == mean.tolist() and copied.train_games.tolist() == games.tolist()
    assert copied.train_sd.tolist() == [r["train"]["std"] for r in records]


def test_a_running_run_keeps_run_json_current(tmp_path, monkeypatch):
    """Heartbeats at log time bring run.json's step, wall time and speed up to date while the loop runs, and it
    names the step of the last checkpoint, where a resume would continue."""
    import agents.run as run_module

    monkeypatch.setattr(run_module, "HEARTBEAT_SECONDS", 0.0)
    run = new_run(tmp_path, log_every=100, checkpoint_every=300, eval_every=0, target_return=0.0)
    seen = []
    body = stepping(run, 50, lambda: seen.append(json.loads((tmp_path / "run.json").read_text())))
    assert run.train(body, stop_at=450, example_obs=np.zeros((1, 4), np.float32)) == "stopped"
    # each log sees the heartbeat of the log before it
    assert [(r["status"], r["step"], r["checkpoint_step"]) for r in seen] == [
        ("running", 0, None), ("running", 100, None), ("running", 200, None), ("running", 300, 300)]
    assert all(r["sps"] > 0 for r in seen[1:]) and seen[1]["wall_time"] <= seen[3]["wall_time"]
    final = json.loads((tmp_path / "run.json").read_text())
    assert (final["status"], final["step"], final["checkpoint_step"]) == ("stopped", 450, 450)
    assert "sps" not in final                                    # a speed only while it runs


def test_a_target_return_reached_ends_the_run_as_solved(tmp_path):
    run = new_run(tmp_path, eval_every=100, eval_episodes=1, target_return=1.0)
    assert run.train(stepping(run, 100), stop_at=None, example_obs=np.zeros((1, 4), np.float32)) == "solved"
    assert run.step == 100 and (tmp_path / "checkpoints" / "best.pt").exists()


def test_a_diverged_run_says_failed_and_saves_nothing(tmp_path):
    run = new_run(tmp_path)

    def body(loop):
        loop.record(10, [])
        run.check_finite({"td_loss": float("nan")})

    with pytest.raises(TrainingDiverged, match="td_loss=nan"):
        run.train(body, stop_at=None, example_obs=np.zeros((1, 4), np.float32))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"
    assert not run.checkpoints.latest.exists()


def test_load_continues_the_counters_and_the_preset(tmp_path):
    run = new_run(tmp_path)
    run.step, run.episodes, run.skipped_updates = 1234, 5, 7
    run.save()
    again = Run(run.cfg, tmp_path, make_agent(run.cfg, (4,), 2), preset=None, show_progress=False, meta=dict)
    assert again.load("cpu")["owner"] == [1, 2]
    assert (again.step, again.episodes, again.skipped_updates, again.preset) == (1234, 5, 7, "cartpole")


def test_a_run_directory_is_never_reused(tmp_path):
    new_run(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(tmp_path, CARTPOLE, "cartpole")


def test_run_owners_show_the_runs_counters(tmp_path):
    owner = RunOwner()
    owner.run = new_run(tmp_path)
    owner.run.refill("why")
    assert owner.step == 0 and owner.checkpoints is owner.run.checkpoints and owner.resume_note.startswith("why")


def test_the_training_return_is_the_mean_of_the_latest_games_and_a_resume_keeps_them(tmp_path):
    """run.json's train_return (rl-runs' column) averages the latest RECENT_GAMES training games' raw scores, and
    the checkpoint carries them, so a resumed run reports the same window rather than starting it afresh."""
    from rl.logging import RECENT_GAMES

    run = new_run(tmp_path, eval_every=0, target_return=0.0)

    def games(scores):
        def body(loop):
            for score in scores:
                loop.record(2, [(float(score), 2)])
            return "stopped"
        return body

    run.train(games(range(150)), stop_at=None, example_obs=np.zeros((1, 4), np.float32))
    info = json.loads((tmp_path / "run.json").read_text())
    assert (info["train_return"], info["train_games"]) == (np.mean(range(150 - RECENT_GAMES, 150)), RECENT_GAMES)
    again = Run(run.cfg, tmp_path, make_agent(run.cfg, (4,), 2), preset=None, show_progress=False, meta=dict)
    again.load("cpu")
    again.train(games([1000.0]), stop_at=None, example_obs=np.zeros((1, 4), np.float32))
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["train_return"] == np.mean([*range(150 - RECENT_GAMES + 1, 150), 1000.0])
    assert info["train_games"] == RECENT_GAMES
