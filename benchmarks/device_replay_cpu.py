"""Device replay on CPU tensors vs the numpy replay, Breakout-shaped: ms per sampled batch, insert cost per
vector step, and their ratios, measured interleaved in one process.

    python -m benchmarks.device_replay_cpu                     # 200k transitions, 8 envs, batch 32
    python -m benchmarks.device_replay_cpu --capacity 50000 --json out.json

Both replays hold the same stream (random 84x84 uint8 frames, lost lives, game overs and time-limit cuts at
roughly Breakout's rates). The two implementations alternate in short rounds, so load from other
processes hits both alike; a time is the median over rounds, a ratio the median of the rounds' ratios.
Uniform sampling is timed on the prioritized buffers through the uniform classes' ``sample`` (same
storage, same code), so one fill serves both. This measures CPU tensors only: it says nothing about a GPU, where the point of the device
replay is that the batch is built without the host.
"""
from __future__ import annotations

import statistics
import time
from argparse import ArgumentParser
from functools import partial

import numpy as np
import torch

from benchmarks.common import machine_line, per_call_ms, write_json
from rl.device_replay import DevicePrioritizedReplayBuffer, DeviceReplayBuffer
from rl.logging import machine_info
from rl.replay import PrioritizedReplayBuffer, ReplayBuffer, ReplaySpec


class Stream:
    """Breakout-shaped vector steps from a small pool of random frames (making 200k random frames would
    take longer than the benchmark)."""

    def __init__(self, num_envs: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.integers(0, 256, (64, num_envs, 4, 84, 84), dtype=np.uint8)
        self.num_envs, self.i = num_envs, 0
        self.first = np.ones(num_envs, bool)

    def next(self):
        N, rng = self.num_envs, self.rng
        obs = self.pool[self.i % len(self.pool)]
        self.i += 1
        u = rng.random((N, 3))
        life, over, trunc = u[:, 0] < 1 / 200, u[:, 1] < 1 / 1000, u[:, 2] < 1 / 5000
        step = (obs, rng.integers(0, 4, N), rng.integers(0, 2, N).astype(np.float32), life | over, trunc & ~over,
                self.first, self.pool[(self.i + 7) % len(self.pool)])
        self.first = over | trunc
        return step


def insert_ms(add, steps) -> float:
    start = time.perf_counter()
    for step in steps:
        add(*step)
    return (time.perf_counter() - start) / len(steps) * 1e3


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.device_replay_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=200_000, help="transitions, all envs together")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds; figures are medians")
    parser.add_argument("--batches", type=int, default=50, help="batches sampled per round and implementation")
    parser.add_argument("--inserts", type=int, default=200, help="vector steps inserted per round and implementation")
    parser.add_argument("--torch-threads", type=int, default=1, help="numpy's gathers use one core")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    N, B = args.num_envs, args.batch_size
    spec = ReplaySpec(args.capacity, N, (4, 84, 84), np.uint8, stack=4, n_step=3, gamma=0.99, num_actions=4)
    host, dev = PrioritizedReplayBuffer(spec, seed=0), DevicePrioritizedReplayBuffer(spec, seed=0, device="cpu")
    stream = Stream(N)
    start = time.perf_counter()
    for _ in range(args.capacity // N + 10):   # fill, and wrap
        step = stream.next()
        host.add(*step)
        dev.add(*step)
    fill_s = time.perf_counter() - start

    # the two replays hold the same data: a gather of the same slots agrees (a cheap sanity check)
    t, env = np.divmod(host.sample(B).index, N)
    want, got = host.gather(t, env, np.ones(B, np.float32)), dev.gather(torch.from_numpy(t), torch.from_numpy(env),
                                                                       torch.ones(B))
    assert all(np.array_equal(u, v.numpy()) for u, v in zip(want, got)), "device replay disagrees with numpy"

    priority = np.random.default_rng(1).random(B)
    host_index, dev_index, dev_priority = host.sample(B).index, dev.sample(B).index, torch.from_numpy(priority)
    timers = {
        "uniform_sample_ms": (lambda: ReplayBuffer.sample(host, B), lambda: DeviceReplayBuffer.sample(dev, B)),
        "prioritized_sample_ms": (lambda: host.sample(B), lambda: dev.sample(B)),
        "update_priorities_ms": (lambda: host.update_priorities(host_index, priority),
                                 lambda: dev.update_priorities(dev_index, dev_priority)),
    }
    rounds: dict[str, tuple[list, list]] = {k: ([], []) for k in timers}   # ms per call: numpy, device
    for _ in range(args.rounds):
        for name, (h, d) in timers.items():
            rounds[name][0].append(per_call_ms(h, args.batches))
            rounds[name][1].append(per_call_ms(d, args.batches))

    # inserts last: the uniform classes' add leaves priorities stale, so nothing is sampled after it
    adds = {"uniform_insert_ms": (partial(ReplayBuffer.add, host), partial(DeviceReplayBuffer.add, dev)),
            "prioritized_insert_ms": (host.add, dev.add)}
    steps = [stream.next() for _ in range(args.inserts)]
    for _ in range(args.rounds):
        for name, pair in adds.items():
            rounds.setdefault(name, ([], []))
            for impl, add in enumerate(pair):
                rounds[name][impl].append(insert_ms(add, steps))

    out = {**machine_info(), "capacity": args.capacity, "num_envs": N, "batch_size": B,
           "fill_s_both": fill_s,
           "figures": {k: {"numpy": statistics.median(h), "device_cpu": statistics.median(d),
                           "device_over_numpy": statistics.median(np.divide(d, h))} for k, (h, d) in rounds.items()}}
    print(machine_line(out))
    print(f"Breakout replay: {args.capacity:,} transitions, {N} envs, stack 4, n-step 3, batch {B}; "
          f"medians of {args.rounds} interleaved rounds")
    print(f"{'figure':28} {'numpy':>10} {'device (CPU)':>13} {'device/numpy':>13}")
    for name, f in out["figures"].items():
        unit = "ms/vector step" if "insert" in name else "ms/batch"
        print(f"{name.removesuffix('_ms'):28} {f['numpy']:10.3f} {f['device_cpu']:13.3f} {f['device_over_numpy']:12.2f}x"
              f"  {unit}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
