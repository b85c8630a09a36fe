#pragma once
// Programmatic dependent launch (sm_90+): a kernel launched with launch_dependent may be
// scheduled while the kernel before it on the stream still runs, so its launch and its
// CTAs' start overlap the other's tail instead of following its end. A decode step at
// batch 1 is a chain of short kernels (scoring, selection, decode), where those gaps are
// a large share of the step.
//
// The contract, on both sides: every kernel launched by launch_dependent calls
// wait_for_prior_grids() before its first global read or write (it returns once the
// kernels before it on the stream have finished and their writes are visible), and
// let_dependents_launch() to let the next one be scheduled early. Launched without the
// attribute (older devices, EKV_DEPENDENT_LAUNCH=0) both are no-ops, and the stream
// orders the kernels as usual. Captured into a CUDA Graph, the dependency becomes a
// programmatic edge with the same meaning.

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "ekv/core/error.hpp"

namespace ekv {

// Returns once every kernel this one depends on (the kernels before it on its stream)
// has completed and its memory is visible; at once where the launch was an ordinary one.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the kernel after this one on the stream be scheduled before this one ends (it
// still waits for this one's completion in wait_for_prior_grids).
__device__ __forceinline__ void let_dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

namespace detail {

// Whether programmatic dependent launch is on for this process: yes unless the
// environment says EKV_DEPENDENT_LAUNCH=0 (for profiling, or to measure what it gains).
inline bool dependent_launch_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("EKV_DEPENDENT_LAUNCH");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

// Whether `kernel` may be launched as a dependent on the current device: the device is
// sm_90 or newer, and the kernel's device code was generated for sm_90 or newer (below
// that the griddepcontrol instructions compile to nothing, so a dependent launch would
// race). Read once per kernel and device.
inline bool dependent_launch_allowed(const void* kernel) {
  if (!dependent_launch_enabled()) return false;
  int device = 0;
  EKV_CUDA_CHECK(cudaGetDevice(&device), "launch_dependent: no usable CUDA device");
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, bool> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find({kernel, device});
  if (found != known.end()) return found->second;
  int major = 0;
  EKV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                 "launch_dependent: cannot read the device's compute capability");
  cudaFuncAttributes attributes{};
  EKV_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel), "launch_dependent: cannot read the kernel's attributes");
  const bool allowed = major >= 9 && attributes.ptxVersion >= 90;
  known.emplace(std::make_pair(kernel, device), allowed);
  return allowed;
}

}  // namespace detail

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of
// the kernel before it on the stream where the device and the kernel's code allow it,
// else as an ordinary launch. The kernel must keep the contract above. Errors are the
// launch's, for check_launch to report.
template <typename... KernelArgs, typename... Args>
void launch_dependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  if (detail::dependent_launch_allowed(reinterpret_cast<const void*>(kernel))) {
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  // the error stays for check_launch (cudaGetLastError) to report with the caller's name
  static_cast<void>(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace ekv
