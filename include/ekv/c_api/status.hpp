#pragma once
// The C boundary's failures: StatusError (a failure with its ekv_status), the calling
// thread's message behind ekv_last_error(), and guarded(), which runs a C function's body
// and turns whatever it throws into a status, so that nothing crosses into C.

#include <cuda_runtime_api.h>

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "ekv/c_api.h"
#include "ekv/core/error.hpp"

namespace ekv::capi {

// What the C API's own checks throw: the status the caller gets and the sentence for
// ekv_last_error().
class StatusError : public std::runtime_error {
 public:
  StatusError(ekv_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  ekv_status status() const noexcept { return status_; }

 private:
  ekv_status status_;
};

inline std::string& last_error() noexcept {
  static thread_local std::string message;
  return message;
}

inline const char* status_name(ekv_status status) noexcept {
  switch (status) {
    case EKV_SUCCESS: return "EKV_SUCCESS";
    case EKV_ERROR_INVALID_ARGUMENT: return "EKV_ERROR_INVALID_ARGUMENT";
    case EKV_ERROR_NO_DEVICE: return "EKV_ERROR_NO_DEVICE";
    case EKV_ERROR_OUT_OF_MEMORY: return "EKV_ERROR_OUT_OF_MEMORY";
    case EKV_ERROR_CUDA: return "EKV_ERROR_CUDA";
    case EKV_ERROR_INTERNAL: return "EKV_ERROR_INTERNAL";
  }
  return "unknown ekv_status";
}

// A CUDA failure's status: the two codes that mean "no GPU here" (as tests/
// gpu_availability.hpp reads them), allocation, and everything else.
inline ekv_status status_of(cudaError_t code) noexcept {
  switch (code) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver: return EKV_ERROR_NO_DEVICE;
    case cudaErrorMemoryAllocation: return EKV_ERROR_OUT_OF_MEMORY;
    default: return EKV_ERROR_CUDA;
  }
}

namespace detail {

inline ekv_status fail(ekv_status status, const char* function, const char* what) noexcept {
  try {
    last_error() = std::string(function) + ": " + what;
  } catch (...) {
    last_error().clear();  // no memory left for the sentence; the status still says what
  }
  return status;
}

}  // namespace detail

// Runs body() for the C function `function`: EKV_SUCCESS with an empty message, or the
// status of what it threw with "<function>: <reason>" as the calling thread's message.
// ekv::Error without a CUDA code is a rejected argument (ekv's host checks throw nothing
// else without one).
template <typename Body>
ekv_status guarded(const char* function, Body&& body) noexcept {
  last_error().clear();
  try {
    body();
    return EKV_SUCCESS;
  } catch (const StatusError& e) {
    return detail::fail(e.status(), function, e.what());
  } catch (const Error& e) {
    return detail::fail(e.code() == cudaSuccess ? EKV_ERROR_INVALID_ARGUMENT : status_of(e.code()), function,
                        e.what());
  } catch (const std::bad_alloc&) {
    return detail::fail(EKV_ERROR_OUT_OF_MEMORY, function, "out of host memory");
  } catch (const std::exception& e) {
    return detail::fail(EKV_ERROR_INTERNAL, function, e.what());
  } catch (...) {
    return detail::fail(EKV_ERROR_INTERNAL, function, "an exception that is not a std::exception");
  }
}

}  // namespace ekv::capi
