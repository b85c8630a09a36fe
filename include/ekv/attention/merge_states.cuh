#pragma once
// merge_states: combines attention states computed over disjoint token sets (split-KV
// partitions, GPU and CPU parts of an offloaded cache) into one, through their LSE.

#include <cub/block/block_reduce.cuh>
#include <cuda/functional>

#include <cstdint>
#include <string>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

namespace detail {

inline constexpr int kMergeCtaThreads = 128;
inline constexpr int kMergeChunk = 256;  // states whose weights one pass keeps in shared memory

// One CTA per row. The states' weights exp(lse - max) / sum are computed cooperatively,
// a chunk at a time, into shared memory; then each thread sums its dimensions over the
// chunk with several loads in flight (a serial loop over states would wait one L2
// round trip per state: 15 us for 60 states on the H100, RESULTS.md). Empty states
// (lse = -inf) weigh nothing; a row of only empty states gives o = 0, lse = -inf.
template <typename T>
__global__ void __launch_bounds__(kMergeCtaThreads)
    merge_states_kernel(const float* __restrict__ states_o, const float* __restrict__ states_lse, int num_states,
                        int head_dim, T* __restrict__ o, float* __restrict__ lse) {
  using Reduce = cub::BlockReduce<float, kMergeCtaThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ float weights[kMergeChunk];
  __shared__ float row_max, row_sum;
  const std::int64_t row = blockIdx.x;
  const float* row_lse = states_lse + row * num_states;

  float mx = -INFINITY;
  for (int s = threadIdx.x; s < num_states; s += kMergeCtaThreads) mx = fmaxf(mx, row_lse[s]);
  mx = Reduce(reduce_storage).Reduce(mx, ::cuda::maximum<float>{});
  if (threadIdx.x == 0) row_max = mx;
  __syncthreads();
  mx = row_max;
  float sum = 0.0f;
  if (mx != -INFINITY) {
    for (int s = threadIdx.x; s < num_states; s += kMergeCtaThreads) sum += __expf(row_lse[s] - mx);
  }
  sum = Reduce(reduce_storage).Sum(sum);
  if (threadIdx.x == 0) row_sum = sum;
  __syncthreads();
  sum = row_sum;

  const float* row_o = states_o + row * num_states * head_dim;
  for (int d0 = 0; d0 < head_dim; d0 += kMergeCtaThreads) {
    const int d = d0 + threadIdx.x;
    float acc = 0.0f;
    for (int c = 0; c < num_states && sum > 0.0f; c += kMergeChunk) {
      const int n = min(kMergeChunk, num_states - c);
      __syncthreads();
      for (int s = threadIdx.x; s < n; s += kMergeCtaThreads) weights[s] = __expf(row_lse[c + s] - mx) / sum;
      __syncthreads();
      if (d < head_dim) {
#pragma unroll 8
        for (int s = 0; s < n; ++s) acc += weights[s] * row_o[static_cast<std::int64_t>(c + s) * head_dim + d];
      }
    }
    if (d < head_dim) o[row * head_dim + d] = DTypeTraits<T>::from_float(acc);
  }
  if (threadIdx.x == 0) lse[row] = sum > 0.0f ? mx + logf(sum) : -INFINITY;
}

}  // namespace detail

// states_o: float [rows][num_states][head_dim]; states_lse: float [rows][num_states],
// natural log. Writes o: T [rows][head_dim] and lse: float [rows] (natural log).
// Stream-ordered, graph-capturable; throws ekv::Error on bad sizes.
template <typename T>
void merge_states(const float* states_o, const float* states_lse, int rows, int num_states, int head_dim, T* o,
                  float* lse, const Stream& stream) {
  if (rows < 0 || num_states < 1 || head_dim < 1) {
    throw Error("merge_states: needs rows >= 0, num_states >= 1 and head_dim >= 1, got rows=" +
                std::to_string(rows) + ", num_states=" + std::to_string(num_states) +
                ", head_dim=" + std::to_string(head_dim));
  }
  if (rows == 0) return;
  detail::merge_states_kernel<T><<<rows, detail::kMergeCtaThreads, 0, stream.get()>>>(states_o, states_lse,
                                                                                      num_states, head_dim, o, lse);
  check_launch("merge_states", stream.get());
}

}  // namespace ekv
