"""What bf16 autocast does to a trained learner's updates, against fp32 on the same weights and batches.

    python -m benchmarks.precision_fidelity ~/runs/breakout-10m-s2/checkpoints/latest.pt
    python -m benchmarks.precision_fidelity CHECKPOINT --batches 200 --play-steps 20000 --json out.json

The run's agent (online and target weights from a training checkpoint) plays ``--play-steps`` agent steps at
epsilon 0.05 into a replay; on each sampled batch the TD loss's gradient is taken in fp32 and in bf16. The
figures that matter are ratios within one run:

- the cosine between the bf16 and the fp32 gradient of a batch, against the cosine between the fp32 gradients
  of two different batches (how far apart two ordinary updates already point: minibatch noise);
- the bf16 gradient's error relative to the fp32 gradient's norm, and the loss's relative difference;
- on the replay's states, how often the greedy action differs between the two precisions.

It measures single updates only, not where a whole run goes: a small per-update error can still compound.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import sys
import time
from argparse import ArgumentParser

import numpy as np
import torch

from benchmarks.common import machine_line, write_json
from rl.checkpoint import CheckpointError
from rl.cli import run_cli
from rl.config import ConfigError, TrainConfig, from_dict
from rl.logging import machine_info


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def quantiles(x) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    return {"median": float(np.median(x)), "p5": float(np.percentile(x, 5)), "p95": float(np.percentile(x, 95)),
            "min": float(x.min()), "max": float(x.max())}


def greedy_figures(agents: dict, states: np.ndarray) -> dict[str, float]:
    """How often the two precisions pick different greedy actions, beside the fp32 Q-values' scale and the
    typical gap between the best and second-best action they have to resolve."""
    chunks = range(0, len(states), 256)
    with torch.no_grad():
        q32 = torch.cat([agents["fp32"].q_values(states[i:i + 256]) for i in chunks])   # [N, A]
    a16 = np.concatenate([agents["bf16"].greedy(states[i:i + 256]) for i in chunks])
    top2 = q32.topk(2, dim=1).values                                                 # [N, 2]
    return {"states": len(states), "greedy_disagreement": float((q32.argmax(1).numpy() != a16).mean()),
            "q_best_median": float(top2[:, 0].median()), "q_gap_median": float((top2[:, 0] - top2[:, 1]).median())}


def main(argv: list[str] | None = None) -> int:
    from agents.build import make_agent, played_replay
    from agents.policy import load_training_checkpoint
    from envs import make_env
    from rl import checkpoint as ckpt

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a training checkpoint (RUN/checkpoints/latest.pt or a kept snapshot)")
    p.add_argument("--batches", type=int, default=200, help="batches compared (default 200)")
    p.add_argument("--play-steps", type=int, default=20_000, help="agent steps played into the replay")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--json", help="write the figures and the machine here")
    args = p.parse_args(argv)
    if args.batches < 2 or args.play_steps < 1_000:
        raise ConfigError(f"--batches {args.batches} / --play-steps {args.play_steps}: need batches >= 2 and "
                          f"play-steps >= 1000")
    try:
        payload = load_training_checkpoint(args.checkpoint, use="have its precisions compared")
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    torch.set_num_threads(args.torch_threads)
    cfg = dataclasses.replace(from_dict(TrainConfig, payload["config"]), device="cpu")
    env = make_env(cfg)
    agents = {}
    for precision in ("fp32", "bf16"):
        agents[precision] = make_agent(dataclasses.replace(cfg, precision=precision), env.obs_shape,
                                       env.num_actions, torch.device("cpu"))
        agents[precision].load_state_dict(copy.deepcopy(payload["agent"]))
    start = time.perf_counter()
    try:
        replay = played_replay(cfg, agents["fp32"], env, args.play_steps, epsilon=0.05)
    finally:
        env.close()
    batches = [replay.sample(cfg.batch_size) for _ in range(args.batches)]
    l32, g32 = zip(*(agents["fp32"].loss_gradient(b) for b in batches))
    l16, g16 = zip(*(agents["bf16"].loss_gradient(b) for b in batches))
    states = np.concatenate([b.obs for b in batches])
    out = {**machine_info(), "checkpoint": args.checkpoint, "step": ckpt.decode_meta(payload["meta"]).get("step"),
           "env": cfg.env, "batch_size": cfg.batch_size, "batches": args.batches, "play_steps": args.play_steps,
           "cos_bf16_fp32_same_batch": quantiles([cosine(a, b) for a, b in zip(g16, g32)]),
           "cos_fp32_two_batches": quantiles([cosine(a, b) for a, b in itertools.pairwise(g32)]),
           "relative_gradient_error": quantiles([float((a - b).norm() / b.norm()) for a, b in zip(g16, g32)]),
           "relative_loss_difference": quantiles([float((a - b).abs() / b) for a, b in zip(l16, l32)]),
           **greedy_figures(agents, states), "seconds": time.perf_counter() - start}
    print(f"{args.checkpoint} (step {out['step']}, {cfg.env}), {args.batches} batches of {cfg.batch_size} from "
          f"{args.play_steps:,} agent steps it played at epsilon 0.05 (median [5th, 95th percentile]):")
    for key, label in (("cos_bf16_fp32_same_batch", "cosine, bf16 vs fp32 gradient of the same batch"),
                       ("cos_fp32_two_batches", "cosine, fp32 gradients of two different batches"),
                       ("relative_gradient_error", "|g_bf16 - g_fp32| / |g_fp32|"),
                       ("relative_loss_difference", "|loss_bf16 - loss_fp32| / loss_fp32")):
        q = out[key]
        print(f"  {label:<50} {q['median']:.4f} [{q['p5']:.4f}, {q['p95']:.4f}]")
    print(f"  greedy action differs on {out['greedy_disagreement']:.2%} of {out['states']:,} states (fp32: median "
          f"best Q {out['q_best_median']:.3f}, median gap to the second best {out['q_gap_median']:.4f})")
    print(f"  {out['seconds']:.0f} s; {machine_line(out)}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="precision_fidelity"))
