#pragma once
// Timing GPU work with CUDA events: warm-up, repetitions, optional CUDA Graph replay and
// an L2 flush before each sample, so a benchmark sees what a user's decode step sees.

#include <cstddef>
#include <optional>
#include <vector>

#include "ekv/core/device.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/core/stream.hpp"
#include "harness/l2_flush.cuh"

namespace ekv::bench {

struct TimingOptions {
  int warmup = 5;
  int repetitions = 30;
  bool graph = false;     // capture the work once and time graph replays
  bool flush_l2 = false;  // evict L2 before each sample (outside the timed region)
};

// Runs issue(stream) warmup times, then times `repetitions` samples, one event pair each.
// Returns milliseconds per sample, in issue order. Throws ekv::Error if the work fails.
template <typename Issue>
std::vector<double> time_ms(const Stream& stream, Issue&& issue, const TimingOptions& options = {}) {
  if (options.repetitions < 1 || options.warmup < 0) {
    throw Error("time_ms: needs repetitions >= 1 and warmup >= 0");
  }
  Graph graph;
  if (options.graph) graph = Graph::capture(stream, issue);
  auto run = [&] {
    if (options.graph) {
      graph.launch(stream);
    } else {
      issue(stream);
    }
  };
  std::optional<L2Flusher> flusher;
  if (options.flush_l2) flusher.emplace(DeviceInfo::current());
  for (int i = 0; i < options.warmup; ++i) {
    if (flusher) flusher->flush(stream);
    run();
  }
  std::vector<Event> starts(options.repetitions);
  std::vector<Event> stops(options.repetitions);
  for (int i = 0; i < options.repetitions; ++i) {
    if (flusher) flusher->flush(stream);
    starts[i].record(stream);
    run();
    stops[i].record(stream);
  }
  stream.synchronize();
  std::vector<double> samples(options.repetitions);
  for (int i = 0; i < options.repetitions; ++i) samples[i] = Event::elapsed_ms(starts[i], stops[i]);
  return samples;
}

}  // namespace ekv::bench
