"""The learner's hot kernels against what they replaced, Breakout-shaped (Nature CNN, batch 32), interleaved
in one process: the optimizer step (torch's CPU default, a per-tensor loop, against the foreach and fused
kernels the registry picks), DrQ's random shift (one flat gather on uint8 against two gathers, and
against DrQ-v2's replicate-pad + grid_sample on floats), and a bf16 update (forward, TD-style loss, backward)
with the Q head's output layer in float32, as the networks compute it, against the same layer in bf16; with
``--compile``, also an fp32 update and the act forward (8 envs' observations, no grad, argmax) with the encoder
compiled (the ``compile`` switch) against eager.

    python -m benchmarks.kernels                  # 1 torch thread, 25 rounds
    python -m benchmarks.kernels --compile        # + torch.compile (a one-off compile; needs a C++ compiler)
    python -m benchmarks.kernels --torch-threads 2 --json out.json

The variants alternate in short rounds, so load from other processes hits them alike; a time is the median
over rounds, a ratio the median of the rounds' ratios. Each variant is first checked to compute the same
result as the one in use (same parameters after a step; the same shifted pixels, up to grid_sample's rounding).
"""
from __future__ import annotations

import copy
import statistics
import time
from argparse import ArgumentParser
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import machine_line, per_call_ms, write_json
from rl.logging import machine_info
from rl.networks import QNetwork, make_q_network, random_shift

PAD = 4


def two_gathers(obs: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The shift as rows, then columns: obs uint8[B, C, H, W], shift int[B, 2] (rows, columns)."""
    B, C, H, W = obs.shape
    rows = (torch.arange(H)[None] + shift[:, :1]).clamp_(0, H - 1)     # [B, H]
    cols = (torch.arange(W)[None] + shift[:, 1:]).clamp_(0, W - 1)     # [B, W]
    out = obs.gather(2, rows[:, None, :, None].expand(B, C, H, W))
    return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))


def pad_grid_sample(obs: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """DrQ-v2's RandomShiftsAug (Yarats et al. 2021) on float images, with the given integer shifts."""
    B, C, H, W = obs.shape
    x = F.pad(obs, (PAD,) * 4, mode="replicate")
    eps = 1.0 / (H + 2 * PAD)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, H + 2 * PAD)[:H]
    arange = arange[None].repeat(H, 1)[:, :, None]
    base = torch.cat([arange, arange.transpose(1, 0)], dim=2)[None].repeat(B, 1, 1, 1)   # [B, H, W, (x, y)]
    offset = (shift.flip(1) + PAD).to(torch.float32)[:, None, None, :] * (2.0 / (H + 2 * PAD))
    return F.grid_sample(x, base + offset, padding_mode="zeros", align_corners=False)


