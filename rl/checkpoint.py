"""Checkpoint files: atomic writes, bounded history, loading that cannot run code.

A checkpoint is a dict of tensors and plain data (no pickled objects): state dicts, the config as a
plain dict and a JSON string with counters and RNG states. It loads with ``torch.load(weights_only=True)``
(torch >= 2.10, which fixes CVE-2025-32434 and CVE-2026-24747). The replay buffer is saved beside it
as ``.npy`` files, which ``numpy.load(allow_pickle=False)`` reads without code paths either.

torch.load does not check the zip's CRCs, so a bit flipped inside a tensor's bytes loads silently as a
wrong weight. Each checkpoint therefore carries a sha256 of its contents (:func:`content_digest`), and
the replay folder one per array, both verified on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
CHECKSUM_KEY = "checksum"             # "sha256:<hex>" of every other entry; absent in files written before it
REPLAY_CHECKSUMS = "checksums.json"   # {"<name>.npy": "sha256:<hex>"} in the replay folder


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or unsafe; the message names the file."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _feed(h: Any, value: Any) -> None:
    """Hash ``value`` by a canonical walk: a type tag before each item, dict keys sorted, tensors and arrays
    as dtype, shape and raw bytes. The same contents give the same digest whatever the dict order or device."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())    # bytes of any dtype, bf16 included
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    elif value is None or isinstance(value, bool):
        h.update(f"B{value}".encode())
    elif isinstance(value, int):
        h.update(f"I{int(value)}".encode())
    elif isinstance(value, float):
        h.update(f"F{float(value).hex()}".encode())
    elif isinstance(value, str):
        h.update(f"S{len(value)}:".encode() + value.encode())
    elif isinstance(value, bytes):
        h.update(f"Y{len(value)}:".encode() + value)
    else:
        h.update(f"O{type(value).__qualname__}:{value!r}".encode())


def content_digest(value: Any) -> str:
    """``sha256:<hex>`` of a payload's contents (see :func:`_feed`)."""
    h = hashlib.sha256()
    _feed(h, value)
    return "sha256:" + h.hexdigest()


_noted_unverified: set[str] = set()


def _note_unverified(path: Path, what: str) -> None:
    """One line on stderr, once per file and process: an old file loads, but its contents go unchecked."""
    key = str(path.resolve())
    if key not in _noted_unverified:
        _noted_unverified.add(key)
        print(f"note: {what} {str(path)!r} has no checksum (written before checksums were added); "
              f"loaded without verifying its contents", file=sys.stderr)


def save(path: Path, payload: dict[str, Any]) -> None:
    content = {"format_version": FORMAT_VERSION, **payload}
    content[CHECKSUM_KEY] = content_digest(content)
    atomic_write(Path(path), lambda f: torch.save(content, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely, or raise CheckpointError naming the file and the problem."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; pass a .pt file such as "
                              f"{str(path / 'checkpoints' / 'latest.pt')!r}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip; a torn write loses its directory
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt (not a complete torch archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} holds objects that are not plain data and was refused "
                              f"({first[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a checkpoint of this package "
                              f"(format_version {payload.get('format_version') if isinstance(payload, dict) else None!r}, "
                              f"expected {FORMAT_VERSION})")
    stored = payload.pop(CHECKSUM_KEY, None)
    if stored is None:
        _note_unverified(path, "checkpoint")
    elif stored != content_digest(payload):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its contents do not match the sha256 "
                              f"checksum written with it")
    return payload


def encode_meta(meta: dict[str, Any]) -> str:
    return json.dumps(meta)


def decode_meta(text: str) -> dict[str, Any]:
    return json.loads(text)


# --- run directory layout -------------------------------------------------------------------

class CheckpointDir:
    """``latest.pt``, the last ``keep`` periodic ``step_<N>.pt`` files, ``best.pt`` (the network with the
    best periodic evaluation so far) and ``replay/`` beside them."""

    def __init__(self, root: Path, keep: int):
        self.root = Path(root)
        self.keep = keep

    @property
    def latest(self) -> Path:
        return self.root / "latest.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    def save_best(self, payload: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        save(self.best, payload)
        return self.best

    def periodic(self) -> list[Path]:
        found = [p for p in self.root.glob("step_*.pt") if re.fullmatch(r"step_\d+\.pt", p.name)]
        return sorted(found, key=lambda p: int(p.stem.split("_")[1]))

    def save(self, payload: dict[str, Any], step: int, periodic: bool) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        save(self.latest, payload)
        if periodic and self.keep > 0:
            target = self.root / f"step_{step:012d}.pt"
            save(target, payload)
            for old in self.periodic()[:-self.keep]:
                old.unlink(missing_ok=True)
        return self.latest

    # replay ---------------------------------------------------------------------------------
    @property
    def replay_dir(self) -> Path:
        return self.root / "replay"

    def save_replay(self, arrays: dict[str, np.ndarray], step: int) -> None:
        """Write every array and their checksums to a fresh folder, then swap it in: the old copy survives a crash.
        Hashing costs little beside the write (README, Reliability, has the figures)."""
        tmp = self.root / f".replay.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        digests = {}
        for name, array in {**arrays, "saved_at_step": np.int64(step)}.items():
            array = np.asarray(array)
            digests[f"{name}.npy"] = content_digest(array)
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        atomic_write(tmp / REPLAY_CHECKSUMS, lambda f: f.write(json.dumps(digests, indent=1).encode()))
        old = self.root / f".replay.old-{os.getpid()}"
        if self.replay_dir.exists():
            os.replace(self.replay_dir, old)
        os.replace(tmp, self.replay_dir)
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)

    def load_replay(self, step: int) -> dict[str, np.ndarray] | None:
        """The saved replay if it was written at ``step``, else None (stale or absent). Every file is checked
        against the checksums saved with it; a replay from before checksums loads with a note."""
        folder = self.replay_dir
        if not (folder / "saved_at_step.npy").exists():
            return None
        try:
            arrays = {p.name: np.load(p, allow_pickle=False, mmap_mode="r") for p in folder.glob("*.npy")}
            if int(arrays["saved_at_step.npy"]) != step:
                return None
            listed = folder / REPLAY_CHECKSUMS
            digests = json.loads(listed.read_text()) if listed.exists() else None
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"replay in {str(folder)!r} is truncated or corrupt ({exc})") from None
        if digests is None:
            _note_unverified(folder, "replay")
        else:
            for name in sorted(set(arrays) | set(digests)):
                if name not in arrays or digests.get(name) != content_digest(arrays[name]):
                    raise CheckpointError(f"replay file {str(folder / name)!r} is missing or corrupt: it does not "
                                          f"match the sha256 checksum in {REPLAY_CHECKSUMS}")
        return {name[:-len(".npy")]: array for name, array in arrays.items() if name != "saved_at_step.npy"}
