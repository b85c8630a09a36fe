#pragma once
// L2Flusher: evicts the L2 cache between timed samples, so GPU work is timed with its
// inputs in DRAM, as a decode step finds them.

#include <cstddef>

#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "harness/bandwidth.cuh"

namespace ekv::bench {

// Reads a buffer twice the L2's size. Reading, not writing: a write would leave L2 full
// of dirty lines whose write-back then competes with the timed work for DRAM bandwidth
// (on the H100 that inflated a 16 MB decode by several microseconds, RESULTS.md).
class L2Flusher {
 public:
  explicit L2Flusher(const DeviceInfo& device)
      : buffer_(2 * device.l2_cache_bytes / sizeof(float)),
        partials_(static_cast<std::size_t>(read_reduce_ctas<float>(device, buffer_.size()))) {
    Stream stream;
    buffer_.fill_bytes(0, stream);
    stream.synchronize();
  }
  void flush(const Stream& stream) { read_reduce<float>(buffer_.span(), partials_.span(), stream); }

 private:
  DeviceBuffer<float> buffer_;
  DeviceBuffer<float> partials_;
};

}  // namespace ekv::bench
