#pragma once
// The read ceiling: the best of several read kernels measured in the run, not one probe.
// Decode attention is a read of the KV cache, and a ceiling below what some decode kernel
// reaches flatters every kernel measured against it. The candidates: read_reduce (16-byte
// loads into registers) at 256, 512 and 1024 threads per CTA x 2, 4, 8 and 16 loads in
// flight per thread x one resident wave (grid-stride) or one tile per CTA; the same loads
// with an L2 prefetch hint of 256 bytes (ld.global.nc.L2::256B) at three shapes; and
// bulk_read_reduce, Hopper's bulk copies (cp.async.bulk, the TMA's 1-D form) of 16 or
// 32 KiB chunks into 4 shared-memory stages per CTA, the way a TMA-fed decode reads.
// Every candidate sums what it reads (bandwidth_test checks the sums).

#include <cuda_runtime_api.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/bulk_copy.cuh"
#include "ekv/kernels/fill.cuh"
#include "harness/bandwidth.cuh"
#include "harness/statistics.hpp"
#include "harness/timer.cuh"

namespace ekv::bench {

inline constexpr int kBulkCtaThreads = 256;
inline constexpr int kBulkStages = 4;

namespace detail {

// CTA c sums chunks c, c + grid, ... of ChunkBytes each: thread 0 issues one bulk copy per
// chunk into a free stage, completing on that stage's mbarrier; every thread then adds up
// its share of the landed chunk and the stage is refilled once all have.
template <int ChunkBytes>
__global__ void __launch_bounds__(kBulkCtaThreads)
    bulk_read_reduce_kernel(const float* __restrict__ src, std::size_t chunks, float* __restrict__ partials) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char stages[];  // kBulkStages x ChunkBytes
  __shared__ __align__(8) std::uint64_t barriers[kBulkStages];
  if (threadIdx.x == 0) {
    for (int s = 0; s < kBulkStages; ++s) mbarrier_init(&barriers[s], 1);
    fence_proxy_async_shared();  // the async proxy sees the barriers
  }
  __syncthreads();
  const std::size_t mine = chunks > blockIdx.x ? (chunks - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const auto issue = [&](std::size_t i) {
    const int s = static_cast<int>(i % kBulkStages);
    const unsigned char* from = reinterpret_cast<const unsigned char*>(src) + (blockIdx.x + i * gridDim.x) * ChunkBytes;
    mbarrier_arrive_expect_tx(&barriers[s], ChunkBytes);
    bulk_copy_to_shared(stages + s * ChunkBytes, from, ChunkBytes, &barriers[s]);
  };
  if (threadIdx.x == 0) {
    for (std::size_t i = 0; i < kBulkStages && i < mine; ++i) issue(i);
  }
  float acc = 0.0f;
  for (std::size_t i = 0; i < mine; ++i) {
    const int s = static_cast<int>(i % kBulkStages);
    mbarrier_wait_parity(&barriers[s], static_cast<std::uint32_t>(i / kBulkStages) & 1u);
    const float4* chunk = reinterpret_cast<const float4*>(stages + s * ChunkBytes);
#pragma unroll 4
    for (int j = threadIdx.x; j < ChunkBytes / 16; j += kBulkCtaThreads) {
      const float4 x = chunk[j];
      acc += (x.x + x.y) + (x.z + x.w);
    }
    __syncthreads();  // every thread is done with stage s before it is refilled
    if (threadIdx.x == 0 && i + kBulkStages < mine) issue(i + kBulkStages);
  }
  using Reduce = cub::BlockReduce<float, kBulkCtaThreads>;
  __shared__ typename Reduce::TempStorage storage;
  acc = Reduce(storage).Sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
#endif
}

// One tile of CtaThreads x Unroll 16-byte loads per CTA, each load asking L2 to fetch the
// whole 256-byte sector group it falls in (.L2::256B), then summed.
template <int CtaThreads, int Unroll>
__global__ void __launch_bounds__(CtaThreads)
    read_prefetch_kernel(const float* __restrict__ src, std::size_t n, float* __restrict__ partials) {
  const std::size_t base = (static_cast<std::size_t>(blockIdx.x) * CtaThreads * Unroll + threadIdx.x) * 4;
  float4 r[Unroll];
#pragma unroll
  for (int u = 0; u < Unroll; ++u) {
    const std::size_t at = base + static_cast<std::size_t>(u) * CtaThreads * 4;
    if (at + 4 <= n) {
      asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.f32 {%0, %1, %2, %3}, [%4];"
                   : "=f"(r[u].x), "=f"(r[u].y), "=f"(r[u].z), "=f"(r[u].w)
                   : "l"(src + at));
    } else {
      r[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (std::size_t i = at; i < n && i < at + 4; ++i) (&r[u].x)[i - at] = src[i];
    }
  }
  float acc = 0.0f;
#pragma unroll
  for (int u = 0; u < Unroll; ++u) acc += (r[u].x + r[u].y) + (r[u].z + r[u].w);
  using Reduce = cub::BlockReduce<float, CtaThreads>;
  __shared__ typename Reduce::TempStorage storage;
  acc = Reduce(storage).Sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

}  // namespace detail

// CTAs read_prefetch_reduce launches over n floats: one per tile.
template <int CtaThreads, int Unroll>
std::size_t read_prefetch_ctas(std::size_t n) {
  constexpr std::size_t kTile = static_cast<std::size_t>(CtaThreads) * Unroll * 4;
  return (n + kTile - 1) / kTile;
}

// Sums src (16-byte aligned) into read_prefetch_ctas(src.size()) partials, one per CTA.
template <int CtaThreads, int Unroll>
void read_prefetch_reduce(Span<const float> src, Span<float> partials, const Stream& stream) {
  const std::size_t ctas = read_prefetch_ctas<CtaThreads, Unroll>(src.size());
  if (partials.size() < ctas || ctas > 0x7fffffffu || !is_aligned<16>(src.data())) {
    throw Error("read_prefetch_reduce: needs " + std::to_string(ctas) + " partials and 16-byte-aligned src");
  }
  if (ctas == 0) return;
  detail::read_prefetch_kernel<CtaThreads, Unroll>
      <<<static_cast<int>(ctas), CtaThreads, 0, stream.get()>>>(src.data(), src.size(), partials.data());
  check_launch("read_prefetch_reduce", stream.get());
}

// Sums the first whole ChunkBytes chunks of src (src.size() * 4 / ChunkBytes of them; the
// rest is not read) into partials.size() float partial sums, one per CTA. src must be
// 16-byte aligned; sm_90 or newer. Returns the bytes read. Stream-ordered, graph-capturable.
template <int ChunkBytes>
std::size_t bulk_read_reduce(Span<const float> src, Span<float> partials, const Stream& stream) {
  static_assert(ChunkBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
  if (partials.empty() || partials.size() > 0x7fffffffu || partials.data() == nullptr) {
    throw Error("bulk_read_reduce: needs 1 to 2^31-1 partials (one per CTA), got " + std::to_string(partials.size()));
  }
  if (!is_aligned<16>(src.data())) throw Error("bulk_read_reduce: src must be 16-byte aligned");
  const std::size_t chunks = src.size() * sizeof(float) / ChunkBytes;
  constexpr int kSmem = kBulkStages * ChunkBytes;
  if (kSmem > 48 * 1024) {
    EKV_CUDA_CHECK(cudaFuncSetAttribute(detail::bulk_read_reduce_kernel<ChunkBytes>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
                   "bulk_read_reduce: cannot opt in to " + std::to_string(kSmem) + " bytes of shared memory");
  }
  detail::bulk_read_reduce_kernel<ChunkBytes><<<static_cast<int>(partials.size()), kBulkCtaThreads, kSmem,
                                                stream.get()>>>(src.data(), chunks, partials.data());
  check_launch("bulk_read_reduce", stream.get());
  return chunks * ChunkBytes;
}

// One resident wave of bulk_read_reduce's CTAs on `device`.
template <int ChunkBytes>
int bulk_read_reduce_ctas(const DeviceInfo& device) {
  int per_sm = 0;
  const int smem = kBulkStages * ChunkBytes;
  if (smem > 48 * 1024) {
    EKV_CUDA_CHECK(cudaFuncSetAttribute(detail::bulk_read_reduce_kernel<ChunkBytes>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                   "bulk_read_reduce_ctas: cannot opt in to shared memory");
  }
  EKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, detail::bulk_read_reduce_kernel<ChunkBytes>,
                                                               kBulkCtaThreads, smem),
                 "bulk_read_reduce_ctas: cannot read the occupancy");
  return std::max(1, per_sm) * device.sm_count;
}

// The read kernels measured, and the best of them.
struct ReadCeiling {
  struct Kernel {
    std::string name;
    double bytes_per_s = 0;
  };
  std::vector<Kernel> kernels;
  double bytes_per_s = 0;  // the best
  std::string best;
  // DRAM's theoretical rate from the device's memory clock and bus width (0 where the
  // device does not report them): the vendor's figure, for comparison only
  double theoretical_bytes_per_s = 0;
};

inline double theoretical_read_bytes_per_s(int ordinal) {
  int clock_khz = 0, bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, ordinal) != cudaSuccess ||
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, ordinal) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;  // double data rate
}

namespace detail {

template <int CtaThreads, int Unroll>
void add_read_reduce(ReadCeiling& c, const DeviceBuffer<float>& src, const DeviceInfo& device, const Stream& stream,
                     const TimingOptions& timing) {
  const std::size_t n = src.size();
  const std::size_t tiles = n * sizeof(float) / (static_cast<std::size_t>(CtaThreads) * Unroll * 16);
  const int wave = read_reduce_ctas<float, CtaThreads, Unroll>(device, n);
  for (const bool persistent : {true, false}) {
    const int grid =
        persistent ? wave : static_cast<int>(std::min<std::size_t>(std::max<std::size_t>(tiles, 1), 1u << 30));
    DeviceBuffer<float> partials(static_cast<std::size_t>(grid));
    const Stats st = summarize(time_ms(stream, [&](const Stream& s) {
      read_reduce<float, CtaThreads, Unroll>(src.span(), partials.span(), s);
    }, timing));
    c.kernels.push_back({"read_reduce " + std::to_string(CtaThreads) + " threads x " + std::to_string(Unroll) +
                             " loads, " + (persistent ? "one wave" : "one tile per CTA"),
                         static_cast<double>(n * sizeof(float)) / (st.median * 1e-3)});
  }
}

template <int CtaThreads, int Unroll>
void add_read_prefetch(ReadCeiling& c, const DeviceBuffer<float>& src, const Stream& stream,
                       const TimingOptions& timing) {
  DeviceBuffer<float> partials(read_prefetch_ctas<CtaThreads, Unroll>(src.size()));
  const Stats st = summarize(time_ms(stream, [&](const Stream& s) {
    read_prefetch_reduce<CtaThreads, Unroll>(src.span(), partials.span(), s);
  }, timing));
  c.kernels.push_back({"read_reduce with L2::256B prefetch, " + std::to_string(CtaThreads) + " threads x " +
                           std::to_string(Unroll) + " loads, one tile per CTA",
                       static_cast<double>(src.size_bytes()) / (st.median * 1e-3)});
}

template <int ChunkBytes>
void add_bulk_read(ReadCeiling& c, const DeviceBuffer<float>& src, const DeviceInfo& device, const Stream& stream,
                   const TimingOptions& timing) {
  DeviceBuffer<float> partials(static_cast<std::size_t>(bulk_read_reduce_ctas<ChunkBytes>(device)));
  std::size_t bytes = 0;
  const Stats st = summarize(time_ms(stream, [&](const Stream& s) {
    bytes = bulk_read_reduce<ChunkBytes>(src.span(), partials.span(), s);
  }, timing));
  c.kernels.push_back({"bulk_read_reduce " + std::to_string(ChunkBytes / 1024) + " KiB chunks x " +
                           std::to_string(kBulkStages) + " stages, one wave",
                       static_cast<double>(bytes) / (st.median * 1e-3)});
}

}  // namespace detail

// Times every candidate over `bytes` (ceiling_buffer_bytes(): far past any L2) and keeps
// the best.
inline ReadCeiling measure_read_ceiling(const Stream& stream, std::size_t bytes) {
  const DeviceInfo device = DeviceInfo::current();
  DeviceBuffer<float> src(bytes / sizeof(float));
  fill<float>(src.span(), 1.0f, stream);
  TimingOptions timing;
  timing.warmup = 3;
  timing.repetitions = 20;
  ReadCeiling c;
  detail::add_read_reduce<256, 4>(c, src, device, stream, timing);
  detail::add_read_reduce<256, 8>(c, src, device, stream, timing);
  detail::add_read_reduce<256, 16>(c, src, device, stream, timing);
  detail::add_read_reduce<512, 2>(c, src, device, stream, timing);
  detail::add_read_reduce<512, 4>(c, src, device, stream, timing);
  detail::add_read_reduce<512, 8>(c, src, device, stream, timing);
  detail::add_read_reduce<1024, 2>(c, src, device, stream, timing);
  detail::add_read_reduce<1024, 4>(c, src, device, stream, timing);
  detail::add_read_reduce<1024, 8>(c, src, device, stream, timing);
  detail::add_read_prefetch<256, 16>(c, src, stream, timing);
  detail::add_read_prefetch<512, 8>(c, src, stream, timing);
  detail::add_read_prefetch<1024, 4>(c, src, stream, timing);
  if (device.cc_major >= 9) {
    detail::add_bulk_read<16 * 1024>(c, src, device, stream, timing);
    detail::add_bulk_read<32 * 1024>(c, src, device, stream, timing);
  }
  for (const auto& k : c.kernels) {
    if (k.bytes_per_s > c.bytes_per_s) {
      c.bytes_per_s = k.bytes_per_s;
      c.best = k.name;
    }
  }
  c.theoretical_bytes_per_s = theoretical_read_bytes_per_s(device.ordinal);
  return c;
}

}  // namespace ekv::bench
