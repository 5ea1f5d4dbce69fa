"""What every benchmark script shares: the machine its figures belong to, a per-call timer, the JSON file."""
from __future__ import annotations

import json
import os
import time

import torch

from rl.logging import cpu_info, cpu_line


def machine() -> dict:
    """The fields every benchmark's JSON starts with."""
    return {"cpu": cpu_info(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0]}


def machine_line(out: dict) -> str:
    return (f"{cpu_line(out['cpu'])}, torch {out['torch']}, {out['torch_threads']} torch thread(s), "
            f"load average {out['load_average_1min']:.1f}")


def per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def write_json(path: str | None, out: dict) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=2)
