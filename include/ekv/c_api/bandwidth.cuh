#pragma once
// ekv_mem_bandwidth and ekv_mem_bandwidth_batched: device memory bandwidth as ekv's
// streaming copy (ekv/kernels/copy.cuh) reaches it, in one timed span or in batches.

#include <cstddef>
#include <vector>

#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/caller_memory.hpp"
#include "ekv/c_api/gpu.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/copy.cuh"

namespace ekv::capi {

// `num_batches` batches of `copies_per_batch` copies of input to output, each batch between
// two events and followed by a synchronisation, after one untimed copy; GB/s of bytes read
// plus written over the batches' summed time. The checks are the callers'.
inline float copy_bandwidth_gbps(float* input, float* output, int size, int copies_per_batch, int num_batches) {
  const int device = require_gpu();
  const DeviceInfo info = DeviceInfo::query(device);
  const auto n = static_cast<std::size_t>(size);
  Stream stream;  // before the stream-ordered buffers, which it must outlive
  DeviceSide<float> src(input, n, "input", device, stream);
  DeviceSide<float> dst(output, n, "output", device, stream);
  src.copy_in(n, stream);
  copy<float>(src.span(), dst.span(), info, stream);  // untimed: first-touch and launch setup
  Event start, stop;
  double total_ms = 0;
  for (int batch = 0; batch < num_batches; ++batch) {
    start.record(stream);
    for (int c = 0; c < copies_per_batch; ++c) copy<float>(src.span(), dst.span(), info, stream);
    stop.record(stream);
    stop.synchronize();
    total_ms += Event::elapsed_ms(start, stop);
  }
  dst.copy_out(n, stream);
  stream.synchronize();
  const double bytes = 2.0 * sizeof(float) * static_cast<double>(n) * copies_per_batch * num_batches;
  return static_cast<float>(bytes / (total_ms * 1e-3) / 1e9);
}

inline void check_copy_arguments(const float* input, const float* output, int size, const float* gbps) {
  require_pointer(input, "input", "size floats");
  require_pointer(output, "output", "room for size floats");
  require_pointer(gbps, "gbps", "a float");
  require_at_least(size, 1, "size");
}

inline void mem_bandwidth(float* input, float* output, int size, int iterations, float* gbps) {
  check_copy_arguments(input, output, size, gbps);
  require_at_least(iterations, 1, "iterations");
  *gbps = copy_bandwidth_gbps(input, output, size, iterations, 1);
}

inline void mem_bandwidth_batched(float* input, float* output, int size, int iters_per_launch, int num_launches,
                                  float* gbps) {
  check_copy_arguments(input, output, size, gbps);
  require_at_least(iters_per_launch, 1, "iters_per_launch");
  require_at_least(num_launches, 1, "num_launches");
  int_product(iters_per_launch, "iters_per_launch", num_launches, "num_launches", "the copies count in int");
  *gbps = copy_bandwidth_gbps(input, output, size, iters_per_launch, num_launches);
}

}  // namespace ekv::capi
