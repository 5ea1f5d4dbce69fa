"""What every benchmark script shares: the machine its figures belong to, a per-call timer, the JSON file."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time

import torch


def cpu_name() -> dict:
    """The CPU by lscpu's model name, core count and the flags that decide bf16 speed."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []))
    return {"model": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": sorted(f for f in flags if f.startswith("amx"))}


def machine() -> dict:
    """The fields every benchmark's JSON starts with."""
    return {"cpu": cpu_name(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0]}


def machine_line(out: dict) -> str:
    cpu = out["cpu"]
    return (f"{cpu['model']} ({cpu['cores']} cores, avx512_bf16={cpu['avx512_bf16']}, amx={cpu['amx'] or 'none'}), "
            f"torch {out['torch']}, {out['torch_threads']} torch thread(s), "
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
