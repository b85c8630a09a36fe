#pragma once
// Streaming kernels that measure the memory system: a copy (read + write; the library's,
// ekv/kernels/copy.cuh) and a read-only reduction, the physical ceiling of decode
// attention, which reads the whole KV cache and writes almost nothing.

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstddef>
#include <string>

#include "ekv/core/device.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/copy.cuh"
#include "ekv/kernels/vec.cuh"
#include "harness/grid.hpp"

namespace ekv::bench {

// The copy kernel lives in the library (ekv/kernels/copy.cuh), which the C API's
// ekv_mem_bandwidth times too; the harness keeps its names.
using ekv::copy;
using ekv::kCopyCtaThreads;
using ekv::kCopyUnroll;

// Launch shapes chosen on the H100 (RESULTS.md, "streaming kernels"): the best of the
// variants in benchmarks/kernels_bench, within 1% of each other.
inline constexpr int kReadCtaThreads = 1024;
inline constexpr int kReadUnroll = 4;

namespace detail {

template <typename T, int CtaThreads, int VecBytes, int Unroll>
__global__ void __launch_bounds__(CtaThreads)
    read_reduce_kernel(const T* __restrict__ src, std::size_t n, float* __restrict__ partials) {
  constexpr int kVec = kVecSize<T, VecBytes>;
  constexpr std::size_t kTile = static_cast<std::size_t>(CtaThreads) * Unroll;
  const std::size_t n_vec = n / kVec;
  float acc[Unroll] = {};
  std::size_t t = blockIdx.x;
  for (; (t + 1) * kTile <= n_vec; t += gridDim.x) {
    const std::size_t base = t * kTile + threadIdx.x;
    Vec<T, VecBytes> r[Unroll];
#pragma unroll
    for (int u = 0; u < Unroll; ++u) r[u] = load_stream<T, VecBytes>(src + (base + u * CtaThreads) * kVec);
#pragma unroll
    for (int u = 0; u < Unroll; ++u) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[u] += DTypeTraits<T>::to_float(r[u][e]);
    }
  }
  if (t == n_vec / kTile) {
    for (std::size_t i = t * kTile + threadIdx.x; i < n_vec; i += CtaThreads) {
      const auto r = load_stream<T, VecBytes>(src + i * kVec);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[0] += DTypeTraits<T>::to_float(r[e]);
    }
    for (std::size_t i = n_vec * kVec + threadIdx.x; i < n; i += CtaThreads) {
      acc[0] += DTypeTraits<T>::to_float(src[i]);
    }
  }
  float sum = 0.0f;
#pragma unroll
  for (int u = 0; u < Unroll; ++u) sum += acc[u];
  using Reduce = cub::BlockReduce<float, CtaThreads>;
  __shared__ typename Reduce::TempStorage storage;
  sum = Reduce(storage).Sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

using ekv::detail::check_span;

}  // namespace detail

// A CTA count for read_reduce: one full wave, or fewer where `n` is small.
template <typename T, int CtaThreads = kReadCtaThreads, int Unroll = kReadUnroll>
int read_reduce_ctas(const DeviceInfo& device, std::size_t n) {
  return streaming_grid(device, CtaThreads, n, static_cast<std::size_t>(CtaThreads) * Unroll * 16 / sizeof(T));
}

// Reads every element of src once and writes partials.size() float partial sums (one per
// CTA) whose total is the float sum of src. Stream-ordered, graph-capturable.
template <typename T, int CtaThreads = kReadCtaThreads, int Unroll = kReadUnroll>
void read_reduce(Span<const T> src, Span<float> partials, const Stream& stream) {
  detail::check_span("read_reduce: src", src);
  if (partials.empty() || partials.size() > 0x7fffffffu || partials.data() == nullptr) {
    throw Error("read_reduce: needs 1 to 2^31-1 partials (one per CTA), got " +
                std::to_string(partials.size()));
  }
  const int grid = static_cast<int>(partials.size());
  if (is_aligned<16>(src.data())) {
    detail::read_reduce_kernel<T, CtaThreads, 16, Unroll>
        <<<grid, CtaThreads, 0, stream.get()>>>(src.data(), src.size(), partials.data());
  } else {
    detail::read_reduce_kernel<T, CtaThreads, sizeof(T), Unroll>
        <<<grid, CtaThreads, 0, stream.get()>>>(src.data(), src.size(), partials.data());
  }
  check_launch("read_reduce", stream.get());
}

// The same bytes as one read_reduce, issued as `num_chunks` short launches (the shape of
// a decode step: one small kernel per layer), so launch overhead shows in the bandwidth.
// Chunk c writes partials [c * per_chunk, (c + 1) * per_chunk) with per_chunk =
// partials.size() / num_chunks.
template <typename T, int CtaThreads = kReadCtaThreads, int Unroll = kReadUnroll>
void read_reduce_chunks(Span<const T> src, std::size_t num_chunks, Span<float> partials,
                        const Stream& stream) {
  if (num_chunks == 0 || partials.size() < num_chunks) {
    throw Error("read_reduce_chunks: " + std::to_string(num_chunks) + " chunks need at least as " +
                "many partials, got " + std::to_string(partials.size()));
  }
  const std::size_t per_chunk = partials.size() / num_chunks;
  // whole vectors per chunk, so every chunk after the first stays 16-byte aligned
  constexpr std::size_t kVec = kVecSize<T, 16>;
  const std::size_t chunk = ((src.size() + num_chunks - 1) / num_chunks + kVec - 1) / kVec * kVec;
  for (std::size_t c = 0; c < num_chunks; ++c) {
    const std::size_t begin = std::min(src.size(), c * chunk);
    const std::size_t end = std::min(src.size(), begin + chunk);
    read_reduce<T, CtaThreads, Unroll>(src.subspan(begin, end - begin),
                                       partials.subspan(c * per_chunk, per_chunk), stream);
  }
}

}  // namespace ekv::bench
