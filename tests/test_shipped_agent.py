"""The Breakout agent the README reports: docs/breakout-dqn-10m.pt, ``rl-export`` of the 10M run's final
weight average. It is weights and config only, loads through the same safe path as any checkpoint, and
plays Breakout as a trained agent, where an untrained network scores about 1.7 (random play)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import rl_dqn
from rl import checkpoint as ckpt

SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "breakout-dqn-10m.pt"
# Its 100 fp32 games at epsilon 0.01 (README) scored 134 to 425 and its 100 bf16 ones 126 to 722. Games on
# another CPU differ from ours (near-tie rounding), so the bound is far below the 100-game means, yet far above
# anything that does not play: random play scores 1.7, an untrained network about the same.
THRESHOLD = 100


def test_the_shipped_agent_is_weights_and_config_only():
    assert SHIPPED.stat().st_size < 8 * 2**20
    payload = torch.load(SHIPPED, weights_only=True)
    assert payload["kind"] == "policy" and not {"agent", "optimizer", "target", "torch_rng"} & set(payload)
    meta = ckpt.decode_meta(payload["meta"])
    assert meta["step"] == 10_000_000 and meta["preset"] == "breakout"
    assert payload["config"]["env"] == "breakout" and payload["config"]["total_steps"] == 10_000_000


def test_the_shipped_agent_plays_breakout(tmp_path):
    """Two full games in fp32 (what any CPU plays), filmed as rl-evaluate --video films them."""
    video = tmp_path / "breakout.mp4"
    results = rl_dqn.evaluate(SHIPPED, episodes=2, epsilon=0.01, precision="fp32", video=video)
    assert results["weights"].startswith("average") and results["precision"] == "fp32"
    assert results["mean"] >= THRESHOLD, results["returns"]
    assert video.stat().st_size > 0 and results["video"]["episodes"] == 2


def test_the_shipped_agent_plays_in_gymnasiums_own_loop(tmp_path):
    """One full game through gymnasium's AtariPreprocessing + FrameStackObservation and rl_dqn.load_policy,
    none of this package's env code in the loop: the agent carries over to a user's standard pipeline."""
    from benchmarks import gymnasium_loop

    out = tmp_path / "game.json"
    assert gymnasium_loop.main([str(SHIPPED), "--episodes", "1", "--epsilon", "0.01", "--json", str(out)]) == 0
    game = json.loads(out.read_text())
    assert game["precision"] in ("bf16", "fp32") and game["lengths"][0] > 500
    assert game["returns"][0] >= THRESHOLD, game["returns"]
