"""The supervised trainer and rl-supervised: classify, sweep, record and behaviour cloning."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agents.supervised import (
    SmallCNN,
    Standardize,
    SupervisedConfig,
    SupervisedTrainer,
    clone_payload,
    make_classifier,
    teacher_network,
)
from rl import checkpoint as ckpt
from rl.cli import run_cli
from rl.config import TrainConfig
from rl.data import builtin, features, split
from rl.registry import loss_names, optimizer_names
from scripts import supervised
from tests.test_data import mnist_folder

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = TrainConfig(env="cartpole", network="mlp", num_envs=2, hidden_sizes=[32, 32])


pytestmark = pytest.mark.usefixtures("one_thread")


def run_main(argv, capsys):
    try:
        code = run_cli(supervised.main, argv, prog="rl-supervised")
    except SystemExit as exc:  # argparse's own errors exit directly
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Read a run's TensorBoard events back: tag -> [(update, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def spirals(samples=1500, seed=1):
    data = builtin("spirals", samples)
    train, val = split(len(data.y), 0.2, seed)
    x, y = features(data.x), torch.as_tensor(data.y)
    return x[train], y[train], x[val], y[val]


def trainer(cfg: SupervisedConfig, shape=(2,), classes=3, **kw) -> SupervisedTrainer:
    torch.manual_seed(cfg.seed)
    return SupervisedTrainer(cfg, make_classifier(cfg.model, shape, classes, cfg.hidden_sizes, cfg.dropout), **kw)


# --- the trainer ---------------------------------------------------------------------------------

def test_trainer_learns_spirals():
    history = trainer(SupervisedConfig()).fit(*spirals(3000))
    assert history[-1].val_accuracy > 0.95
    assert history[-1].train_loss < 0.2 * history[0].train_loss
    assert [s.epoch for s in history] == list(range(1, 31))
    assert history[-1].updates == 30 * math.ceil(2400 / 64)


@pytest.mark.parametrize("loss", loss_names())
def test_every_registered_loss_trains_a_classifier(loss):
    """nll sees log-softmax outputs, value losses regress onto one-hot labels, class losses take labels."""
    data = builtin("gaussians", 800)
    train, val = split(800, 0.25, 0)
    x, y = features(data.x), torch.as_tensor(data.y)
    cfg = SupervisedConfig(loss=loss, epochs=5)
    history = trainer(cfg, (8,), 4).fit(x[train], y[train], x[val], y[val])
    assert history[-1].val_accuracy > 0.85, (loss, history[-1])


def test_regression_targets_train_with_value_losses():
    x = torch.linspace(-2, 2, 400).unsqueeze(1)                     # [400, 1]
    y = torch.sin(2 * x)                                              # float targets [400, 1]
    cfg = SupervisedConfig(loss="mse", epochs=50, batch_size=16, hidden_sizes=[32, 32], optimizer_kwargs={"lr": 3e-3})
    torch.manual_seed(0)
    model = make_classifier("mlp", (1,), 1, cfg.hidden_sizes)
    history = SupervisedTrainer(cfg, model).fit(x[::2], y[::2], x[1::2], y[1::2])
    assert history[-1].val_loss < 0.3 * history[0].val_loss
    assert math.isnan(history[-1].val_accuracy) and math.isnan(history[-1].train_accuracy)


def test_same_seed_same_run_other_seed_other_run():
    data = spirals(600)
    a = trainer(SupervisedConfig(epochs=3, dropout=0.2)).fit(*data)
    b = trainer(SupervisedConfig(epochs=3, dropout=0.2)).fit(*data)
    c = trainer(SupervisedConfig(epochs=3, dropout=0.2, seed=2)).fit(*data)
    assert [s.train_loss for s in a] == [s.train_loss for s in b]
    assert [s.train_loss for s in a] != [s.train_loss for s in c]


def test_gradient_clipping_bounds_the_step_and_reports_the_raw_norm():
    x, y, _, _ = spirals(300)
    cfg = SupervisedConfig(optimizer="sgd", optimizer_kwargs={"lr": 1.0}, max_grad_norm=1e-3)
    t = trainer(cfg)
    before = torch.cat([p.detach().flatten().clone() for p in t.model.parameters()])
    step = t.update(x[:64], y[:64])
    after = torch.cat([p.detach().flatten() for p in t.model.parameters()])
    assert step["grad_norm"].item() > 1e-2                     # the norm before clipping
    assert (after - before).norm().item() <= 1e-3 * 1.0001   # |step| = lr * clipped norm


def test_dropout_is_a_model_option():
    for model in (make_classifier("mlp", (2,), 3, [16], dropout=0.5), SmallCNN((8, 8), 3, [16], dropout=0.5)):
        assert any(isinstance(m, nn.Dropout) for m in model.modules())
        x = torch.rand(4, 8, 8) if isinstance(model, SmallCNN) else torch.rand(4, 2)
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
    assert not any(isinstance(m, nn.Dropout) for m in make_classifier("mlp", (2,), 3, [16]).modules())


def test_label_smoothing_and_weight_decay_reach_torch():
    cfg = SupervisedConfig(loss="ce", loss_kwargs={"label_smoothing": 0.1}, optimizer="adamw",
                           optimizer_kwargs={"weight_decay": 0.05})
    t = trainer(cfg)
    out, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(t.loss(out, y), F.cross_entropy(out, y, label_smoothing=0.1))
    assert t.optimizer.param_groups[0]["weight_decay"] == 0.05


def test_learning_rate_decays_linearly_to_its_end_fraction():
    history = trainer(SupervisedConfig(epochs=4, lr_end_fraction=0.1)).fit(*spirals(600))
    total = history[-1].updates
    for s in history:            # the rate at each epoch's last update, on the line from 1e-3 to 1e-4
        assert s.learning_rate == pytest.approx(1e-3 * (1 - 0.9 * (s.updates - 1) / (total - 1)), rel=1e-6)
    assert history[-1].learning_rate == pytest.approx(1e-4, rel=1e-6)


def test_cnn_reads_images_with_and_without_a_channel_axis():
    for shape in ((12, 10), (3, 12, 10)):
        model = make_classifier("cnn", shape, 5, [8])
        assert model(torch.rand(2, *shape)).shape == (2, 5)


def test_checkpoints_are_safe_and_rebuild_the_model(tmp_path):
    x, y, vx, vy = spirals(600)
    t = trainer(SupervisedConfig(epochs=2), model_meta={"feature_shape": [2], "num_classes": 3})
    t.fit(x, y, vx, vy, checkpoint_dir=tmp_path)
    for name in ("latest.pt", "best.pt"):
        payload = torch.load(tmp_path / name, weights_only=True)  # plain data and tensors only
        assert set(payload) == {"format_version", "config", "model", "optimizer", "meta", ckpt.CHECKSUM_KEY}
    payload = ckpt.load(tmp_path / "latest.pt")
    meta = ckpt.decode_meta(payload["meta"])
    assert (meta["epoch"], meta["updates"], meta["stats"]["epoch"]) == (2, t.updates, 2)
    cfg = SupervisedConfig(**payload["config"])
    model = make_classifier(cfg.model, meta["feature_shape"], meta["num_classes"], cfg.hidden_sizes)
    model.load_state_dict(payload["model"])
    t.model.eval()
    torch.testing.assert_close(model(vx), t.model(vx))


def test_trainer_writes_the_tensorboard_scalars(tmp_path):
    from rl.logging import Logger

    logger = Logger(tmp_path)
    t = trainer(SupervisedConfig(epochs=2, log_every=5), logger=logger)
    t.fit(*spirals(600))
    logger.close()
    found = scalars(tmp_path)
    for tag in ("train/loss", "train/accuracy", "train/grad_norm", "charts/learning_rate", "val/loss", "val/accuracy"):
        assert tag in found and all(math.isfinite(v) for _, v in found[tag]), tag
    # 8 updates per epoch: train scalars every 5 updates and at each epoch's end, validation per epoch
    assert [step for step, _ in found["train/loss"]] == [5, 8, 10, 15, 16]
    assert [step for step, _ in found["val/accuracy"]] == [8, 16]


# --- rl-supervised classify ------------------------------------------------------------------------

def test_classify_spirals_prints_validation_accuracy(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = run_main(["classify", "--data", "spirals", "--run-dir", str(run)], capsys)
    assert code == 0
    accuracy = float(out.split("validation accuracy: ")[1].split()[0])
    assert accuracy > 0.95
    assert (run / "config.toml").exists() and (run / "checkpoints" / "latest.pt").exists()
    assert {"train/loss", "val/accuracy", "charts/learning_rate", "train/grad_norm"} <= set(scalars(run))


def test_classify_idx_folder_with_cnn_and_npz_with_mlp(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    mnist_folder(folder, n=40)
    code, out, _ = run_main(["classify", "--data", str(folder), "--model", "cnn", "--epochs", "1",
                             "--hidden-sizes", "[8]", "--run-dir", str(tmp_path / "a")], capsys)
    assert code == 0 and "validation accuracy" in out
    meta = ckpt.decode_meta(ckpt.load(tmp_path / "a" / "checkpoints" / "latest.pt")["meta"])
    assert meta["feature_shape"] == [5, 4] and "standardised" in meta["inputs"]

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(50, 3)), y=np.arange(50) % 2)
    code, out, _ = run_main(["classify", "--data", str(tmp_path / "d.npz"), "--epochs", "1",
                             "--run-dir", str(tmp_path / "b")], capsys)
    assert code == 0 and "40 training / 10 validation examples" in out


def test_config_file_then_flags(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('optimizer = "nag"\nepochs = 1\nloss_kwargs = {label_smoothing = 0.1}\n')
    code, _, _ = run_main(["classify", "--config", str(tmp_path / "c.toml"), "--epochs", "2",
                           "--synthetic-samples", "200", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 0
    payload = ckpt.load(tmp_path / "r" / "checkpoints" / "latest.pt")
    assert payload["config"]["optimizer"] == "nag" and payload["config"]["epochs"] == 2
    assert payload["config"]["loss_kwargs"] == {"label_smoothing": 0.1}
    assert 'optimizer = "nag"' in (tmp_path / "r" / "config.toml").read_text()


def test_list_prints_registry_and_data_sets(capsys):
    code, out, _ = run_main(["--list"], capsys)
    assert code == 0
    for name in (*optimizer_names(), *loss_names(), "nag", "mle", "ce", "smooth_l1", "spirals", "stripes"):
        assert name in out
    assert "centered=True" in out and "eps=0.00015" in out


# --- bad input: one line, exit 2, nothing written ------------------------------------------------------

def bad_files(tmp: Path) -> None:
    (tmp / "garbage.npz").write_bytes(b"definitely not a zip")
    np.savez(tmp / "noy.npz", x=np.zeros((4, 2)))
    np.savez(tmp / "plain.npz", x=np.zeros((4, 2)), y=np.arange(4) % 2)
    (tmp / "idx").mkdir()
    (tmp / "idx" / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03\0\0\0\x02")  # truncated header
    (tmp / "idx" / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x02\0\1")


BAD = [
    (["classify", "--optimizer", "adamm"], "optimizer = 'adamm'", "adam_rainbow"),
    (["classify", "--loss", "hinge"], "loss = 'hinge'", "cross_entropy"),
    (["classify", "--optimizer-kwargs", "{momentum = 0.9}"], "no option 'momentum'", "allowed: lr"),
    (["classify", "--optimizer-kwargs", "{lr = -1.0}"], "rejected {'lr': -1.0}", "Invalid learning rate"),
    (["classify", "--loss-kwargs", "{label_smoothing = 2.0}"], "label_smoothing", "between 0.0 and 1.0"),
    (["classify", "--loss", "nll", "--loss-kwargs", "{label_smoothing = 0.1}"], "'label_smoothing'",
     "allowed: ignore_index"),
    (["classify", "--data", "{tmp}/missing.npz"], "missing.npz' does not exist", "spirals"),
    (["classify", "--data", "{tmp}/garbage.npz"], "garbage.npz", "not a readable .npz"),
    (["classify", "--data", "{tmp}/noy.npz"], "has no array 'y'", "arrays x [N, ...] and y [N]"),
    (["classify", "--data", "{tmp}/idx"], "train-images-idx3-ubyte", "truncated IDX header"),
    (["classify", "--epochs", "0"], "epochs = 0", ">= 1"),
    (["classify", "--epochs", "many"], "epochs = 'many'", "whole number"),
    (["classify", "--batch-size", "-3"], "batch_size = -3", ">= 1"),
    (["classify", "--val-fraction", "1.5"], "val_fraction = 1.5", "<= 0.9"),
    (["classify", "--val-fraction", "0.01", "--synthetic-samples", "20"], "val_fraction = 0.01", "at least one"),
    (["classify", "--dropout", "-0.1"], "dropout = -0.1", ">= 0.0"),
    (["classify", "--model", "cnn"], "model = 'cnn' is not allowed for data 'spirals'", "use mlp"),
    (["classify", "--model", "transformer"], "model = 'transformer'", "mlp, cnn"),
    (["classify", "--epoch", "3"], "'--epoch'", "--epochs"),
    (["classify", "--config", "{tmp}/none.toml"], "none.toml", "does not exist"),
    (["sweep", "--optimizers", "adam,lion"], "unknown optimizer 'lion'", "adamax"),
    (["sweep", "--optimizers", ","], "names no optimizer", "sgd"),
    (["sweep", "--optimizer", "adam"], "--optimizer does not apply", "--optimizers"),
    (["sweep", "--optimizer-kwargs", "{momentum = 0.5}"], "optimizer 'adagrad' has no option 'momentum'", "allowed"),
    (["sweep", "--optimizers", "sgd,adam", "--optimizer-kwargs", "{momentum = 0.5}"],
     "optimizer 'adam' has no option", "lr"),
    (["bc", "--data", "{tmp}/plain.npz"], "not a demonstrations file", "rl-supervised record"),
    (["bc", "--data", "{tmp}/plain.npz", "--hidden-sizes", "[8]"],
     "hidden_sizes does not apply to bc", "--hidden-sizes"),
    (["record", "{tmp}/missing.pt", "--out", "{tmp}/d.npz"], "missing.pt' does not exist", "checkpoint"),
    (["record", "{tmp}/plain.npz", "--out", "{tmp}/d.npz"], "plain.npz", "corrupt"),
    (["record", "{tmp}/clf.pt", "--out", "{tmp}/d.npz"], "not an agent checkpoint", "rl-train"),
    (["record", "{tmp}/agent.pt", "--steps", "0", "--out", "{tmp}/d.npz"], "steps = 0", ">= 1"),
    (["record", "{tmp}/agent.pt", "--epsilon", "1.5", "--out", "{tmp}/d.npz"], "epsilon = 1.5", "<= 1.0"),
    (["record", "{tmp}/agent.pt", "--out", "{tmp}/d.txt"], "d.txt", "must end in .npz"),
    (["record", "{tmp}/agent.pt", "--steps", "ten", "--out", "{tmp}/d.npz"], "steps = 'ten'", "whole number"),
    ([], "choose a command", "classify, sweep, record, bc"),
]


@pytest.mark.parametrize("argv,names,allowed", BAD, ids=[" ".join(b[0])[:60] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(argv, names, allowed, tmp_path, capsys):
    bad_files(tmp_path)
    ckpt.save(tmp_path / "clf.pt", {"config": {}, "model": {}, "meta": "{}"})
    ckpt.save(tmp_path / "agent.pt", clone_payload(CARTPOLE, teacher_network(CARTPOLE, (4,), 2), {}))
    before = sorted(tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    run = tmp_path / "run"
    if argv and argv[0] != "record":
        argv += ["--run-dir", str(run)]
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert len(err) == 1, err
    assert names in err[0] and allowed in err[0], err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: no run dir, no data file


# --- rl-supervised sweep ---------------------------------------------------------------------------

def test_sweep_runs_every_optimizer_from_the_same_init(tmp_path, capsys):
    run = tmp_path / "sweep"
    code, out, _ = run_main(["sweep", "--optimizers", "all", "--epochs", "1", "--synthetic-samples", "300",
                             "--run-dir", str(run)], capsys)
    assert code == 0
    table = out.strip().splitlines()
    assert table[0].split()[:1] == ["optimizer"]
    assert [line.split()[0] for line in table[1:]] == optimizer_names()
    with open(run / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == optimizer_names()
    assert all(float(r["wall_time_s"]) > 0 and 0 <= float(r["best_val_accuracy"]) <= 1 for r in rows)
    # one TensorBoard run per optimizer, each with its curves
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == sorted(optimizer_names())
    for name in optimizer_names():
        found = scalars(run / name)
        assert {"train/loss", "val/loss", "val/accuracy", "charts/learning_rate", "train/grad_norm"} <= set(found)
    assert len(list(run.glob("*/events.out.tfevents.*"))) == len(optimizer_names())


def test_sweep_subset_and_aliases(tmp_path, capsys):
    code, out, _ = run_main(["sweep", "--optimizers", "nag, adam_dopamine,nesterov", "--epochs", "1",
                             "--synthetic-samples", "200", "--run-dir", str(tmp_path / "s")], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()[1:]] == ["nesterov", "adam_rainbow"]
    # options shared by the sweep need only suit the swept optimizers, not the default one (adam)
    code, _, _ = run_main(["sweep", "--optimizers", "sgd,nag", "--optimizer-kwargs", "{momentum = 0.5}",
                           "--epochs", "1", "--synthetic-samples", "200", "--run-dir", str(tmp_path / "t")], capsys)
    assert code == 0


def test_sweep_starts_each_optimizer_from_the_same_weights(tmp_path, capsys, monkeypatch):
    from agents import supervised as sup

    seen = []
    real_fit = sup.SupervisedTrainer.fit

    def fit(self, *args, **kwargs):
        seen.append(torch.cat([p.detach().flatten().clone() for p in self.model.parameters()]))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(sup.SupervisedTrainer, "fit", fit)
    code, _, _ = run_main(["sweep", "--optimizers", "sgd,adam,adadelta", "--epochs", "1", "--synthetic-samples",
                           "200", "--dropout", "0.1", "--run-dir", str(tmp_path / "s")], capsys)
    assert code == 0 and len(seen) == 3
    assert all(torch.equal(seen[0], w) for w in seen[1:])


@pytest.mark.slow
def test_sweep_all_on_the_builtin_data_reports_every_optimizer(tmp_path):
    """The whole registry in one sweep, as a user runs it (its wall time is a README figure, not asserted here)."""
    proc = subprocess.run([sys.executable, "-m", "scripts.supervised", "sweep", "--optimizers", "all",
                           "--run-dir", str(tmp_path / "sweep")], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == optimizer_names()
    best = {line.split()[0]: float(line.split()[2]) for line in lines[1:]}
    assert best["adam"] > 0.9  # the default budget is enough for the default optimizer to solve spirals


# --- record and behaviour cloning ----------------------------------------------------------------

def test_record_labels_are_greedy_even_while_exploring(tmp_path, capsys):
    q = teacher_network(CARTPOLE, (4,), 2)
    ckpt.save(tmp_path / "agent.pt", clone_payload(CARTPOLE, q, {}))
    code, out, _ = run_main(["record", str(tmp_path / "agent.pt"), "--steps", "301", "--epsilon", "0.5",
                             "--out", str(tmp_path / "d.npz")], capsys)
    assert code == 0 and "recorded 301 steps of cartpole" in out
    with np.load(tmp_path / "d.npz", allow_pickle=False) as d:
        x, y, taken = d["x"], d["y"], d["taken"]
        assert json.loads(str(d["teacher_config"])) == dataclasses.asdict(CARTPOLE)
        assert json.loads(str(d["recording"]))["epsilon"] == 0.5 and int(d["num_classes"]) == 2
    assert x.shape == (301, 4) and y.shape == taken.shape == (301,)
    with torch.no_grad():
        np.testing.assert_array_equal(y, q(torch.as_tensor(x)).argmax(1).numpy())
    assert 0.1 < (taken != y).mean() < 0.4  # about half the actions random, half of those differ


def test_bc_on_atari_frames_writes_a_checkpoint_rl_evaluate_plays(tmp_path, capsys):
    from scripts import evaluate

    breakout = TrainConfig(env="breakout", num_envs=2)
    ckpt.save(tmp_path / "teacher.pt", clone_payload(breakout, teacher_network(breakout, (4, 84, 84), 4), {}))
    code, _, _ = run_main(["record", str(tmp_path / "teacher.pt"), "--steps", "24", "--num-envs", "2",
                           "--out", str(tmp_path / "frames.npz")], capsys)
    assert code == 0
    with np.load(tmp_path / "frames.npz") as d:
        assert d["x"].dtype == np.uint8 and d["x"].shape == (24, 4, 84, 84)
    code, _, _ = run_main(["bc", "--data", str(tmp_path / "frames.npz"), "--epochs", "1", "--batch-size", "8",
                           "--run-dir", str(tmp_path / "clone")], capsys)
    assert code == 0
    code = run_cli(evaluate.main, [str(tmp_path / "clone" / "checkpoints" / "latest.pt"), "--episodes", "1",
                                   "--epsilon", "1.0", "--num-envs", "1"])
    assert code == 0 and "return:" in capsys.readouterr().out


@pytest.fixture(scope="session")
def cartpole_teacher(tmp_path_factory):
    """A real DQN teacher, trained by rl-train on a small seeded budget (about 20 s on 2 cores)."""
    from scripts import train

    run = tmp_path_factory.mktemp("teacher") / "run"
    before = torch.get_num_threads()
    code = run_cli(train.main, ["--preset", "cartpole", "--run-dir", str(run), "--seed", "1",
                                "--total-steps", "20000", "--learning-starts", "1000", "--exploration-fraction", "0.1",
                                "--checkpoint-every", "1000000", "--no-save-replay", "--torch-threads", "1",
                                "--no-progress"])
    torch.set_num_threads(before)
    assert code == 0
    return run / "checkpoints" / "latest.pt"


@pytest.mark.slow
def test_behaviour_clone_reaches_90_percent_of_the_teacher(cartpole_teacher, tmp_path, capsys):
    from scripts import evaluate

    demos, clone_dir = tmp_path / "demos.npz", tmp_path / "clone"
    code, out, _ = run_main(["record", str(cartpole_teacher), "--steps", "5000", "--out", str(demos)], capsys)
    assert code == 0
    code, out, _ = run_main(["bc", "--data", str(demos), "--run-dir", str(clone_dir)], capsys)
    assert code == 0 and "clone agrees with the teacher" in out
    clone = clone_dir / "checkpoints" / "latest.pt"

    # exactly the shape of a DQN checkpoint, with the teacher's config
    payload = ckpt.load(clone)                                  # verified, the checksum key taken off
    teacher_payload = ckpt.load(cartpole_teacher)
    assert set(payload) == {"format_version", "config", "agent", "meta"} and set(payload["agent"]) == {"q"}
    assert payload["config"] == teacher_payload["config"]
    assert ckpt.decode_meta(payload["meta"])["kind"] == "behaviour_clone"

    results = {}
    for name, path in (("teacher", cartpole_teacher), ("clone", clone)):
        assert run_cli(evaluate.main, [str(path), "--json", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["mean"]
    print(f"rl-evaluate (30 games, epsilon 0.05): teacher {results['teacher']:.1f}, clone {results['clone']:.1f}",
          file=sys.stderr)
    assert results["teacher"] >= 100  # a real teacher, so that 90% of it means something
    assert results["clone"] >= 0.9 * results["teacher"], results


def test_the_stored_range_of_uint8_features_does_not_matter(tmp_path, capsys):
    """The same images stored as counts 0-15 and as 0-255 train alike: the model standardises its inputs by
    the training split's statistics (dividing uint8 by 255 left the counts 17x too small to learn from)."""
    data = builtin("stripes", 1500)
    counts = (data.x // 16).astype(np.uint8)                                  # uint8 0..15
    accuracy = {}
    for name, x in (("counts", counts), ("pixels", counts * np.uint8(17))):  # uint8 0..255
        np.savez(tmp_path / f"{name}.npz", x=x, y=data.y)
        code, out, _ = run_main(["classify", "--data", str(tmp_path / f"{name}.npz"), "--epochs", "5",
                                 "--torch-threads", "1", "--run-dir", str(tmp_path / name)], capsys)
        assert code == 0
        accuracy[name] = float(out.split("validation accuracy: ")[1].split()[0])
    assert abs(accuracy["counts"] - accuracy["pixels"]) <= 0.01
    assert accuracy["counts"] > 0.4                                           # 4 classes: chance is 0.25


def test_standardize_keeps_per_feature_or_per_channel_statistics():
    x = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[3.0, 2.0], [7.0, 9.0]]])   # [N=2, 2, 2]
    per_feature = Standardize((2, 2)).fit(x)
    torch.testing.assert_close(per_feature.mean, torch.tensor([[2.0, 2.0], [5.0, 7.0]]))
    torch.testing.assert_close(per_feature.std, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))   # constant -> 1
    per_channel = Standardize((2, 1, 1)).fit(x.unsqueeze(-1))               # [N, C=2, H=2, W=1]
    torch.testing.assert_close(per_channel.mean.flatten(), torch.tensor([2.0, 6.0]))
    out = per_channel(x.unsqueeze(-1))
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(2))
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(2))
