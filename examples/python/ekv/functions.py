"""The older elastic-KV core's six functions (c_api.h states what each computes, its
units and errors), on numpy arrays or on device arrays (torch, CuPy: any object with
__cuda_array_interface__ or __dlpack__). Outputs not given are numpy arrays; given ones
may be either kind, each told apart by the C side."""
import ctypes
from collections import namedtuple

import numpy as np

from ._errors import check
from ._library import CDeviceInfo, lib
from ._tensor import as_tensor

Compressed = namedtuple("Compressed", "values indices compressed_size avg_ms std_ms")
InferenceCycle = namedtuple("InferenceCycle", "baseline_total_ms elastic_total_ms relative_error output")
GpuInfo = namedtuple("GpuInfo", "device_name compute_major compute_minor total_memory")
DeviceInfo = namedtuple("DeviceInfo", [name for name, _ in CDeviceInfo._fields_])


def _pointer(obj, name, dtype, size=None, writable=False):
    """The address of a contiguous `dtype` array of at least `size` elements, and its size."""
    t = as_tensor(obj, name, writable)
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}; needs {dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} is strided; needs a contiguous array")
    if size is not None and t.size < size:
        raise ValueError(f"{name} holds {t.size} elements; needs at least {size}")
    return t.data, t.size


def compress(kv_cache, threshold, seq_length=None, hidden_size=None, repetitions=1, warmup_iterations=0,
             compressed_cache=None, indices=None, return_indices=True):
    """ekv_compress: the elements with |x| > threshold, in order, with their positions.
    seq_length * hidden_size elements are read (default: all of kv_cache, as one row).
    Returns Compressed(values, indices, compressed_size, avg_ms, std_ms); values and
    indices are views of the first compressed_size outputs (indices None where
    return_indices is false)."""
    data, n = _pointer(kv_cache, "kv_cache", "float32")
    seq_length = n if seq_length is None else seq_length
    hidden_size = 1 if hidden_size is None else hidden_size
    total = max(seq_length * hidden_size, 0)
    out = np.empty(total, dtype=np.float32) if compressed_cache is None else compressed_cache
    idx = (np.empty(total, dtype=np.int32) if indices is None else indices) if return_indices else None
    out_p, _ = _pointer(out, "compressed_cache", "float32", total, writable=True)
    idx_p = _pointer(idx, "indices", "int32", total, writable=True)[0] if idx is not None else None
    kept, avg, std = ctypes.c_int(0), ctypes.c_float(0), ctypes.c_float(0)
    check(lib().ekv_compress(data, out_p, idx_p, threshold, seq_length, hidden_size, ctypes.byref(kept), repetitions,
                             warmup_iterations, ctypes.byref(avg), ctypes.byref(std)))
    k = kept.value
    return Compressed(out[:k], idx[:k] if idx is not None else None, k, avg.value, std.value)


def mem_bandwidth(input, output, size=None, iterations=10):
    """ekv_mem_bandwidth: GB/s of `iterations` copies of size floats (default: all of input)."""
    src, n = _pointer(input, "input", "float32")
    size = n if size is None else size
    dst, _ = _pointer(output, "output", "float32", size, writable=True)
    gbps = ctypes.c_float(0)
    check(lib().ekv_mem_bandwidth(src, dst, size, iterations, ctypes.byref(gbps)))
    return gbps.value


def mem_bandwidth_batched(input, output, size=None, iters_per_launch=10, num_launches=10):
    """ekv_mem_bandwidth_batched: the same copies in synchronised batches; GB/s."""
    src, n = _pointer(input, "input", "float32")
    size = n if size is None else size
    dst, _ = _pointer(output, "output", "float32", size, writable=True)
    gbps = ctypes.c_float(0)
    check(lib().ekv_mem_bandwidth_batched(src, dst, size, iters_per_launch, num_launches, ctypes.byref(gbps)))
    return gbps.value


def compute_throughput(data, size=None, ops_per_element=1024):
    """ekv_compute_throughput: GFLOP/s of ekv's FMA chains; data receives each element's sum."""
    p, n = _pointer(data, "data", "float32", writable=True)
    size = n if size is None else size
    gflops = ctypes.c_float(0)
    check(lib().ekv_compute_throughput(p, size, ops_per_element, ctypes.byref(gflops)))
    return gflops.value


def inference_cycle(kv_cache, seq_length, hidden_size, decode_steps, threshold_elastic, compressed_cache=None):
    """ekv_inference_cycle_ex: a decode loop over ekv's KVCache from kv_cache [seq_length]
    [hidden_size] float32, exact then elastic at compression ratio threshold_elastic.
    Returns InferenceCycle(baseline_total_ms, elastic_total_ms, relative_error, output),
    output the elastic loop's last [hidden_size]."""
    data, _ = _pointer(kv_cache, "kv_cache", "float32", max(seq_length * hidden_size, 0))
    out = np.empty(max(hidden_size, 0), dtype=np.float32) if compressed_cache is None else compressed_cache
    out_p, _ = _pointer(out, "compressed_cache", "float32", max(hidden_size, 0), writable=True)
    exact, elastic, error = ctypes.c_float(0), ctypes.c_float(0), ctypes.c_float(0)
    check(lib().ekv_inference_cycle_ex(data, out_p, None, seq_length, hidden_size, decode_steps, threshold_elastic,
                                       ctypes.byref(exact), ctypes.byref(elastic), ctypes.byref(error)))
    return InferenceCycle(exact.value, elastic.value, error.value, out)


def get_gpu_info():
    """ekv_get_gpu_info: the current device's GpuInfo(device_name, compute_major,
    compute_minor, total_memory); NoDeviceError where there is none."""
    name = ctypes.create_string_buffer(256)
    major, minor, memory = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_size_t(0)
    check(lib().ekv_get_gpu_info(name, ctypes.byref(major), ctypes.byref(minor), ctypes.byref(memory), 256))
    return GpuInfo(name.value.decode(), major.value, minor.value, memory.value)


def get_device_info(measure_bandwidth=False):
    """ekv_get_device_info: the current device's DeviceInfo (name, device, compute
    capability, SMs, L2, memory, ...), with copy_gbps and host_to_device_gbps measured now
    where measure_bandwidth is true (else 0); NoDeviceError where there is none."""
    info = CDeviceInfo()
    check(lib().ekv_get_device_info(ctypes.byref(info), 1 if measure_bandwidth else 0))
    values = {name: getattr(info, name) for name, _ in CDeviceInfo._fields_}
    values["name"] = info.name.decode()
    return DeviceInfo(**values)
