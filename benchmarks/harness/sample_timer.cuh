#pragma once
// SampleTimer: one timed sample of GPU work, as a decode step finds its inputs: L2
// evicted first (outside the timed region), CUDA events around the work; a sample of
// several steps evicts before each of them.

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

  // Seconds of `steps` steps, issue_step(stream, i) for i = 0, 1, ...: each timed on its
  // own after its own L2 eviction, so that every step is cold as a decode step of a
  // model's layer finds it (timing the steps together after one eviction would let later
  // steps of a working set under the L2's size read from L2). The sum of the steps' times.
  template <typename IssueStep>
  double seconds_of_steps(const Stream& stream, int steps, IssueStep&& issue_step) {
    double total = 0;
    for (int i = 0; i < steps; ++i) total += seconds(stream, [&](const Stream& s) { issue_step(s, i); });
    return total;
  }

 private:
  std::optional<L2Flusher> flusher_;
  Event start_, stop_;
};

}  // namespace ekv::bench
