"""ekv from Python: ctypes over libekv_c (ekv's C API, include/ekv/c_api.h), numpy in and
out; torch tensors through their own attributes, other device arrays (CuPy) through
__cuda_array_interface__ or DLPack, without importing torch. Where libekv_c is found:
ekv._library's docstring (EKV_LIBRARY first)."""
from ._errors import (CudaError, EkvError, InternalError, InvalidArgumentError, NoDeviceError, OutOfMemoryError,
                      last_error)
from ._library import LibraryNotFoundError
from .functions import (DeviceInfo, compress, compute_throughput, get_device_info, get_gpu_info, inference_cycle,
                        mem_bandwidth, mem_bandwidth_batched)
from .kvcache import AnchorType, GGMLType, KVCache, KVCacheConfig, KVCacheMemory, RetrievalType

__all__ = ["AnchorType", "CudaError", "DeviceInfo", "EkvError", "GGMLType", "InternalError",
           "InvalidArgumentError", "KVCache", "KVCacheConfig", "KVCacheMemory", "LibraryNotFoundError",
           "NoDeviceError", "OutOfMemoryError", "RetrievalType", "compress", "compute_throughput", "get_device_info",
           "get_gpu_info", "inference_cycle", "last_error", "mem_bandwidth", "mem_bandwidth_batched"]
