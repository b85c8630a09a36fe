#pragma once
// The device's own ceilings, measured in the run that reports against them: read-only
// bandwidth (the physical limit of decode attention), copy bandwidth (what users know)
// and FMA throughput. Never a datasheet constant.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>

#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/fill.cuh"
#include "harness/bandwidth.cuh"
#include "harness/fma_throughput.cuh"
#include "harness/read_ceiling.cuh"
#include "harness/statistics.hpp"
#include "harness/timer.cuh"

namespace ekv::bench {

// 4 GiB, or a quarter of free memory where less is free: far past any L2, so every byte
// comes from DRAM, and long enough that a launch's ramp and tail weigh under 1%.
inline std::size_t ceiling_buffer_bytes() {
  std::size_t free_bytes = 0, total_bytes = 0;
  EKV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), "ceiling_buffer_bytes: cannot query free memory");
  return std::min<std::size_t>(std::size_t{4} << 30, free_bytes / 4) / 256 * 256;
}

inline TimingOptions ceiling_timing() {
  TimingOptions options;
  options.warmup = 3;
  options.repetitions = 30;
  return options;
}

// Bytes per second of ekv::copy on a `bytes`-byte buffer, counting bytes read plus written.
inline double measure_copy_bandwidth(const Stream& stream, std::size_t bytes = 0) {
  if (bytes == 0) bytes = ceiling_buffer_bytes();
  const DeviceInfo device = DeviceInfo::current();
  const std::size_t n = bytes / sizeof(float);
  DeviceBuffer<float> src(n), dst(n);
  fill<float>(src.span(), 1.0f, stream);
  const Stats st = summarize(time_ms(stream, [&](const Stream& s) {
    copy<float>(src.span(), dst.span(), device, s);
  }, ceiling_timing()));
  return 2.0 * static_cast<double>(n * sizeof(float)) / (st.median * 1e-3);
}

// Bytes per second of cudaMemcpyAsync device to device, counted like measure_copy_bandwidth.
inline double measure_memcpy_bandwidth(const Stream& stream, std::size_t bytes = 0) {
  if (bytes == 0) bytes = ceiling_buffer_bytes();
  DeviceBuffer<unsigned char> src(bytes), dst(bytes);
  src.fill_bytes(1, stream);
  const Stats st = summarize(time_ms(stream, [&](const Stream& s) {
    EKV_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, s.get()),
                   "measure_memcpy_bandwidth: copy failed");
  }, ceiling_timing()));
  return 2.0 * static_cast<double>(bytes) / (st.median * 1e-3);
}

// The read ceiling (read_ceiling.cuh) over a `bytes`-byte buffer: every read kernel timed.
inline ReadCeiling measure_read_ceiling(const Stream& stream) {
  return measure_read_ceiling(stream, ceiling_buffer_bytes());
}

// Bytes per second of the best read kernel (measure_read_ceiling) on a `bytes`-byte buffer.
inline double measure_read_bandwidth(const Stream& stream, std::size_t bytes = 0) {
  return measure_read_ceiling(stream, bytes == 0 ? ceiling_buffer_bytes() : bytes).bytes_per_s;
}

// Floating-point operations per second of float FMA chains over a full wave of CTAs.
inline double measure_fma_throughput(const Stream& stream) {
  const DeviceInfo device = DeviceInfo::current();
  constexpr int kIterations = 4096;
  const std::size_t threads = static_cast<std::size_t>(full_wave_ctas(device, kFmaCtaThreads)) * 4 * kFmaCtaThreads;
  DeviceBuffer<float> out(threads);
  const Stats st = summarize(time_ms(stream, [&](const Stream& s) {
    fma_chains<float>(out.span(), kIterations, 1e-3f, 0.999f, 1e-3f, s);
  }, ceiling_timing()));
  return fma_chain_flops<float>(threads, kIterations) / (st.median * 1e-3);
}

// The three numbers every ekv benchmark reports against, measured together.
struct Ceilings {
  double read_bytes_per_s = 0;
  double copy_bytes_per_s = 0;
  double memcpy_bytes_per_s = 0;
};

inline Ceilings measure_ceilings(const Stream& stream) {
  return {measure_read_bandwidth(stream), measure_copy_bandwidth(stream), measure_memcpy_bandwidth(stream)};
}

}  // namespace ekv::bench
