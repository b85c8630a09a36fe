#pragma once
// copy: the streaming device-to-device copy (read + write) that measures the memory
// system's copy bandwidth; the benchmark harness and the C API's ekv_mem_bandwidth time it.

#include <cstddef>
#include <string>

#include "ekv/core/device.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/streaming_grid.hpp"
#include "ekv/kernels/vec.cuh"

namespace ekv {

// Launch shapes chosen on the H100 (RESULTS.md, "streaming kernels"): the best of the
// variants in benchmarks/kernels_bench, within 1% of each other.
inline constexpr int kCopyCtaThreads = 1024;
inline constexpr int kCopyUnroll = 4;

namespace detail {

// Each CTA moves whole tiles of CtaThreads * Unroll contiguous vectors, tiles strided over
// the grid: Unroll independent 16-byte loads per thread are in flight before the first
// use, enough to cover HBM latency with one wave of CTAs (H100: RESULTS.md, "streaming
// kernels", tile layout 0.950 of cudaMemcpy against 0.945 for an interleaved layout).
template <typename T, int CtaThreads, int VecBytes, int Unroll>
__global__ void __launch_bounds__(CtaThreads)
    copy_kernel(const T* __restrict__ src, T* __restrict__ dst, std::size_t n) {
  constexpr int kVec = kVecSize<T, VecBytes>;
  constexpr std::size_t kTile = static_cast<std::size_t>(CtaThreads) * Unroll;
  const std::size_t n_vec = n / kVec;
  std::size_t t = blockIdx.x;
  for (; (t + 1) * kTile <= n_vec; t += gridDim.x) {
    const std::size_t base = t * kTile + threadIdx.x;
    Vec<T, VecBytes> r[Unroll];
#pragma unroll
    for (int u = 0; u < Unroll; ++u) r[u] = load_stream<T, VecBytes>(src + (base + u * CtaThreads) * kVec);
#pragma unroll
    for (int u = 0; u < Unroll; ++u) store_stream<T, VecBytes>(dst + (base + u * CtaThreads) * kVec, r[u]);
  }
  // exactly one CTA leaves the loop at the partial tile: it copies the rest
  if (t == n_vec / kTile) {
    for (std::size_t i = t * kTile + threadIdx.x; i < n_vec; i += CtaThreads) {
      store_stream<T, VecBytes>(dst + i * kVec, load_stream<T, VecBytes>(src + i * kVec));
    }
    for (std::size_t i = n_vec * kVec + threadIdx.x; i < n; i += CtaThreads) dst[i] = src[i];
  }
}

template <typename T>
void check_span(const char* what, Span<const T> s) {
  if (s.data() == nullptr && !s.empty()) {
    throw Error(std::string(what) + ": null pointer with " + std::to_string(s.size()) + " elements");
  }
}

}  // namespace detail

// dst[i] = src[i] for every i < src.size(); dst must hold at least as many elements and
// must not overlap src. Bytes moved: 2 * src.size_bytes() (each element read once and
// written once). Throws ekv::Error on a null span or a short destination. Stream-ordered,
// graph-capturable.
template <typename T, int CtaThreads = kCopyCtaThreads, int Unroll = kCopyUnroll>
void copy(Span<const T> src, Span<T> dst, const DeviceInfo& device, const Stream& stream) {
  detail::check_span("copy: src", src);
  detail::check_span<T>("copy: dst", dst);
  if (dst.size() < src.size()) {
    throw Error("copy: destination holds " + std::to_string(dst.size()) + " elements, source " +
                std::to_string(src.size()));
  }
  if (src.empty()) return;
  const bool vector = is_aligned<16>(src.data()) && is_aligned<16>(dst.data());
  const std::size_t per_cta = static_cast<std::size_t>(CtaThreads) * Unroll * 16 / sizeof(T);
  const int grid = streaming_grid(device, CtaThreads, src.size(), per_cta);
  if (vector) {
    detail::copy_kernel<T, CtaThreads, 16, Unroll>
        <<<grid, CtaThreads, 0, stream.get()>>>(src.data(), dst.data(), src.size());
  } else {
    detail::copy_kernel<T, CtaThreads, sizeof(T), Unroll>
        <<<grid, CtaThreads, 0, stream.get()>>>(src.data(), dst.data(), src.size());
  }
  check_launch("copy", stream.get());
}

}  // namespace ekv
