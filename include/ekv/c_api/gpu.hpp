#pragma once
// require_gpu: the device a C API call runs on (the calling thread's current one), or
// EKV_ERROR_NO_DEVICE where CUDA sees none.

#include <cuda_runtime_api.h>

#include <string>

#include "ekv/c_api.h"
#include "ekv/c_api/status.hpp"
#include "ekv/core/error.hpp"

namespace ekv::capi {

inline int require_gpu() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();
    const std::string code = std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
    if (status_of(error) == EKV_ERROR_NO_DEVICE) {
      throw StatusError(EKV_ERROR_NO_DEVICE, "no CUDA device (cudaGetDeviceCount: " + code + ")");
    }
    throw StatusError(EKV_ERROR_CUDA, "CUDA cannot count its devices (cudaGetDeviceCount: " + code + ")");
  }
  if (count == 0) throw StatusError(EKV_ERROR_NO_DEVICE, "no CUDA device (cudaGetDeviceCount found 0)");
  int device = 0;
  EKV_CUDA_CHECK(cudaGetDevice(&device), "cannot read the calling thread's current device");
  return device;
}

}  // namespace ekv::capi
