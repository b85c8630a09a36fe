#pragma once
// merge_states: combines attention states computed over disjoint token sets (split-KV
// partitions, GPU and CPU parts of an offloaded cache) into one, through their LSE.

#include <cstdint>
#include <string>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

namespace detail {

// One CTA per row; threads stride over head_dim. Empty states (lse = -inf) weigh
// nothing, and a row of only empty states gives o = 0, lse = -inf (never NaN).
template <typename T>
__global__ void merge_states_kernel(const float* __restrict__ states_o, const float* __restrict__ states_lse,
                                    int num_states, int head_dim, T* __restrict__ o, float* __restrict__ lse) {
  const std::int64_t row = blockIdx.x;
  const float* row_lse = states_lse + row * num_states;
  float mx = -INFINITY;
  for (int s = 0; s < num_states; ++s) mx = fmaxf(mx, row_lse[s]);
  float den = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < num_states; ++s) den += __expf(row_lse[s] - mx);
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.0f;
    if (den > 0.0f) {
      for (int s = 0; s < num_states; ++s) {
        num += __expf(row_lse[s] - mx) * states_o[(row * num_states + s) * head_dim + d];
      }
    }
    o[row * head_dim + d] = DTypeTraits<T>::from_float(den > 0.0f ? num / den : 0.0f);
  }
  if (threadIdx.x == 0) lse[row] = den > 0.0f ? mx + logf(den) : -INFINITY;
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
  const int threads = head_dim < 128 ? head_dim : 128;
  detail::merge_states_kernel<T><<<rows, threads, 0, stream.get()>>>(states_o, states_lse, num_states, head_dim, o, lse);
  check_launch("merge_states", stream.get());
}

}  // namespace ekv
