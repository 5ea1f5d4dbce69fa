"""Labelled data sets (x, y) for the supervised baselines: built-in synthetic sets, ``.npz`` files
and folders of IDX files (the MNIST / Fashion-MNIST format).

Every loader checks what it reads and raises :class:`DataError` with one line naming the file and
what was expected, so a bad file fails before any training starts. Arrays stay in their stored
dtype (uint8 images stay uint8); :func:`features` turns them into model inputs.
"""
from __future__ import annotations

import gzip
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch


class DataError(ValueError):
    """A data set that is missing or malformed; the message is one line naming the file."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray                 # [N, *feature_shape], numeric
    y: np.ndarray                 # int64[N], class labels in [0, num_classes)
    num_classes: int
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)  # other arrays of an .npz file

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


# --- built-in synthetic sets -------------------------------------------------------------------
# Generated from a fixed seed, so every training seed and every optimizer sees the same data.

def _spirals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three interleaved spiral arms in the plane (after CS231n's toy set): far from linearly
    separable, and hard enough that optimizers differ within a few epochs."""
    k = 3
    y = np.arange(n) % k
    r = rng.uniform(0.05, 1.0, n)                                          # radius
    theta = y * (2 * np.pi / k) + 2 * np.pi * r + rng.normal(0.0, 0.2, n)   # one full turn per arm
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)                 # [N, 2]
    return x.astype(np.float32), y


def _gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four unit-variance Gaussian clusters in 8 dimensions: nearly linearly separable."""
    k, d = 4, 8
    centres = rng.normal(0.0, 1.5, (k, d))
    y = np.arange(n) % k
    x = centres[y] + rng.normal(0.0, 1.0, (n, d))                           # [N, 8]
    return x.astype(np.float32), y


def _stripes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16x16 uint8 images of faint stripes under heavy noise; the class is the orientation
    (horizontal, vertical, diagonal, anti-diagonal). Local patterns decide it, so a CNN learns it
    within a few epochs where an MLP barely beats chance; same dtype and layout as IDX images."""
    directions = np.array([[0, 1], [1, 0], [1, 1], [1, -1]], np.float64) / [[1], [1], [2 ** .5], [2 ** .5]]
    y = np.arange(n) % len(directions)
    rows, cols = np.mgrid[0:16, 0:16]
    freq = rng.uniform(1 / 6, 1 / 3, n)[:, None, None]                     # cycles per pixel
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    contrast = rng.uniform(0.1, 0.5, n)[:, None, None]
    d = directions[y]
    along = d[:, 0, None, None] * rows + d[:, 1, None, None] * cols         # [N, 16, 16]
    img = 0.5 + contrast * np.sin(2 * np.pi * freq * along + phase) + rng.normal(0.0, 0.5, (n, 16, 16))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), y


@dataclass(frozen=True)
class Builtin:
    name: str
    make: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    num_classes: int
    description: str


BUILTINS: tuple[Builtin, ...] = (
    Builtin("spirals", _spirals, 3, "3 interleaved spiral arms in 2-D, one turn each (nonlinear; MLP)"),
    Builtin("gaussians", _gaussians, 4, "4 Gaussian clusters in 8-D (nearly linear)"),
    Builtin("stripes", _stripes, 4, "16x16 uint8 images of noisy stripes, 4 orientations (CNN)"),
)
_BUILTIN_INDEX = MappingProxyType({b.name: b for b in BUILTINS})


def builtin_names() -> tuple[str, ...]:
    return tuple(_BUILTIN_INDEX)


def builtin(name: str, samples: int = 3000) -> Dataset:
    entry = _BUILTIN_INDEX[name]
    x, y = entry.make(samples, np.random.default_rng(0))
    return Dataset(name, x, y.astype(np.int64), entry.num_classes)


