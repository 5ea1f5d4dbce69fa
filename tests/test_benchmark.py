"""rl-bench runs and reports every figure the performance issue asks for (speed is never asserted here)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.build import make_agent
from agents.dqn import resolve_precision
from rl.cli import run_cli
from rl.config import TrainConfig, from_dict, load_preset
from scripts import benchmark


def test_kernel_benchmark_checks_its_variants_and_reports_them(tmp_path, capsys):
    from benchmarks import kernels
    out = tmp_path / "kernels.json"
    assert kernels.main(["--rounds", "1", "--calls", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    steps, shifts, heads = figures["adam_step_nature_cnn"], figures["random_shift"], figures["bf16_update"]
    assert set(steps) == {"per_tensor_loop", "foreach", "fused"}
    assert set(shifts) == {"flat_gather_uint8", "two_gathers_uint8", "pad_grid_sample_float"}
    assert set(heads) == {"output_layer_float32", "output_layer_bf16"}
    for f in [*steps.values(), *shifts.values(), *heads.values()]:
        assert f["ms"] > 0 and next(v for k, v in f.items() if k.startswith("over_")) > 0
    assert figures["cpu"]["model"] in capsys.readouterr().out        # every figure names its CPU


def test_benchmark_reports_all_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_cli(benchmark.main, ["--preset", "cartpole", "--env-steps", "400", "--updates", "5",
                                    "--replay-steps", "400", "--train-steps", "200", "--fill-steps", "200",
                                    "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("env ceiling", "learner ceiling", "replay sample", "replay memory", "training", "ratio to bound",
                "peak RSS"):
        assert row in printed
    figures = json.loads(out.read_text())
    assert printed.startswith(figures["machine"]["cpu"]["model"])        # every figure names its CPU
    assert figures["replay"]["bytes_per_transition"] == 4 * 4 + 1 + 4 + 1  # float32[4] obs + action + reward + flags
    for key in ("env_steps_per_s", "learner_updates_per_s", "train_steps_per_s", "peak_rss_bytes"):
        assert figures[key] > 0
    # the bounds come from the two measured ceilings (cartpole: 2 agent steps per update): overlapped, the
    # slower of them; one after the other, the harmonic sum
    env, learner = figures["env_steps_per_s"], 2 * figures["learner_updates_per_s"]
    assert figures["bound_overlapped_steps_per_s"] == pytest.approx(min(env, learner))
    assert figures["bound_serial_steps_per_s"] == pytest.approx(1 / (1 / env + 1 / learner))
    # the table prints the figure the JSON holds
    ratio = next(line for line in printed.splitlines() if "ratio to bound" in line)
    assert f"{figures['ratio_to_overlapped_bound']:.1%}" in ratio
    profile = figures["update_profile"]          # on CPU: time inside torch operators vs the update's wall time
    assert profile["what"] == "torch operators (CPU)" and profile["busy_ms"] > 0 and profile["wall_ms"] > 0
    assert profile["host_overhead"] == pytest.approx(max(0.0, 1 - profile["busy_ms"] / profile["wall_ms"]))
    assert "update profile" in printed
    assert figures["augmentation_ms_per_update"] is None and "augmentation" not in printed   # no images to shift


def test_benchmark_rejects_bad_budget(capsys):
    assert run_cli(benchmark.main, ["--updates", "0"]) == 2
    assert "updates = 0 is not allowed: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                         (False, True, "bf16")])
def test_auto_precision_takes_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    # emulated bf16 (an AVX2-only CPU) made breakout-100k's update 10x slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    agent = make_agent(from_dict(TrainConfig, {"env": "cartpole", "network": "mlp", "precision": "auto"}), (4,), 2)
    assert agent.precision == expected and agent.bf16 == (expected == "bf16")


def test_augmentation_is_timed_only_where_there_are_images_to_shift():
    cfg = from_dict(TrainConfig, load_preset("breakout-100k"))
    assert cfg.augmentation and benchmark.augmentation_ms(cfg, (4, 84, 84), np.uint8) > 0
    assert benchmark.augmentation_ms(from_dict(TrainConfig, load_preset("breakout")), (4, 84, 84), np.uint8) is None


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """latest.pt of a 600-step CartPole run (with an optimizer state and a target network)."""
    from scripts import train
    run_dir = tmp_path_factory.mktemp("bench") / "cp"
    assert run_cli(train.main, ["--preset", "cartpole", "--total-steps", "600", "--learning-starts", "200",
                                "--eval-every", "0", "--target-return", "0", "--no-save-replay", "--no-progress",
                                "--run-dir", str(run_dir)]) == 0
    return run_dir / "checkpoints" / "latest.pt"


def test_benchmark_of_a_checkpoint_measures_its_learner_both_ways(trained_checkpoint, tmp_path, capsys):
    from rl import checkpoint as ckpt
    from scripts import export
    latest = trained_checkpoint
    payload = ckpt.load(latest)        # a quarter of one moment tensor made subnormal, as a long run's get
    moments = [t for state in payload["agent"]["optimizer"]["state"].values() for t in state.values()
               if t.is_floating_point() and t.dim() > 0]
    first = moments[0].view(-1)
    first[: first.numel() // 4] = 1e-39
    ckpt.save(tmp_path / "aged.pt", payload)
    out = tmp_path / "bench.json"
    assert run_cli(benchmark.main, ["--checkpoint", str(tmp_path / "aged.pt"), "--updates", "3", "--fill-steps", "200",
                                    "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    total = sum(t.numel() for t in moments)
    assert r["subnormal_fraction_of_optimizer_state"] == pytest.approx((first.numel() // 4) / total)
    assert r["step"] == 600 and r["env"] == "cartpole" and r["updates"] == 3
    assert r["speedup"] == pytest.approx(r["ms_per_update_subnormals_computed"] / r["ms_per_update_subnormals_flushed"])
    printed = capsys.readouterr().out
    assert f"{r['ms_per_update_subnormals_flushed']:.2f} ms/update" in printed
    # the run's own config is measured, so config flags are refused; a policy file has no optimizer state
    assert run_cli(export.main, [str(latest), str(tmp_path / "policy.pt")]) == 0
    for argv, text in ((["--preset", "cartpole"], "drop --preset"), (["--batch-size", "64"], "drop --batch-size")):
        assert run_cli(benchmark.main, ["--checkpoint", str(latest), *argv]) == 2
        assert text in capsys.readouterr().err
    assert run_cli(benchmark.main, ["--checkpoint", str(tmp_path / "policy.pt")]) == 2
    assert "holds no optimizer state" in capsys.readouterr().err


def test_precision_fidelity_compares_bf16_with_fp32_on_the_runs_weights(trained_checkpoint, tmp_path, capsys):
    """bf16 gradients differ from fp32 ones (the two paths really ran) yet point the same way; every figure is
    reported with its machine, and a policy file (no target network) is refused with one line."""
    from benchmarks import precision_fidelity
    from scripts import export
    out = tmp_path / "fidelity.json"
    assert run_cli(precision_fidelity.main, [str(trained_checkpoint), "--batches", "4", "--play-steps", "1000",
                                             "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["step"] == 600 and r["states"] == 4 * r["batch_size"]
    assert 0 < r["relative_gradient_error"]["median"] < 0.5
    assert r["cos_bf16_fp32_same_batch"]["min"] > 0.9
    assert 0 <= r["greedy_disagreement"] <= 1 and -1 <= r["cos_fp32_two_batches"]["median"] <= 1
    assert r["cpu"]["model"] in capsys.readouterr().out
    assert run_cli(export.main, [str(trained_checkpoint), str(tmp_path / "policy.pt")]) == 0
    assert run_cli(precision_fidelity.main, [str(tmp_path / "policy.pt")]) == 2
    assert "weights-only policy file" in capsys.readouterr().err
