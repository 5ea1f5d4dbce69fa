"""Data loading: IDX (plain and gzipped) and .npz files the tests write, built-ins, the split."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from rl.data import (
    IDX_TYPES,
    DataError,
    builtin,
    builtin_names,
    features,
    load_dataset,
    load_idx_folder,
    load_npz,
    read_idx,
    split,
)

CODES = {np.dtype(t).newbyteorder("=").str: code for code, t in IDX_TYPES.items()}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding, written independently of the reader: magic, big-endian dims, big-endian data."""
    code = CODES[array.dtype.newbyteorder("=").str]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_folder(tmp_path, n=7, gz=True, sep="-"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images{sep}idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"train-labels{sep}idx1-ubyte{suffix}", labels, gz)
    return images, labels


# --- IDX -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trips_every_type(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "a.idx", array, gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "no-gz-suffix"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sep", ["-", "."])
def test_mnist_layout_folder(tmp_path, gz, sep):
    images, labels = mnist_folder(tmp_path, gz=gz, sep=sep)
    data = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(data.x, images)
    np.testing.assert_array_equal(data.y, labels)
    assert data.y.dtype == np.int64 and data.feature_shape == (5, 4)
    assert data.num_classes == labels.max() + 1


def corrupt(data: bytes, how: str) -> bytes:
    if how == "magic":
        return b"\x01" + data[1:]
    if how == "type":
        return data[:2] + b"\x07" + data[3:]
    if how == "no_dims":
        return data[:3] + b"\x00" + data[4:]
    if how == "truncated_header":
        return data[:6]
    if how == "truncated_data":
        return data[:-1]
    if how == "trailing":
        return data + b"\x00"
    if how == "wrong_dims":
        return data[:3] + b"\x02" + data[4:]   # claims 2 dims: the 3rd dim's bytes become data
    raise AssertionError(how)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("how,message", [
    ("magic", "not an IDX file"), ("type", "type code 0x07; allowed: 0x08 (uint8)"),
    ("no_dims", "truncated IDX header"), ("truncated_header", "truncated IDX header"),
    ("truncated_data", "header promises shape (3, 5, 4) of uint8 (60 bytes) but 59 bytes follow"),
    ("trailing", "but 61 bytes follow"), ("wrong_dims", "header promises shape (3, 5)"),
])
def test_malformed_idx_fails_clearly(tmp_path, gz, how, message):
    data = corrupt(idx_bytes(np.zeros((3, 5, 4), np.uint8)), how)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_broken_gzip_fails_clearly(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 2, 2), np.uint8)))[:-9])
    with pytest.raises(DataError, match="is not a valid gzip file"):
        read_idx(path)


def test_empty_file_fails_clearly(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file.*an empty file"):
        read_idx(tmp_path / "empty")


def test_folder_without_files_lists_the_expected_names(tmp_path):
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte\[\.gz\]; an IDX folder holds"):
        load_idx_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"no train-labels-idx1-ubyte\[\.gz\]"):
        load_idx_folder(tmp_path)


def test_folder_with_mismatched_counts_fails(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="x has 3 examples but y has 4"):
        load_idx_folder(tmp_path)


# --- npz -----------------------------------------------------------------------------------------

def test_npz_round_trip_keeps_dtypes_and_extras(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    y = np.array([0, 2, 1, 2, 0], np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y, note=np.array("hello"))
    data = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    assert data.y.dtype == np.int64 and data.num_classes == 3
    assert str(data.extras["note"]) == "hello"


def test_npz_num_classes_covers_labels_that_never_occur(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 1]), num_classes=np.int64(4))
    assert load_npz(tmp_path / "d.npz").num_classes == 4


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((3, 2))}, "has no array 'y'; an .npz data set holds arrays x"),
    ({"y": np.zeros(3, int)}, "has no array 'x'"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(4, int)}, "x has 3 examples but y has 4"),
    ({"x": np.zeros((3, 2)), "y": np.array([0.0, 1.5, 1.0])}, "y must be whole-number class labels"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 1])}, "class labels must be >= 0"),
    ({"x": np.zeros(3), "y": np.zeros(3, int)}, "x must be a numeric array [N, features...]"),
    ({"x": np.array([["a"], ["b"]]), "y": np.zeros(2, int)}, "x must be a numeric array"),
    ({"x": np.array([[np.nan], [0.0]]), "y": np.zeros(2, int)}, "non-finite"),
    ({"x": np.zeros((1, 2)), "y": np.zeros(1, int)}, "needs at least 2 examples"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, 3]), "num_classes": np.int64(2)},
     "num_classes = 2 but labels go up to 3"),
    ({"x": np.zeros((2, 2)), "y": np.zeros(2, int), "num_classes": np.float32(2)},
     "num_classes must be a whole number"),
])
def test_bad_npz_fails_clearly(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as err:
        load_npz(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_npz_with_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DataError, match="not a readable .npz of plain arrays"):
        load_npz(path)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_garbage_file_is_refused(tmp_path, content):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="data.npz"):
        load_npz(path)


def test_single_npy_array_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match="single .npy array"):
        load_npz(tmp_path / "a.npy")


# --- dispatch, built-ins, split, features -----------------------------------------------------------

def test_missing_data_lists_what_is_allowed(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path / "nope.npz"))
    assert "does not exist" in str(err.value) and all(name in str(err.value) for name in builtin_names())


@pytest.mark.parametrize("name", builtin_names())
def test_builtins_are_deterministic_balanced_and_labelled(name):
    a, b = builtin(name, 400), builtin(name, 400)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert len(a.x) == 400 and a.y.dtype == np.int64
    counts = np.bincount(a.y, minlength=a.num_classes)
    assert counts.min() >= 400 // a.num_classes - 1
    assert load_dataset(name, 400).name == name


def test_stripes_are_uint8_images():
    data = builtin("stripes", 8)
    assert data.x.dtype == np.uint8 and data.feature_shape == (16, 16)


def test_split_is_disjoint_complete_and_seeded():
    train, val = split(103, 0.2, seed=3)
    assert len(val) == 21 and len(train) == 82
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(103))
    again = split(103, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    assert not np.array_equal(val, split(103, 0.2, seed=4)[1])


def test_features_are_float32_as_stored():
    """No scaling here: the model standardises its inputs (agents.supervised.Standardize)."""
    pixels = np.array([[0, 255]], np.uint8)
    torch.testing.assert_close(features(pixels), torch.tensor([[0.0, 255.0]]))
    values = np.array([[-3.0, 7.5]], np.float64)
    torch.testing.assert_close(features(values), torch.tensor([[-3.0, 7.5]]))
