"""A caller's array as the C API sees it: pointer, dtype, shape, strides in elements,
device. numpy arrays are host memory; torch tensors are read from their own attributes
(data_ptr, stride, device); any other object through __cuda_array_interface__ (CuPy,
Numba) or DLPack (__dlpack__: JAX, CuPy, numpy), without importing any of them."""
import ctypes

import numpy as np

from ._library import CTensor

CPU, CUDA, CUDA_HOST = 1, 2, 3  # ekv_device_type, DLPack's device types
# ekv_dtype's values by name; bfloat16 arrays come from ml_dtypes (numpy) or DLPack
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2, "float8_e4m3": 3, "q8_0": 4, "q4_0": 5}
_DLPACK_DTYPES = {(2, 32): "float32", (2, 16): "float16", (4, 16): "bfloat16", (0, 32): "int32", (1, 8): "uint8"}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class Tensor:
    """What an argument is: data (address), dtype (a name: float32, float16, bfloat16,
    int32, ...), shape, strides (elements), device_type, device_id (None where the object
    does not say), and the objects that keep its memory alive during the call."""

    def __init__(self, data, dtype, shape, strides, device_type, device_id, keep):
        self.data, self.dtype, self.shape, self.strides = data, dtype, tuple(shape), tuple(strides)
        self.device_type, self.device_id, self.keep = device_type, device_id, keep

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def is_contiguous(self):
        if self.size == 0:
            return True  # no element is out of place
        stride = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != stride:
                return False
            stride *= n
        return True

    def squeeze_token_axis(self):
        """The older wrapper's [batch, 1, ...] query shapes as ekv's [batch, ...]."""
        if len(self.shape) >= 3 and self.shape[1] == 1:
            return Tensor(self.data, self.dtype, self.shape[:1] + self.shape[2:], self.strides[:1] + self.strides[2:],
                          self.device_type, self.device_id, self.keep)
        return self

    def descriptor(self, name, device_id=0):
        """An ekv_tensor for this tensor; device_id fills in where the object did not say."""
        if self.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {self.dtype}; supported: " + ", ".join(DTYPES))
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * ndim)(*self.shape)
        strides = (ctypes.c_int64 * ndim)(*self.strides)
        d = CTensor(self.data or None, DTYPES[self.dtype], ndim, shape, strides, self.device_type,
                    device_id if self.device_id is None else self.device_id)
        d._keep = (shape, strides, self.keep)  # the arrays the descriptor points to
        return d


def _element_strides(byte_strides, itemsize, name):
    if any(s % itemsize for s in byte_strides):
        raise ValueError(f"{name} has strides {tuple(byte_strides)} bytes, not whole {itemsize}-byte elements")
    return [s // itemsize for s in byte_strides]


def _row_major(shape):
    strides, stride = [], 1
    for n in reversed(shape):
        strides.append(stride)
        stride *= n
    return list(reversed(strides))


def _from_numpy(a, name, writable):
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is a read-only array; it receives output")
    return Tensor(a.ctypes.data, a.dtype.name, a.shape, _element_strides(a.strides, a.itemsize, name), CPU, 0, a)


def _from_torch(obj, name):
    """A torch tensor read from its own attributes: the interfaces below cost tens of
    microseconds a call, which a decode loop pays per layer and per argument."""
    device = obj.device
    if device.type == "cuda":
        device_type, device_id = CUDA, device.index
    elif device.type == "cpu":
        device_type, device_id = CPU, 0
    else:
        raise TypeError(f"{name} is a torch tensor on {device}; supported: cuda or cpu tensors")
    return Tensor(obj.data_ptr(), str(obj.dtype).rpartition(".")[2], tuple(obj.shape), tuple(obj.stride()),
                  device_type, device_id, obj)


def _is_torch_tensor(obj):
    cls = type(obj)
    return cls.__module__.startswith("torch") and hasattr(cls, "data_ptr") and hasattr(cls, "stride")


def _from_cuda_array_interface(obj, face, name, writable):
    data, readonly = face["data"]
    if writable and readonly:
        raise ValueError(f"{name} is read-only (__cuda_array_interface__); it receives output")
    dtype = np.dtype(face["typestr"])
    shape = tuple(face["shape"])
    strides = face.get("strides")
    strides = _row_major(shape) if strides is None else _element_strides(strides, dtype.itemsize, name)
    device = getattr(obj, "device", None)  # torch: .index, CuPy: .id; else the C side checks the pointer
    device_id = getattr(device, "index", getattr(device, "id", None))
    return Tensor(data, dtype.name, shape, strides, CUDA, device_id, obj)


def _from_dlpack(obj, name):
    device_type, device_id = obj.__dlpack_device__()
    # CUDA producers order their work before the legacy default stream (1), which ekv's GPU calls wait for
    capsule = obj.__dlpack__(stream=1) if device_type == CUDA else obj.__dlpack__()
    managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    t = managed.dl_tensor
    key = (t.dtype.code, t.dtype.bits)
    if t.dtype.lanes != 1 or key not in _DLPACK_DTYPES:
        raise TypeError(f"{name} has DLPack dtype code {t.dtype.code}, {t.dtype.bits} bits, {t.dtype.lanes} lanes; "
                        "supported: float32, float16, bfloat16")
    shape = [t.shape[i] for i in range(t.ndim)]
    strides = _row_major(shape) if not t.strides else [t.strides[i] for i in range(t.ndim)]
    # the capsule, unconsumed, frees the producer's DLManagedTensor when it is collected
    return Tensor((t.data or 0) + t.byte_offset, _DLPACK_DTYPES[key], shape, strides, t.device.device_type,
                  t.device.device_id, (obj, capsule))


def as_tensor(obj, name, writable=False):
    """The argument `name` (a numpy array, or an object with __cuda_array_interface__ or
    __dlpack__) as a Tensor; TypeError names the argument where it is none of them."""
    if isinstance(obj, np.ndarray):
        return _from_numpy(obj, name, writable)
    if _is_torch_tensor(obj):
        return _from_torch(obj, name)
    face = getattr(obj, "__cuda_array_interface__", None)  # a property: read once
    if face is not None:
        return _from_cuda_array_interface(obj, face, name, writable)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        return _from_dlpack(obj, name)
    raise TypeError(f"{name} is a {type(obj).__name__}; supported: a numpy array, or an array with "
                    "__cuda_array_interface__ or __dlpack__ (torch, CuPy)")
