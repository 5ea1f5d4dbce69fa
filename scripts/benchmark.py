"""rl-bench: the throughput ceilings and what the training loop reaches, measured in one run.

    rl-bench                          # breakout preset on the default device
    rl-bench --json bench.json --train-steps 4000
    rl-bench --actors 2               # and Ape-X on Ray: acting with 1 and 2 actors, the learner via the replay actor
    rl-bench --checkpoint runs/bo/checkpoints/latest.pt   # a long run's learner, subnormals computed or flushed

Prints a table and, with --json, writes the figures. Every rate is measured in this process, so
ratios between them hold even on a shared, noisy machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rl.cli import (
    ArgumentParser,
    add_config_flags,
    add_distributed_flags,
    check_distributed_flags,
    overrides_from_args,
    run_cli,
)
from rl.config import BenchConfig, ConfigError, TrainConfig, from_dict, load_preset
from rl.logging import cpu_line, machine_info


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="rl-bench", description="Measure env, learner, replay and end-to-end throughput.")
    parser.add_argument("--preset", help="settings to measure (default: breakout)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE", help="instead, measure the learner of the run "
                        "that wrote FILE (a training checkpoint): ms per update (--updates of them) with its weights and "
                        "optimizer state, on --fill-steps frames its agent plays, computing on subnormal floats and "
                        "with them flushed to zero")
    add_distributed_flags(parser, "also measure Ape-X on Ray: env steps/s delivered to the replay by 1..N actors "
                                  "(--env-steps each) and the learner's updates/s on batches from it")
    add_config_flags(parser, BenchConfig, title="measurement sizes")
    add_config_flags(parser, TrainConfig)
    return parser


def timed(fn, repeat: int) -> float:
    """Seconds per call of ``fn`` after two warm-up calls."""
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def env_ceiling(cfg: TrainConfig, steps: int) -> float:
    from envs import make_env
    env = make_env(cfg)
    rng = np.random.default_rng(0)
    env.reset()
    vector_steps = max(1, steps // cfg.num_envs)
    actions = rng.integers(0, env.num_actions, (vector_steps, cfg.num_envs))
    start = time.perf_counter()
    for a in actions:
        env.send(a)
        env.recv()
    rate = vector_steps * cfg.num_envs / (time.perf_counter() - start)
    env.close()
    return rate


def learner_ceiling(cfg: TrainConfig, updates: int, obs_shape, num_actions, obs_dtype) -> tuple[float, dict]:
    """Updates per second on one fixed batch, and :func:`update_profile` of the same updates."""
    import torch

    from agents.build import make_agent
    from agents.dqn import resolve_device
    from rl.replay import Batch

    agent = make_agent(cfg, obs_shape, num_actions, resolve_device(cfg.device))
    rng = np.random.default_rng(0)
    B = cfg.batch_size
    high = 255 if obs_dtype == np.uint8 else 1
    obs = rng.integers(0, high + 1, (B, *obs_shape)).astype(obs_dtype)
    batch = Batch(obs, rng.integers(0, num_actions, B), rng.random(B, dtype=np.float32),
                  np.full(B, 0.99, np.float32), obs.copy(), np.arange(B), np.ones(B, np.float32))

    def one():
        out = agent.update(batch)
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return 1.0 / timed(one, updates), update_profile(one, agent.device, updates)


def trained_learner(path: Path, updates: int, play_steps: int) -> dict:
    """A long run's learner, from its checkpoint: ms per update with the run's weights and optimizer state, on
    batches of the frames its agent plays (epsilon 0.05), computing on subnormal floats and with them flushed to
    zero (rl.numerics). One torch thread, since the flags belong to threads. The two ways alternate twice, each
    from the checkpoint's state; each reports its faster pass."""
    import copy

    import torch

    from agents.build import make_agent, played_replay
    from agents.policy import load_training_checkpoint
    from envs import make_env
    from rl import checkpoint as ckpt
    from rl import numerics

    try:
        payload = load_training_checkpoint(path, use="have its learner measured")
    except ckpt.CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    cfg = from_dict(TrainConfig, payload["config"])
    cfg = dataclasses.replace(cfg, device="cpu")
    torch.set_num_threads(1)
    env = make_env(cfg)
    agent = make_agent(cfg, env.obs_shape, env.num_actions, torch.device("cpu"))
    agent.load_state_dict(copy.deepcopy(payload["agent"]))
    replay = played_replay(cfg, agent, env, play_steps, epsilon=0.05)
    env.close()
    batches = [replay.sample(cfg.batch_size) for _ in range(updates + 1)]
    moments = [t for state in payload["agent"]["optimizer"]["state"].values() for t in state.values()
               if t.is_floating_point() and t.dim() > 0]
    tiny = torch.finfo(torch.float32).tiny
    subnormal = sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in moments) / max(1, sum(t.numel() for t in moments))

    def pass_ms(flush: bool) -> float:
        agent.load_state_dict(copy.deepcopy(payload["agent"]))
        with numerics.subnormals_flushed() if flush else contextlib.nullcontext():
            agent.update(batches[0])
            start = time.perf_counter()
            for batch in batches[1:]:
                agent.update(batch)
            return 1e3 * (time.perf_counter() - start) / updates

    times = {"computed": [], "flushed": []}
    for _ in range(2):
        times["computed"].append(pass_ms(False))
        times["flushed"].append(pass_ms(True))
    computed, flushed = min(times["computed"]), min(times["flushed"])
    return {"checkpoint": str(path), "step": ckpt.decode_meta(payload["meta"]).get("step"),
            "env": cfg.env, "precision": agent.precision, "updates": updates, "frames_played": play_steps,
            "subnormal_fraction_of_optimizer_state": subnormal, "ms_per_update_subnormals_computed": computed,
            "ms_per_update_subnormals_flushed": flushed, "speedup": computed / flushed}


