"""The evaluation protocol: full games, raw scores, a small stated epsilon, a fixed seed.

Episodes are split evenly across the vector envs *before* playing (env e plays a fixed quota), so
short games do not crowd out long ones and the mean is unbiased.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from envs.base import VecEnv


def evaluate(agent, env: VecEnv, episodes: int, epsilon: float) -> dict[str, Any]:
    n = env.num_envs
    quota = np.array([episodes // n + (e < episodes % n) for e in range(n)])
    returns: list[list[float]] = [[] for _ in range(n)]
    lengths: list[list[int]] = [[] for _ in range(n)]
    obs = env.reset()
    while any(len(returns[e]) < quota[e] for e in range(n)):
        step = env.step(agent.act(obs, epsilon))
        for e, ret, length in step.finished:
            if len(returns[e]) < quota[e]:
                returns[e].append(ret)
                lengths[e].append(length)
        obs = step.obs
    flat = np.array([r for rs in returns for r in rs], dtype=np.float64)
    return {
        "episodes": int(len(flat)),
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "median": float(np.median(flat)),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "returns": flat.tolist(),
        "lengths": [int(x) for ls in lengths for x in ls],
        "protocol": {"epsilon": epsilon, "seed": env.seed, **env.protocol},
    }
