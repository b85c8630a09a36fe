#pragma once
// FMA chains: the compute-throughput probe beside the bandwidth kernels, so a benchmark
// can place a kernel on the roofline between the two measured ceilings; the C API's
// ekv_compute_throughput times it too.

#include <cuda_fp16.h>

#include <cstddef>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

// untuned: 8 independent chains per thread hide the FMA pipeline latency (4 cycles) with
// room to spare at full occupancy.
inline constexpr int kFmaChains = 8;
inline constexpr int kFmaCtaThreads = 256;

template <typename T>
struct FmaLanes {
  static constexpr int kValue = 1;
};
template <>
struct FmaLanes<__half2> {
  static constexpr int kValue = 2;
};

namespace detail {

__host__ __device__ inline float lanes_from_float(float x, float) { return x; }
__host__ __device__ inline __half2 lanes_from_float(float x, __half2) { return __float2half2_rn(x); }

__device__ __forceinline__ float fma_step(float x, float a, float b) { return fmaf(x, a, b); }
__device__ __forceinline__ __half2 fma_step(__half2 x, __half2 a, __half2 b) { return __hfma2(x, a, b); }

// Chain c starts at start * (c + 1) and runs x = x * a + b `iterations` times; each
// thread writes the sum of its chains, in chain order, so nothing is optimised away.
template <typename T, int CtaThreads, int Chains>
__global__ void __launch_bounds__(CtaThreads)
    fma_chain_kernel(T* __restrict__ out, int iterations, T start, T a, T b) {
  T x[Chains];
#pragma unroll
  for (int c = 0; c < Chains; ++c) x[c] = start * lanes_from_float(static_cast<float>(c + 1), T{});
  for (int it = 0; it < iterations; ++it) {
#pragma unroll
    for (int c = 0; c < Chains; ++c) x[c] = fma_step(x[c], a, b);
  }
  T sum = x[0];
#pragma unroll
  for (int c = 1; c < Chains; ++c) sum = sum + x[c];
  out[static_cast<std::size_t>(blockIdx.x) * CtaThreads + threadIdx.x] = sum;
}

}  // namespace detail

// Launches out.size() / kFmaCtaThreads CTAs (out.size() must be a positive multiple of
// kFmaCtaThreads). Floating-point operations done: fma_chain_flops(out.size(), iterations).
template <typename T>
void fma_chains(Span<T> out, int iterations, T start, T a, T b, const Stream& stream) {
  if (out.empty() || out.size() % kFmaCtaThreads != 0 || iterations < 0 || out.data() == nullptr) {
    throw Error("fma_chains: needs a positive multiple of " + std::to_string(kFmaCtaThreads) +
                " outputs and iterations >= 0, got " + std::to_string(out.size()) + " outputs, " +
                std::to_string(iterations) + " iterations");
  }
  const std::size_t grid = out.size() / kFmaCtaThreads;
  detail::fma_chain_kernel<T, kFmaCtaThreads, kFmaChains>
      <<<static_cast<unsigned>(grid), kFmaCtaThreads, 0, stream.get()>>>(out.data(), iterations, start, a, b);
  check_launch("fma_chains", stream.get());
}

// Two flops (multiply and add) per lane per FMA.
template <typename T>
double fma_chain_flops(std::size_t threads, int iterations) {
  return 2.0 * FmaLanes<T>::kValue * kFmaChains * static_cast<double>(threads) * iterations;
}

}  // namespace ekv