def drawn_shift(batch: int, seed: int) -> torch.Tensor:
    """The shifts random_shift draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 * PAD + 1, (batch, 2), generator=g) - PAD


class Bf16OutputLayer(QNetwork):
    """The Q network as it was before its output layer kept float32 under bf16 autocast."""

    @staticmethod
    def _stream(stream: torch.nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        return stream(h)


def update_less_step(net: torch.nn.Module, obs: torch.Tensor, target: torch.Tensor,
                     bf16: bool = True) -> Callable[[], None]:
    """Forward (under bf16 autocast, or fp32), MSE against ``target`` and backward: the update less the
    optimizer step."""
    def update() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            q = net(obs)
        F.mse_loss(q.float(), target).backward()
    return update


def optimizers(params_for: Callable[[], list[torch.Tensor]]) -> dict[str, torch.optim.Optimizer]:
    return {"per_tensor_loop": torch.optim.Adam(params_for(), lr=1e-4, foreach=False),
            "foreach": torch.optim.Adam(params_for(), lr=1e-4, foreach=True),
            "fused": torch.optim.Adam(params_for(), lr=1e-4, fused=True)}


def interleaved(timers: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(rounds):
        for name, fn in timers.items():
            out[name].append(per_call_ms(fn, calls))
    return out


def summary(times: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    return {k: {"ms": statistics.median(v), "over_" + base: statistics.median(np.divide(v, times[base]))}
            for k, v in times.items()}


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds; figures are medians")
    parser.add_argument("--calls", type=int, default=20, help="calls per round and variant")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true",
                        help="also time an fp32 update with the encoder compiled against eager")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    B = args.batch_size

    # optimizer step: one network per variant, the same gradients on each
    torch.manual_seed(0)
    nets = [make_q_network("nature_cnn", (4, 84, 84), 4) for _ in range(3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    grads = [torch.randn_like(p) * 1e-2 for p in nets[0].parameters()]
    for net in nets:
        for p, g in zip(net.parameters(), grads):
            p.grad = g.clone()
    params = iter([list(net.parameters()) for net in nets])
    opts = optimizers(lambda: next(params))
    for opt in opts.values():
        opt.step()
    for a, b in zip(nets[0].parameters(), nets[2].parameters()):
        assert torch.allclose(a, b, atol=1e-7), "the optimizer variants disagree"
    step_times = summary(interleaved({k: o.step for k, o in opts.items()}, args.rounds, args.calls), "fused")

    # random shift: the same shifts through each variant, then to float as the network takes them
    obs = torch.randint(0, 256, (B, 4, 84, 84), dtype=torch.uint8)
    shift = drawn_shift(B, seed=1)
    ours = random_shift(obs, PAD, torch.Generator().manual_seed(1))
    assert torch.equal(ours, two_gathers(obs, shift)), "two gathers disagree with random_shift"
    # grid_sample interpolates at the pixel centres: exact up to float rounding (~0.003 of 255)
    assert torch.allclose(ours.float(), pad_grid_sample(obs.float(), shift), rtol=0, atol=0.01), \
        "grid_sample disagrees with random_shift"
    g = torch.Generator().manual_seed(2)
    shift_times = summary(interleaved({
        "flat_gather_uint8": lambda: random_shift(obs, PAD, g).float(),
        "two_gathers_uint8": lambda: two_gathers(obs, drawn_shift(B, 2)).float(),
        "pad_grid_sample_float": lambda: pad_grid_sample(obs.float(), drawn_shift(B, 2)),
    }, args.rounds, args.calls), "flat_gather_uint8")

    # bf16 update: the output layer in float32 (as the networks compute it) against the layer in bf16
    torch.manual_seed(0)
    fp32_head = make_q_network("nature_cnn", (4, 84, 84), 4)
    bf16_head = Bf16OutputLayer(copy.deepcopy(fp32_head.encoder), 4, 512)
    bf16_head.load_state_dict(fp32_head.state_dict())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fp32_head(obs).dtype == torch.float32 and not torch.equal(fp32_head(obs), bf16_head(obs).float()), \
            "the two output layers compute alike"
    target = torch.randn(B, 4)
    head_times = summary(interleaved({"output_layer_float32": update_less_step(fp32_head, obs, target),
                                      "output_layer_bf16": update_less_step(bf16_head, obs, target)},
                                     args.rounds, max(1, args.calls // 4)), "output_layer_bf16")
    sections = [("Adam step, Nature CNN (1.7M parameters)", "adam_step_nature_cnn", step_times),
                (f"random shift, uint8[{B}, 4, 84, 84] -> float", "random_shift", shift_times),
                (f"bf16 update less the optimizer step, Nature CNN, batch {B}", "bf16_update", head_times)]

    compile_s = None
    if args.compile:    # the encoder compiled in place, as compile = true does
        eager = make_q_network("nature_cnn", (4, 84, 84), 4)
        compiled = copy.deepcopy(eager)
        compiled.encoder.compile()
        start = time.perf_counter()
        with torch.no_grad():
            assert torch.allclose(eager(obs), compiled(obs), atol=1e-4), "the compiled encoder computes otherwise"
        update_less_step(compiled, obs, target, bf16=False)()
        compile_s = time.perf_counter() - start
        compile_times = summary(interleaved({"eager": update_less_step(eager, obs, target, bf16=False),
                                             "compiled": update_less_step(compiled, obs, target, bf16=False)},
                                            args.rounds, max(1, args.calls // 4)), "eager")
        sections.append((f"fp32 update less the optimizer step, encoder compiled (first call {compile_s:.1f} s)",
                         "compile", compile_times))
        act_obs = obs[:8]                                # uint8[8, 4, 84, 84]: one vector step's observations

        def act(net: torch.nn.Module) -> Callable[[], torch.Tensor]:
            return lambda: net(act_obs).argmax(1)
        with torch.no_grad():
            assert torch.equal(act(eager)(), act(compiled)()), "the compiled encoder acts otherwise"
            act_times = summary(interleaved({"eager": act(eager), "compiled": act(compiled)},
                                            args.rounds, args.calls), "eager")
        sections.append(("fp32 act forward, 8 observations, no grad, encoder compiled", "compile_act", act_times))

    out = {**machine_info(), "batch_size": B, "rounds": args.rounds, "compile_first_call_s": compile_s,
           **{key: figures for _, key, figures in sections}}
    print(machine_line(out))
    print(f"medians of {args.rounds} interleaved rounds of {args.calls} calls")
    for title, _, figures in sections:
        print(title)
        for name, f in figures.items():
            ratio = next(v for k, v in f.items() if k.startswith("over_"))
            print(f"  {name:24} {f['ms']:8.3f} ms  {ratio:6.2f}x")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
