#pragma once
// A GPU test's check that memory came back: ekv's own accounting of what its DeviceBuffers
// hold in this process (exact), and the device's free bytes (cudaMemGetInfo, which also
// sees what the runtime and driver keep, but counts every process on the GPU). The second
// holds only where the test has the GPU to itself: EKV_TEST_SHARED_GPU (set by
// .ci/sanitize-gpu, which runs several test binaries on the one GPU at once) leaves it out,
// and compute-sanitizer's leak check stands in for it there.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdlib>

#include "ekv/core/allocation.hpp"
#include "ekv/core/error.hpp"

namespace ekv::test {

inline bool gpu_is_shared() { return std::getenv("EKV_TEST_SHARED_GPU") != nullptr; }

inline std::size_t free_device_bytes() {
  std::size_t free_bytes = 0, total = 0;
  EKV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  return free_bytes;
}

struct DeviceMemory {
  long long held = 0;          // ekv::testing::device_bytes_held()
  std::size_t free_bytes = 0;  // the device's, 0 where the GPU is shared
};

inline DeviceMemory device_memory() {
  return {ekv::testing::device_bytes_held(), gpu_is_shared() ? 0 : free_device_bytes()};
}

// Whether what was held before is all that is held now, and the device's free bytes are
// back within `slack` (the allocator's granularity, the driver's own pages).
inline bool device_memory_back(const DeviceMemory& before, std::size_t slack) {
  const DeviceMemory now = device_memory();
  return now.held == before.held && (gpu_is_shared() || now.free_bytes + slack >= before.free_bytes);
}

}  // namespace ekv::test
