#pragma once
// Glue between Google Benchmark and GPU work: each iteration is timed with CUDA events
// (manual time), and throughput counters are computed from GPU time, because Google
// Benchmark's own rate counters divide by CPU time.

#include <benchmark/benchmark.h>

#include <cstdio>

#include "ekv/core/device.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "harness/ceilings.cuh"
#include "harness/l2_flush.cuh"

namespace ekv::bench {

// Measured once per run, before any benchmark, so every fraction in the report is of
// this device's ceilings in this run.
inline Ceilings& ceilings() {
  static Ceilings c;
  return c;
}

// Times issue(stream) once per iteration; returns total GPU seconds. With a flusher, L2
// is evicted before each iteration, outside the timed region (a decode step's inputs are
// cold in L2 when it runs). Any type with flush(stream) serves, e.g. one that also evicts
// the host's caches.
template <typename Issue, typename Flusher = L2Flusher>
double run_timed(benchmark::State& state, const Stream& stream, Issue&& issue, Flusher* flusher = nullptr) {
  Event start, stop;
  double total_s = 0;
  for (auto _ : state) {
    if (flusher != nullptr) flusher->flush(stream);
    start.record(stream);
    issue(stream);
    stop.record(stream);
    stop.synchronize();
    const double s = Event::elapsed_ms(start, stop) * 1e-3;
    state.SetIterationTime(s);
    total_s += s;
  }
  return total_s;
}

// bytes moved per iteration -> GB/s and fractions of the measured ceilings.
inline void report_bandwidth(benchmark::State& state, double bytes_per_iteration, double total_s) {
  const double bytes_per_s = bytes_per_iteration * static_cast<double>(state.iterations()) / total_s;
  state.counters["GB/s"] = bytes_per_s / 1e9;
  state.counters["of_read"] = bytes_per_s / ceilings().read_bytes_per_s;
  state.counters["of_copy"] = bytes_per_s / ceilings().copy_bytes_per_s;
  state.counters["of_memcpy"] = bytes_per_s / ceilings().memcpy_bytes_per_s;
}

// Shared main: skips (exit 0, saying so) without a GPU; measures the ceilings first.
inline int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (device_count() == 0) {
    std::printf("no CUDA GPU visible: GPU benchmarks skipped\n");
    return 0;
  }
  const DeviceInfo device = DeviceInfo::current();
  Stream stream;
  ceilings() = measure_ceilings(stream);
  benchmark::AddCustomContext("device", device.name);
  benchmark::AddCustomContext("read_GBps", std::to_string(ceilings().read_bytes_per_s / 1e9));
  benchmark::AddCustomContext("copy_GBps", std::to_string(ceilings().copy_bytes_per_s / 1e9));
  benchmark::AddCustomContext("memcpy_GBps", std::to_string(ceilings().memcpy_bytes_per_s / 1e9));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace ekv::bench
