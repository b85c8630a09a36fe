#pragma once
// SampleTimer: one timed sample of GPU work, as a decode step finds its inputs: L2
// evicted first (outside the timed region), CUDA events around the work.

#include <optional>

#include "ekv/core/device.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "harness/l2_flush.cuh"

namespace ekv::bench {

class SampleTimer {
 public:
  explicit SampleTimer(const DeviceInfo& device, bool flush_l2 = true) {
    if (flush_l2) flusher_.emplace(device);
  }

  // Seconds of issue(stream), waited for. Throws ekv::Error if the work fails.
  template <typename Issue>
  double seconds(const Stream& stream, Issue&& issue) {
    if (flusher_) flusher_->flush(stream);
    start_.record(stream);
    issue(stream);
    stop_.record(stream);
    stop_.synchronize();
    return Event::elapsed_ms(start_, stop_) * 1e-3;
  }

 private:
  std::optional<L2Flusher> flusher_;
  Event start_, stop_;
};

}  // namespace ekv::bench
