"""The C API's failures as Python exceptions: each carries the ekv_status (status, its
name) and ekv_last_error()'s message, which names the function and the argument."""
from ._library import lib


class EkvError(RuntimeError):
    """A C API call failed; str() is ekv_last_error()."""

    def __init__(self, status, status_name, message):
        super().__init__(message)
        self.status, self.status_name, self.message = status, status_name, message


class InvalidArgumentError(EkvError, ValueError):
    """EKV_ERROR_INVALID_ARGUMENT: an argument ekv does not support (the message says which)."""


class NoDeviceError(EkvError):
    """EKV_ERROR_NO_DEVICE: the call needs a GPU and CUDA sees none."""


class OutOfMemoryError(EkvError, MemoryError):
    """EKV_ERROR_OUT_OF_MEMORY."""


class CudaError(EkvError):
    """EKV_ERROR_CUDA: the message carries CUDA's error name and string."""


class InternalError(EkvError):
    """EKV_ERROR_INTERNAL: a bug in ekv."""


_BY_STATUS = {1: InvalidArgumentError, 2: NoDeviceError, 3: OutOfMemoryError, 4: CudaError, 5: InternalError}


def last_error():
    """ekv_last_error(): the calling thread's last message, "" after a success."""
    return lib().ekv_last_error().decode()


def check(status):
    """Raises the exception of a failed call's status, with the thread's message."""
    if status != 0:
        name = lib().ekv_status_name(status).decode()
        raise _BY_STATUS.get(status, EkvError)(status, name, last_error())
