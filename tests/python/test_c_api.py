"""libekv_c from Python through ctypes, as the older core's callers use it: the README's
example as written, argument errors with their status and message, and on a GPU machine
ekv_compress on numpy arrays against numpy, bit for bit. EKV_C_LIBRARY names the library
(ctest passes it)."""
import ctypes
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
c_float_p, c_int_p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
SUCCESS, INVALID_ARGUMENT, NO_DEVICE = 0, 1, 2


@pytest.fixture(scope="module")
def lib():
    lib = ctypes.CDLL(os.environ["EKV_C_LIBRARY"])
    lib.ekv_last_error.restype = ctypes.c_char_p
    lib.ekv_compress.argtypes = [c_float_p, c_float_p, c_int_p, ctypes.c_float, ctypes.c_int, ctypes.c_int,
                                 c_int_p, ctypes.c_int, ctypes.c_int, c_float_p, c_float_p]
    lib.ekv_get_gpu_info.argtypes = [ctypes.c_char_p, c_int_p, c_int_p, ctypes.POINTER(ctypes.c_size_t),
                                     ctypes.c_int]
    for f in (lib.ekv_compress, lib.ekv_get_gpu_info):
        f.restype = ctypes.c_int
    return lib


def has_gpu(lib):
    name = ctypes.create_string_buffer(256)
    major, minor, memory = ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
    return lib.ekv_get_gpu_info(name, ctypes.byref(major), ctypes.byref(minor), ctypes.byref(memory), 256) == 0


def compress(lib, data, threshold, seq_length, hidden_size, with_indices=True):
    out = np.full(data.size, np.nan, dtype=np.float32)
    indices = np.full(data.size, -1, dtype=np.int32)
    kept, avg, std = ctypes.c_int(-1), ctypes.c_float(0), ctypes.c_float(0)
    status = lib.ekv_compress(data.ctypes.data_as(c_float_p), out.ctypes.data_as(c_float_p),
                              indices.ctypes.data_as(c_int_p) if with_indices else None, threshold, seq_length,
                              hidden_size, ctypes.byref(kept), 2, 1, ctypes.byref(avg), ctypes.byref(std))
    return status, out[:max(kept.value, 0)], indices[:max(kept.value, 0)]


def test_readme_example_runs_as_written(lib):
    text = README.read_text()
    marker = "<!-- python: c_api -->\n```python\n"
    assert marker in text, "README.md lost its ctypes example"
    code = text.split(marker, 1)[1].split("\n```", 1)[0]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    if has_gpu(lib):
        assert run.stdout.startswith("kept "), run.stdout
    else:
        assert run.stdout.startswith("ekv_compress returned 2: ekv_compress: no CUDA device"), run.stdout


def test_argument_errors_name_the_argument(lib):
    data = np.ones(8, dtype=np.float32)
    status, _, _ = compress(lib, data, 0.5, 0, 8)
    assert status == INVALID_ARGUMENT
    assert lib.ekv_last_error() == b"ekv_compress: seq_length=0 not supported; supported: >= 1"
    status, _, _ = compress(lib, data, float("nan"), 1, 8)
    assert status == INVALID_ARGUMENT
    assert lib.ekv_last_error() == b"ekv_compress: threshold=nan not supported; supported: any other float"
    status, _, _ = compress(lib, data, 0.5, 65536, 65536)
    assert status == INVALID_ARGUMENT
    assert b"65536 * 65536 = 4294967296 overflows int" in lib.ekv_last_error()
    kept, avg, std = ctypes.c_int(), ctypes.c_float(), ctypes.c_float()
    assert lib.ekv_compress(None, None, None, 0.5, 1, 8, ctypes.byref(kept), 1, 0, ctypes.byref(avg),
                            ctypes.byref(std)) == INVALID_ARGUMENT
    assert lib.ekv_last_error().startswith(b"ekv_compress: kv_cache is NULL")


def test_compress_matches_numpy_bit_for_bit(lib):
    rng = np.random.default_rng()
    data = rng.standard_normal(1_000_003).astype(np.float32)
    special = rng.integers(0, data.size, 5000)
    data[special] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-40, 0.5], dtype=np.float32),
                               special.size)
    status, values, indices = compress(lib, data, 0.5, 1_000_003, 1)
    if status == NO_DEVICE:
        assert lib.ekv_last_error().startswith(b"ekv_compress: no CUDA device")
        assert not has_gpu(lib)
        return
    assert status == SUCCESS, lib.ekv_last_error()
    with np.errstate(invalid="ignore"):
        mask = np.abs(data) > np.float32(0.5)
    assert np.array_equal(values.view(np.uint32), data[mask].view(np.uint32))
    assert np.array_equal(indices, np.flatnonzero(mask).astype(np.int32))
