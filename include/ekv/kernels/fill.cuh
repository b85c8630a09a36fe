#pragma once
// fill: sets every element of a device span to one value (typed, unlike a memset).

#include <cstddef>

#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {
namespace detail {

template <typename T>
__global__ void fill_kernel(T* __restrict__ dst, std::size_t n, T value) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = value;
  }
}

}  // namespace detail

// Stream-ordered, graph-capturable. Untuned: fills are for setup and poisoning, not hot paths.
template <typename T>
void fill(Span<T> dst, T value, const Stream& stream) {
  if (dst.empty()) return;
  if (dst.data() == nullptr) throw Error("fill: null pointer with " + std::to_string(dst.size()) + " elements");
  constexpr int kCtaThreads = 256;
  const std::size_t ctas = (dst.size() + kCtaThreads - 1) / kCtaThreads;
  const int grid = static_cast<int>(ctas < 4096 ? ctas : 4096);
  detail::fill_kernel<T><<<grid, kCtaThreads, 0, stream.get()>>>(dst.data(), dst.size(), value);
  check_launch("fill", stream.get());
}

}  // namespace ekv