def update_profile(one, device, updates: int) -> dict:
    """Where an update's time goes, from torch's profiler over ``updates`` calls of ``one``: on CUDA the GPU
    kernels' time against the wall time (the rest is the host: Python, launches, copies); on CPU the time
    inside torch's operators against the wall time (the rest is Python and dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    one()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(updates):
            one()
        wall = (time.perf_counter() - start) / updates
    events = prof.key_averages()
    if cuda:   # the kernels' own rows (the operators that launched them carry the same time again)
        from torch.autograd import DeviceType
        busy_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    else:
        busy_us = sum(e.self_cpu_time_total for e in events)
    busy = busy_us * 1e-6 / updates
    return {"what": "GPU kernels" if cuda else "torch operators (CPU)", "wall_ms": 1e3 * wall,
            "busy_ms": 1e3 * busy, "host_overhead": max(0.0, 1.0 - busy / wall)}


def augmentation_ms(cfg: TrainConfig, obs_shape, obs_dtype) -> float | None:
    """Milliseconds of DrQ's random shift per update (obs and next_obs of one batch), already inside the
    learner ceiling; None when the config has no augmentation or no images."""
    if not cfg.augmentation or len(obs_shape) != 3:
        return None
    import torch

    from rl.networks import random_shift
    obs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (cfg.batch_size, *obs_shape)).astype(obs_dtype))
    return 2e3 * timed(lambda: random_shift(obs, cfg.aug_pad), 200)


def replay_figures(cfg: TrainConfig, steps: int, obs_shape, obs_dtype, num_actions, stack: int) -> dict:
    from agents.build import replay_spec
    from rl.replay import ReplayBuffer
    spec = replay_spec(cfg, obs_shape, obs_dtype, num_actions, stack, capacity=max(steps, cfg.batch_size * 4))
    buf = ReplayBuffer(spec)
    rng = np.random.default_rng(0)
    N = cfg.num_envs
    obs = rng.integers(0, 256, (N, *obs_shape)).astype(obs_dtype)
    zeros = np.zeros(N, bool)
    first = rng.random((steps // N, N)) < 0.01
    start = time.perf_counter()
    for t in range(steps // N):
        buf.add(obs, rng.integers(0, num_actions, N), np.ones(N, np.float32), first[t], zeros, first[t], obs)
    insert = (steps // N) * N / (time.perf_counter() - start)
    sample_s = timed(lambda: buf.sample(cfg.batch_size), 500)
    return {"insert_per_s": insert, "sample_batches_per_s": 1 / sample_s, "sample_ms": sample_s * 1e3,
            "bytes_per_transition": ReplayBuffer.bytes_per_transition(spec),
            "bytes_for_buffer_size": ReplayBuffer.bytes_per_transition(spec) * cfg.buffer_size}


def end_to_end(cfg: TrainConfig, fill: int, steps: int) -> float:
    from agents.runner import Trainer
    cfg = dataclasses.replace(cfg, learning_starts=fill, total_steps=fill + steps, save_replay=False,
                              checkpoint_every=10**12, log_every=10**12,
                              buffer_size=min(cfg.buffer_size, max(fill + steps, cfg.batch_size * 4)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), show_progress=False)
        trainer.train(stop_at=fill)                     # fills the replay, no updates yet
        start_step, start = trainer.step, time.perf_counter()
        trainer.train()                                  # the measured part: acting, stepping, learning
        rate = (trainer.step - start_step) / (time.perf_counter() - start)
        trainer.close()
    return rate


def distributed_figures(cfg: TrainConfig, actors: int, steps: int, updates: int, address: str | None,
                        obs_shape, obs_dtype, num_actions) -> dict:
    """Ape-X on Ray, the figures to size a cluster by, with rl-train --actors' own workers: the env steps/s
    that the first k = 1..actors ActorWorkers deliver into the ReplayServer (an untrained policy at each
    actor's settled epsilon; chunks as in training, the insert's round trip included), and the learner's
    updates/s on batches sampled from that server (the next block fetched while one trains, as in training)."""
    import ray
    import torch

    from agents.build import make_agent
    from agents.distributed.cluster import actor_epsilon_schedules, connect, publish_weights, writable_batch
    from agents.distributed.fleet import start_workers
    from agents.distributed.learner import SAMPLE_BLOCK
    from agents.dqn import resolve_device

    owns_ray = connect(address)
    server, workers = None, []
    try:
        server, workers = start_workers(cfg, obs_shape, obs_dtype, num_actions, actors)
        agent = make_agent(cfg, obs_shape, num_actions, resolve_device(cfg.device))
        weights = [publish_weights(agent)]
        epsilon = [e(cfg.total_steps) for e in actor_epsilon_schedules(cfg, actors)]

        def collect(i: int):
            return workers[i].collect.remote(weights, 0, epsilon[i])

        ray.get([collect(i) for i in range(actors)])            # warm-up: weights fetched, envs stepping
        chunk = cfg.actor_chunk_steps * cfg.num_envs
        acting = {}
        for k in range(1, actors + 1):
            chunks = -(-steps // chunk)                          # this many chunks from k actors, kept busy
            start = time.perf_counter()
            in_flight = {collect(i): i for i in range(min(k, chunks))}
            submitted, delivered = len(in_flight), 0
            while in_flight:
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                i = in_flight.pop(ref)
                delivered += ray.get(ref)["steps"]
                if submitted < chunks:
                    in_flight[collect(i)] = i
                    submitted += 1
            acting[str(k)] = delivered / (time.perf_counter() - start)
        inserted = ray.get(server.stats.remote())["inserted"]

        block, beta = SAMPLE_BLOCK, cfg.priority_beta_start
        rounds = -(-updates // block)
        for batch in ray.get(server.sample.remote(cfg.batch_size, beta, 2))[0]:    # warm-up
            agent.update(writable_batch(batch))
        start = time.perf_counter()
        ref = server.sample.remote(cfg.batch_size, beta, block)
        for r in range(rounds):
            batches, _ = ray.get(ref)
            ref = server.sample.remote(cfg.batch_size, beta, block) if r + 1 < rounds else None
            for batch in batches:
                agent.update(writable_batch(batch))
        if agent.device.type == "cuda":
            torch.cuda.synchronize()
        learner = rounds * block / (time.perf_counter() - start)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
    finally:
        for handle in [*workers, server]:
            if handle is not None:
                ray.kill(handle, no_restart=True)
        if owns_ray:
            ray.shutdown()
    return {"actors": actors, "cluster_cpus": cpus, "envs_per_actor": cfg.num_envs,
            "actor_chunk_steps": cfg.actor_chunk_steps, "acting_env_steps_per_s": acting,
            "replay_inserted": inserted, "learner_updates_per_s": learner}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = from_dict(BenchConfig, overrides_from_args(args, BenchConfig))
    check_distributed_flags(args)
    if args.checkpoint is not None:
        return checkpoint_main(args, sizes)
    preset = args.preset or "breakout"
    cfg = from_dict(TrainConfig, load_preset(preset))
    from agents.build import validated
    cfg = validated(from_dict(TrainConfig, overrides_from_args(args, TrainConfig), base=cfg))
    if args.actors:
        from agents.distributed.cluster import check_config
        check_config(cfg, args.actors)
    import torch

    from agents.dqn import resolve_device, resolve_precision
    from envs import make_env

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    probe = make_env(dataclasses.replace(cfg, num_envs=1))
    obs_shape, obs_dtype, num_actions = probe.obs_shape, probe.obs_dtype, probe.num_actions
    probe.close()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    print(f"rl-bench: {preset} on {device} ({torch.get_num_threads()} torch threads), {cfg.num_envs} envs, "
          f"batch {cfg.batch_size}, train_frequency {cfg.train_frequency}, {precision}", file=sys.stderr)

    env_rate = env_ceiling(cfg, sizes.env_steps)
    update_rate, profile = learner_ceiling(cfg, sizes.updates, obs_shape, num_actions, obs_dtype)
    augment = augmentation_ms(cfg, obs_shape, obs_dtype)
    replay = replay_figures(cfg, sizes.replay_steps, obs_shape, obs_dtype, num_actions, probe.frame_stack)
    e2e = end_to_end(cfg, sizes.fill_steps, sizes.train_steps)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # before Ray joins this process
    apex = (distributed_figures(cfg, args.actors, sizes.env_steps, sizes.updates, args.ray_address, obs_shape,
                                obs_dtype, num_actions) if args.actors else None)
    learner_steps = cfg.train_frequency * update_rate
    bound_overlap = min(env_rate, learner_steps)
    bound_serial = 1 / (1 / env_rate + 1 / learner_steps)
    results = {
        "machine": machine_info(device=str(device),
                                cuda=torch.cuda.get_device_name() if device.type == "cuda" else None),
        "config": {"preset": preset, "num_envs": cfg.num_envs, "batch_size": cfg.batch_size,
                   "train_frequency": cfg.train_frequency, "precision": precision},
        "env_steps_per_s": env_rate,
        "learner_updates_per_s": update_rate,
        "learner_ms_per_update": 1e3 / update_rate,
        "update_profile": profile,
        "augmentation_ms_per_update": augment,
        "replay": replay,
        "train_steps_per_s": e2e,
        "bound_overlapped_steps_per_s": bound_overlap,
        "bound_serial_steps_per_s": bound_serial,
        "ratio_to_overlapped_bound": e2e / bound_overlap,
        "ratio_to_serial_bound": e2e / bound_serial,
        "peak_rss_bytes": peak_rss,
    }
    if apex is not None:
        results["distributed"] = apex
    rows = [
        ("env ceiling", f"{env_rate:,.0f} steps/s", f"{cfg.num_envs} envs, {cfg.env_threads or 'auto'} threads"),
        ("learner ceiling", f"{update_rate:,.1f} updates/s", f"{1e3 / update_rate:.2f} ms/update = "
                                                              f"{learner_steps:,.0f} steps/s at train_frequency {cfg.train_frequency}"),
        ("update profile", f"{profile['busy_ms']:.2f} of {profile['wall_ms']:.2f} ms",
         f"in {profile['what']}; host overhead {profile['host_overhead']:.0%} of the update's wall time (profiled)"),
        *([("augmentation", f"{augment:.2f} ms/update", f"random shift of obs and next_obs, {cfg.batch_size} each "
                                                          f"(inside the learner ceiling)")] if augment is not None else []),
        ("replay insert", f"{replay['insert_per_s']:,.0f} transitions/s", ""),
        ("replay sample", f"{replay['sample_batches_per_s']:,.0f} batches/s", f"{replay['sample_ms']:.3f} ms per batch of {cfg.batch_size}"),
        ("replay memory", f"{replay['bytes_per_transition']:,} B/transition",
         f"{replay['bytes_for_buffer_size'] / 1e9:.2f} GB for {cfg.buffer_size:,}"),
        ("training", f"{e2e:,.0f} steps/s", f"after learning starts, {sizes.train_steps:,} steps"),
        ("ratio to bound", f"{e2e / bound_overlap:.1%}", f"of min(env, learner) = {bound_overlap:,.0f} steps/s"),
        ("ratio to serial", f"{e2e / bound_serial:.1%}", f"of 1/(1/env + 1/learner) = {bound_serial:,.0f} steps/s"),
        ("peak RSS", f"{peak_rss / 2**20:,.0f} MiB", ""),
    ]
    if apex is not None:
        where = f"{apex['cluster_cpus']:g} Ray CPUs, {cfg.num_envs} envs and chunks of {cfg.actor_chunk_steps} steps each"
        rows += [(f"Ape-X {k} actor{'s' * (k != '1')}", f"{rate:,.0f} steps/s", f"into the replay actor; {where}")
                 for k, rate in apex["acting_env_steps_per_s"].items()]
        rows.append(("Ape-X learner", f"{apex['learner_updates_per_s']:,.1f} updates/s",
                     f"batches sampled from the replay actor ({update_rate:,.1f} in-process)"))
    m = results["machine"]
    print(f"{cpu_line(m['cpu'])}; {m['cuda'] or m['device']}; torch {m['torch']}, {m['torch_threads']} torch "
          f"thread(s), {precision}; load average {m['load_average_1min']:.1f}")
    width = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<16} {value:>{width}}  {note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def checkpoint_main(args, sizes: BenchConfig) -> int:
    """``rl-bench --checkpoint FILE``: :func:`trained_learner`, printed and written with --json."""
    given = [f"--{key.replace('_', '-')}" for key in overrides_from_args(args, TrainConfig)]
    given += [flag for flag, value in (("--actors", args.actors), ("--preset", args.preset)) if value is not None]
    if given:
        raise ConfigError(f"--checkpoint measures the run that wrote the file, with its own config: drop {given[0]}")
    if not args.checkpoint.is_file():
        raise ConfigError(f"--checkpoint {str(args.checkpoint)!r} does not exist")
    r = trained_learner(args.checkpoint, sizes.updates, sizes.fill_steps)
    r["machine"] = machine_info(torch_threads=1)
    print(f"rl-bench: the learner of {r['checkpoint']} (step {r['step']:,}, {r['env']}, {r['precision']}, one torch "
          f"thread), {r['updates']} updates on {r['frames_played']:,} frames it played", file=sys.stderr)
    print(f"{cpu_line(r['machine']['cpu'])}; torch {r['machine']['torch']}; load average "
          f"{r['machine']['load_average_1min']:.1f}")
    print(f"optimizer state subnormal  {r['subnormal_fraction_of_optimizer_state']:.1%}")
    print(f"subnormals computed        {r['ms_per_update_subnormals_computed']:.2f} ms/update")
    print(f"subnormals flushed         {r['ms_per_update_subnormals_flushed']:.2f} ms/update  "
          f"({r['speedup']:.2f}x; what rl-train does)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


def entry() -> None:
    sys.exit(run_cli(main, prog="rl-bench"))


if __name__ == "__main__":
    entry()
