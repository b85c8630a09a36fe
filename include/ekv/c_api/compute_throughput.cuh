#pragma once
// ekv_compute_throughput: FP32 FMA throughput as ekv's FMA chains
// (ekv/kernels/fma_chains.cuh) reach it.

#include <cstddef>

#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/caller_memory.hpp"
#include "ekv/core/error.hpp"
#include "ekv/c_api/gpu.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/fma_chains.cuh"

namespace ekv::capi {

// untuned: ten launches average out a single launch's start-up; c_api.h states the count
inline constexpr int kThroughputTimedLaunches = 10;
// The chains' constants, as c_api.h states them: |x| stays below 1 for any number of rounds.
inline constexpr float kChainStart = 1e-3f;
inline constexpr float kChainScale = 0.999f;
inline constexpr float kChainAdd = 1e-3f;

// Rounds of 8 chains that do at least `ops_per_element` flops (2 per FMA).
inline int fma_rounds(int ops_per_element) {
  constexpr int kFlopsPerRound = 2 * kFmaChains;
  return ops_per_element / kFlopsPerRound + (ops_per_element % kFlopsPerRound != 0);
}

inline void compute_throughput(float* data, int size, int ops_per_element, float* gflops) {
  require_pointer(data, "data", "room for size floats");
  require_pointer(gflops, "gflops", "a float");
  require_at_least(size, 1, "size");
  require_at_least(ops_per_element, 1, "ops_per_element");
  const int device = require_gpu();
  const int rounds = fma_rounds(ops_per_element);
  const auto n = static_cast<std::size_t>(size);
  // whole CTAs: fma_chains launches one thread per output
  const std::size_t threads = (n + kFmaCtaThreads - 1) / kFmaCtaThreads * kFmaCtaThreads;
  Stream stream;  // before the stream-ordered buffer, which it must outlive
  // the caller's array where it is on the device and whole CTAs fill it, else a padded one
  DeviceBuffer<float> padded;
  if (memory_kind(data, "data", device) == MemoryKind::kHost || threads != n) {
    padded = DeviceBuffer<float>(threads, stream);
  }
  const Span<float> chains = padded.empty() ? Span<float>(data, n) : padded.span();
  fma_chains<float>(chains, rounds, kChainStart, kChainScale, kChainAdd, stream);  // untimed
  Event start, stop;
  start.record(stream);
  for (int launch = 0; launch < kThroughputTimedLaunches; ++launch) {
    fma_chains<float>(chains, rounds, kChainStart, kChainScale, kChainAdd, stream);
  }
  stop.record(stream);
  stop.synchronize();
  const double ms = Event::elapsed_ms(start, stop);
  if (!padded.empty()) {
    EKV_CUDA_CHECK(cudaMemcpyAsync(data, padded.data(), n * sizeof(float), cudaMemcpyDefault, stream.get()),
                   "cannot copy the chain sums to data");
  }
  stream.synchronize();
  *gflops = static_cast<float>(fma_chain_flops<float>(threads, rounds) * kThroughputTimedLaunches / (ms * 1e-3) / 1e9);
}

}  // namespace ekv::capi
