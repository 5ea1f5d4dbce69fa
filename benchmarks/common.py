"""What every benchmark script shares: the line naming its machine, a per-call timer, the JSON file."""
from __future__ import annotations

import json
import time

from rl.logging import cpu_line


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
