#pragma once
// random_uniform_fill: fills device memory with uniform values from a counter-based hash,
// so benchmarks get fresh, never-zero data at memory speed instead of generating
// gigabytes on the host. Deterministic for a given seed; not for cryptography.

#include <cstddef>
#include <cstdint>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv::bench {
namespace detail {

// splitmix64 finaliser: consecutive counters give independent-looking 64-bit values
__device__ __forceinline__ std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <typename T>
__global__ void random_fill_kernel(T* __restrict__ dst, std::size_t n, float lo, float hi, std::uint64_t seed) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float u = static_cast<float>(mix64(seed ^ (i * 0xd1342543de82ef95ull)) >> 40) * (1.0f / 16777216.0f);
    dst[i] = DTypeTraits<T>::from_float(lo + (hi - lo) * u);
  }
}

}  // namespace detail

// Values uniform in [lo, hi), rounded to T. Stream-ordered, graph-capturable.
template <typename T>
void random_uniform_fill(Span<T> dst, float lo, float hi, std::uint64_t seed, const Stream& stream) {
  if (dst.empty()) return;
  if (dst.data() == nullptr || !(lo < hi)) {
    throw Error("random_uniform_fill: needs a non-null span and lo < hi");
  }
  constexpr int kCtaThreads = 256;
  const std::size_t ctas = (dst.size() + kCtaThreads - 1) / kCtaThreads;
  const int grid = static_cast<int>(ctas < 8192 ? ctas : 8192);
  detail::random_fill_kernel<T><<<grid, kCtaThreads, 0, stream.get()>>>(dst.data(), dst.size(), lo, hi, seed);
  check_launch("random_uniform_fill", stream.get());
}

}  // namespace ekv::bench
