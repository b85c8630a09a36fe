#pragma once
// ekv_get_device_info: the current device as ekv::DeviceInfo reads it, and, where asked,
// its copy and host-to-device bandwidths measured now (ekv_mem_bandwidth's copy kernel,
// and cudaMemcpyAsync from pinned memory).

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "ekv/c_api.h"
#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/bandwidth.cuh"
#include "ekv/c_api/gpu.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/stream.hpp"

namespace ekv::capi {

// Bytes each measurement moves per transfer: 4x the L2 cache, so that copies reach DRAM,
// and at least 64 MiB (untuned).
inline std::size_t measured_bytes(const DeviceInfo& info) {
  return std::max<std::size_t>(4 * info.l2_cache_bytes, std::size_t{64} << 20);
}
inline constexpr int kMeasuredRuns = 10;  // timed transfers per figure, after one untimed (untuned)

// GB/s of kMeasuredRuns copies of `bytes` from pinned host memory to the device.
inline float host_to_device_gbps(std::size_t bytes) {
  Stream stream;
  PinnedBuffer<unsigned char> host(bytes);
  DeviceBuffer<unsigned char> device(bytes);
  std::memset(host.data(), 0, bytes);
  const auto copy_once = [&] {
    EKV_CUDA_CHECK(cudaMemcpyAsync(device.data(), host.data(), bytes, cudaMemcpyHostToDevice, stream.get()),
                   "ekv_get_device_info: host-to-device copy");
  };
  copy_once();  // untimed
  Event start, stop;
  start.record(stream);
  for (int i = 0; i < kMeasuredRuns; ++i) copy_once();
  stop.record(stream);
  stop.synchronize();
  return static_cast<float>(static_cast<double>(bytes) * kMeasuredRuns / (Event::elapsed_ms(start, stop) * 1e-3) /
                            1e9);
}

inline void get_device_info(ekv_device_info* out, int measure_bandwidth) {
  require_pointer(out, "info", "an ekv_device_info");
  const int device = require_gpu();
  const DeviceInfo info = DeviceInfo::query(device);
  *out = ekv_device_info{};
  const std::size_t length = std::min(info.name.size(), sizeof out->name - 1);
  std::memcpy(out->name, info.name.data(), length);
  out->device = device;
  out->compute_major = info.cc_major;
  out->compute_minor = info.cc_minor;
  out->sm_count = info.sm_count;
  out->max_threads_per_sm = info.max_threads_per_sm;
  out->memory_bus_width_bits = info.memory_bus_width_bits;
  out->global_memory_bytes = info.global_memory_bytes;
  out->l2_cache_bytes = info.l2_cache_bytes;
  out->shared_memory_per_sm_bytes = info.shared_memory_per_sm_bytes;
  out->shared_memory_per_cta_optin_bytes = info.shared_memory_per_cta_optin_bytes;
  if (measure_bandwidth == 0) return;
  const std::size_t bytes = measured_bytes(info);
  DeviceBuffer<float> input(bytes / sizeof(float)), output(bytes / sizeof(float));
  {  // zeros: a copy's speed does not depend on the values it moves, but reading memory never written is undefined
    const Stream stream;
    input.fill_bytes(0, stream);
    stream.synchronize();
  }
  out->copy_gbps = copy_bandwidth_gbps(input.data(), output.data(), static_cast<int>(input.size()), kMeasuredRuns, 1);
  out->host_to_device_gbps = host_to_device_gbps(bytes);
}

}  // namespace ekv::capi