# --- IDX files ---------------------------------------------------------------------------------
# http://yann.lecun.com/exdb/mnist/: two zero bytes, a type code, the number of dimensions, then
# one big-endian uint32 per dimension, then the values, big-endian, row-major.
IDX_TYPES = MappingProxyType({0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
                              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")})


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data file {str(path)!r} cannot be read: {exc.strerror}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"data file {str(path)!r} is not a valid gzip file ({exc})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (optionally gzipped) as an array in native byte order."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"data file {str(path)!r} is not an IDX file: it must start with two zero bytes, "
                        f"a type code and a dimension count (got {raw[:4].hex() or 'an empty file'})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        allowed = ", ".join(f"0x{c:02X} ({t.name})" for c, t in IDX_TYPES.items())
        raise DataError(f"data file {str(path)!r} has IDX type code 0x{code:02X}; allowed: {allowed}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"data file {str(path)!r} has a truncated IDX header "
                        f"({ndim} dimensions need {4 + 4 * ndim} header bytes, file has {len(raw)})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - 4 - 4 * ndim
    if body != expected:
        raise DataError(f"data file {str(path)!r}: the IDX header promises shape {shape} of {dtype.name} "
                        f"({expected} bytes) but {body} bytes follow it")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, split: str, kind: str, ndim: int) -> Path | None:
    # MNIST's own names use a dash (train-images-idx3-ubyte); some mirrors use a dot.
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            path = folder / f"{split}-{kind}{sep}idx{ndim}-ubyte{suffix}"
            if path.is_file():
                return path
    return None


def load_idx_folder(folder: str | Path) -> Dataset:
    """The training split of an MNIST-layout folder: train-images-idx3-ubyte[.gz] and
    train-labels-idx1-ubyte[.gz]. The t10k test files, if present, are left untouched: the
    trainer carves its validation split out of the training files."""
    folder = Path(folder)
    images, labels = _find_idx(folder, "train", "images", 3), _find_idx(folder, "train", "labels", 1)
    if images is None or labels is None:
        missing = "train-images-idx3-ubyte[.gz]" if images is None else "train-labels-idx1-ubyte[.gz]"
        raise DataError(f"data folder {str(folder)!r} has no {missing}; an IDX folder holds "
                        f"train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] (the MNIST layout)")
    x, y = read_idx(images), read_idx(labels)
    return _checked(str(folder), x, y, None, {}, f"{images.name} / {labels.name}")


# --- .npz files --------------------------------------------------------------------------------

def load_npz(path: str | Path) -> Dataset:
    """Arrays ``x`` [N, ...] and ``y`` int[N] from an .npz file; an optional scalar ``num_classes``
    (for labels that never occur, such as unused actions); other arrays go to ``extras``.
    Loaded with ``allow_pickle=False``: a file holding Python objects is refused."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = None
        if isinstance(archive, np.lib.npyio.NpzFile):
            with archive:
                arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data file {str(path)!r} is not a readable .npz of plain arrays ({first[:160]})") from None
    if arrays is None:
        raise DataError(f"data file {str(path)!r} is a single .npy array; "
                        f"use an .npz file with arrays x and y (numpy.savez)")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"data file {str(path)!r} has no array {missing[0]!r}; an .npz data set holds arrays "
                        f"x [N, ...] and y [N] (found: {', '.join(sorted(arrays)) or 'nothing'})")
    num_classes = arrays.pop("num_classes", None)
    if num_classes is not None and (num_classes.shape != () or num_classes.dtype.kind not in "iu"):
        raise DataError(f"data file {str(path)!r}: num_classes must be a whole number, got {num_classes!r}")
    x, y = arrays.pop("x"), arrays.pop("y")
    return _checked(str(path), x, y, None if num_classes is None else int(num_classes), arrays, "x / y")


def _checked(name: str, x: np.ndarray, y: np.ndarray, num_classes: int | None,
             extras: dict[str, np.ndarray], what: str) -> Dataset:
    """Validate a loaded (x, y) pair; every failure names the source and what is allowed."""
    where = f"data {name!r} ({what})"
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise DataError(f"{where}: x must be a numeric array [N, features...], got {x.dtype.name} {x.shape}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise DataError(f"{where}: y must be whole-number class labels [N], got {y.dtype.name} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} examples but y has {len(y)}")
    if len(y) < 2:
        raise DataError(f"{where}: needs at least 2 examples, got {len(y)}")
    if y.min() < 0:
        raise DataError(f"{where}: class labels must be >= 0, got {int(y.min())}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: x holds non-finite values (nan or inf)")
    classes = int(y.max()) + 1
    if num_classes is not None and num_classes < classes:
        raise DataError(f"{where}: num_classes = {num_classes} but labels go up to {classes - 1}")
    return Dataset(name, x, y.astype(np.int64), num_classes or classes, MappingProxyType(extras))


# --- dispatch ----------------------------------------------------------------------------------

def load_dataset(spec: str, samples: int = 3000) -> Dataset:
    """``spec`` is a built-in name, an .npz file or a folder of IDX files. A file that happens to
    share a built-in's name is reached as ``./spirals``."""
    if spec in _BUILTIN_INDEX:
        return builtin(spec, samples)
    path = Path(spec)
    if path.is_dir():
        return load_idx_folder(path)
    if path.is_file():
        return load_npz(path)
    raise DataError(f"data {spec!r} does not exist; use an .npz file (arrays x, y), a folder of IDX files, "
                    f"or a built-in: {', '.join(builtin_names())}")


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) index arrays covering range(n), shuffled by ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return order[n_val:], order[:n_val]


def features(x: np.ndarray) -> torch.Tensor:
    """float32 model inputs [N, *feature_shape] as stored; the model standardises them itself
    (agents.supervised.Standardize), so the range a data set was stored in does not matter."""
    return torch.from_numpy(np.ascontiguousarray(x)).float()   # shares float32 memory, converts the rest
