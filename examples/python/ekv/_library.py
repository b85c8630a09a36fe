"""Finding and loading libekv_c, and the C functions' ctypes signatures.

The library is looked for, in order: the file the environment variable EKV_LIBRARY names
(then EKV_C_LIBRARY, the name ekv's tests use); libekv_c.so beside this package (a copy
put there); build/libekv_c.so of the repository this package sits in (examples/python/
of an ekv checkout built with `cmake --build build --target ekv_c`); the system's library
path (`cmake --install` to a prefix ldconfig or LD_LIBRARY_PATH knows). It is loaded on
first use, so that `import ekv` works without it."""
import ctypes
import ctypes.util
import os
import pathlib

c_int_p = ctypes.POINTER(ctypes.c_int)
c_float_p = ctypes.POINTER(ctypes.c_float)
c_size_t_p = ctypes.POINTER(ctypes.c_size_t)


class CTensor(ctypes.Structure):
    """ekv_tensor (c_api.h): DLPack's fields, strides in elements."""
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


CONFIG_FIELDS = ("layer_num", "kv_head_num", "q_head_num", "head_dim", "block_len", "anchor_num", "anchor_type",
                 "kv_type", "retrieval_type", "layer_step", "token_step", "layer_offset", "max_block_num",
                 "max_batch_size", "max_thread_num")


class CConfig(ctypes.Structure):
    """ekv_cache_config (c_api.h), field for field."""
    _fields_ = [(name, ctypes.c_int) for name in CONFIG_FIELDS]


class CMemory(ctypes.Structure):
    """ekv_cache_memory (c_api.h)."""
    _fields_ = [("bytes_per_layer", ctypes.c_size_t), ("bytes_per_token", ctypes.c_size_t),
                ("total_bytes", ctypes.c_size_t), ("blocks_used", ctypes.c_int), ("blocks_free", ctypes.c_int)]


class CDeviceInfo(ctypes.Structure):
    """ekv_device_info (c_api.h)."""
    _fields_ = [("name", ctypes.c_char * 256), ("device", ctypes.c_int), ("compute_major", ctypes.c_int),
                ("compute_minor", ctypes.c_int), ("sm_count", ctypes.c_int), ("max_threads_per_sm", ctypes.c_int),
                ("memory_bus_width_bits", ctypes.c_int), ("global_memory_bytes", ctypes.c_size_t),
                ("l2_cache_bytes", ctypes.c_size_t), ("shared_memory_per_sm_bytes", ctypes.c_size_t),
                ("shared_memory_per_cta_optin_bytes", ctypes.c_size_t), ("copy_gbps", ctypes.c_float),
                ("host_to_device_gbps", ctypes.c_float)]


_p = ctypes.c_void_p
_i = ctypes.c_int
_t = ctypes.POINTER(CTensor)
_SIGNATURES = {
    "ekv_compress": [_p, _p, _p, ctypes.c_float, _i, _i, c_int_p, _i, _i, c_float_p, c_float_p],
    "ekv_mem_bandwidth": [_p, _p, _i, _i, c_float_p],
    "ekv_mem_bandwidth_batched": [_p, _p, _i, _i, _i, c_float_p],
    "ekv_compute_throughput": [_p, _i, _i, c_float_p],
    "ekv_inference_cycle_ex": [_p, _p, _p, _i, _i, _i, ctypes.c_float, c_float_p, c_float_p, c_float_p],
    "ekv_get_gpu_info": [ctypes.c_char_p, c_int_p, c_int_p, c_size_t_p, _i],
    "ekv_get_device_info": [ctypes.POINTER(CDeviceInfo), _i],
    "ekv_cache_config_default": [ctypes.POINTER(CConfig)],
    "ekv_cache_config_parse": [ctypes.c_char_p, ctypes.POINTER(CConfig)],
    "ekv_cache_config_to_string": [ctypes.POINTER(CConfig), ctypes.c_char_p, ctypes.c_size_t],
    "ekv_cache_config_validate": [ctypes.POINTER(CConfig)],
    "ekv_cache_create": [ctypes.POINTER(CConfig), _i, _i, ctypes.POINTER(_p)],
    "ekv_cache_destroy": [_p],
    "ekv_cache_get_config": [_p, ctypes.POINTER(CConfig), c_int_p, c_int_p],
    "ekv_cache_append": [_p, _i, _t, _t],
    "ekv_cache_attn": [_p, _t, _t, _t, _i, _i, _i, _i, _i, c_int_p],
    "ekv_cache_append_on_stream": [_p, _i, _t, _t, _p],
    "ekv_cache_attn_on_stream": [_p, _t, _t, _t, _i, _i, _i, _i, _i, c_int_p, _p],
    "ekv_cache_get_cache_total_len": [_p, _i, c_int_p],
    "ekv_cache_update_cache_total_len": [_p, _i, _i],
    "ekv_cache_free_sequence": [_p, _i],
    "ekv_cache_get_block_table": [_p, _p, ctypes.c_int64, c_int_p],
    "ekv_cache_get_kvcache_one_block": [_p, _t, _t, _i, _i],
    "ekv_cache_update_kvcache_one_block": [_p, _t, _t, _i, _i],
    "ekv_cache_get_importance_one_block": [_p, _t, _i, _i],
    "ekv_cache_update_importance_one_block": [_p, _t, _i, _i],
    "ekv_cache_get_anchor_one_block": [_p, _t, _i, _i],
    "ekv_cache_update_anchor_one_block": [_p, _t, _i, _i],
    "ekv_cache_get_memory": [_p, ctypes.POINTER(CMemory)],
    "ekv_cache_dump_kvcache": [_p, ctypes.c_char_p],
    "ekv_cache_load_kvcache": [_p, ctypes.c_char_p],
}


class LibraryNotFoundError(OSError):
    """libekv_c was not found in any of the places the message lists."""


def candidates():
    """The paths tried, in order (see the module's docstring)."""
    here = pathlib.Path(__file__).resolve().parent
    paths = [os.environ[v] for v in ("EKV_LIBRARY", "EKV_C_LIBRARY") if os.environ.get(v)]
    paths.append(str(here / "libekv_c.so"))
    paths.append(str(here.parents[2] / "build" / "libekv_c.so"))
    found = ctypes.util.find_library("ekv_c")
    paths.append(found or "libekv_c.so")
    return paths


_lib = None


def lib():
    """The loaded library, with every function's argtypes and restype set."""
    global _lib
    if _lib is not None:
        return _lib
    tried = []
    for path in candidates():
        # a path that names a file must exist; a bare name is the dynamic loader's search
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{path} (no such file)")
            continue
        try:
            loaded = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        loaded.ekv_last_error.restype = ctypes.c_char_p
        loaded.ekv_status_name.restype = ctypes.c_char_p
        loaded.ekv_status_name.argtypes = [ctypes.c_int]
        for name, argtypes in _SIGNATURES.items():
            f = getattr(loaded, name)
            f.argtypes = argtypes
            f.restype = ctypes.c_int
        _lib = loaded
        return _lib
    raise LibraryNotFoundError("libekv_c not found; set EKV_LIBRARY to its path (build it with "
                               "`cmake --build build --target ekv_c`). Tried: " + "; ".join(tried))
