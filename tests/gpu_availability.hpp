#pragma once
// Whether GPU tests run, skip or fail. They skip only where the machine has no GPU: CUDA
// says there is no device, or there is no driver at all (cudaGetDeviceCount says the
// driver is insufficient and libcuda.so.1 cannot be loaded). Any other answer (a driver
// older than the runtime, a broken installation, a device that fails to initialise) is a
// failure, so a GPU machine with a broken CUDA setup never reports its tests as skipped.

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <string>

namespace ekv::test {

enum class GpuVerdict { kRun, kSkip, kFail };

// What the machine answered.
struct GpuProbe {
  cudaError_t error = cudaSuccess;  // of cudaGetDeviceCount
  int count = 0;                    // devices, when error is cudaSuccess
  bool driver_loadable = false;     // whether libcuda.so.1 (the driver's library) loads
};

struct GpuDecision {
  GpuVerdict verdict = GpuVerdict::kRun;
  std::string why;
};

inline GpuDecision classify_gpu_probe(const GpuProbe& p) {
  if (p.error == cudaSuccess) {
    if (p.count > 0) return {GpuVerdict::kRun, std::to_string(p.count) + " CUDA device(s)"};
    return {GpuVerdict::kSkip, "no CUDA device (cudaGetDeviceCount found 0)"};
  }
  const std::string code = std::string(cudaGetErrorName(p.error)) + " (" + std::to_string(static_cast<int>(p.error)) +
                           "): " + cudaGetErrorString(p.error);
  if (p.error == cudaErrorNoDevice) return {GpuVerdict::kSkip, "no CUDA device: " + code};
  if (p.error == cudaErrorInsufficientDriver && !p.driver_loadable) {
    return {GpuVerdict::kSkip, "no CUDA driver (libcuda.so.1 does not load): " + code};
  }
  return {GpuVerdict::kFail, "CUDA is broken on this machine, not absent: " + code};
}

inline GpuProbe probe_gpu() {
  GpuProbe p;
  p.error = cudaGetDeviceCount(&p.count);
  if (p.error != cudaSuccess) cudaGetLastError();
  if (void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
    p.driver_loadable = true;
    dlclose(driver);
  }
  return p;
}

}  // namespace ekv::test
