#pragma once
// merge_states: combines attention states computed over disjoint token sets (split-KV
// partitions, GPU and CPU parts of an offloaded cache) into one, through their LSE.
// merge_row_warp is the device-side piece the decode kernels reuse; merge_state_pair
// merges two states in the dtype and layout that decode writes (the hybrid GPU + CPU step).

#include <cstdint>
#include <string>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

// One warp merges the num_states states of one row: states_o float [num_states][head_dim],
// states_lse float [num_states] (natural log); head_dim a multiple of 4. Writes
// o [head_dim] and *lse. Empty states (lse = -inf) weigh nothing; only empty states give
// o = 0, lse = -inf (never NaN). Each lane owns 4 consecutive dimensions (one 16-byte
// load per state) and takes each state's weight from the lane that computed it by a
// shuffle, so the loads of 8 states are in flight at once. Loads bypass L1 (__ldcg):
// the states may come from other CTAs of the same launch, which L1 does not see.
template <typename T>
__device__ void merge_row_warp(const float* states_o, const float* states_lse, int num_states, int head_dim, T* o,
                               float* lse) {
  const int lane = threadIdx.x % 32;
  float mx = -INFINITY;
  for (int s = lane; s < num_states; s += 32) mx = fmaxf(mx, __ldcg(states_lse + s));
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.0f;
  if (mx != -INFINITY) {
    for (int s = lane; s < num_states; s += 32) sum += __expf(__ldcg(states_lse + s) - mx);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
  // every lane runs every iteration (the shuffles need the whole warp); lanes past
  // head_dim only skip their loads and stores
  for (int d0 = 0; d0 < head_dim; d0 += 128) {
    const int d = d0 + 4 * lane;
    const bool active = d < head_dim;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int base = 0; base < num_states && sum > 0.0f; base += 32) {
      const int s_mine = base + lane;
      const float w_mine = s_mine < num_states ? __expf(__ldcg(states_lse + s_mine) - mx) * inv_sum : 0.0f;
      const int n = min(32, num_states - base);
#pragma unroll 8
      for (int j = 0; j < n; ++j) {
        const float w = __shfl_sync(0xffffffffu, w_mine, j);
        if (active) {
          const float4 x =
              __ldcg(reinterpret_cast<const float4*>(states_o + static_cast<std::int64_t>(base + j) * head_dim + d));
          acc.x += w * x.x;
          acc.y += w * x.y;
          acc.z += w * x.z;
          acc.w += w * x.w;
        }
      }
    }
    if (active) {
      o[d] = DTypeTraits<T>::from_float(acc.x);
      o[d + 1] = DTypeTraits<T>::from_float(acc.y);
      o[d + 2] = DTypeTraits<T>::from_float(acc.z);
      o[d + 3] = DTypeTraits<T>::from_float(acc.w);
    }
  }
  if (lane == 0) *lse = sum > 0.0f ? mx + logf(sum) : -INFINITY;
}

namespace detail {

inline constexpr int kMergeWarps = 4;  // untuned: one row per warp

template <typename T>
__global__ void __launch_bounds__(kMergeWarps * 32)
    merge_states_kernel(const float* __restrict__ states_o, const float* __restrict__ states_lse, int rows,
                        int num_states, int head_dim, T* __restrict__ o, float* __restrict__ lse) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  if (row >= rows) return;
  merge_row_warp<T>(states_o + row * num_states * head_dim, states_lse + row * num_states, num_states, head_dim,
                    o + row * head_dim, lse + row);
}

// One thread per output element: the pair's weights are recomputed per element from two
// cached LSE loads, cheaper than sharing them for a merge this small.
template <typename T>
__global__ void merge_state_pair_kernel(const T* __restrict__ o_a, const float* __restrict__ lse_a,
                                        const T* __restrict__ o_b, const float* __restrict__ lse_b, std::int64_t rows,
                                        int head_dim, T* __restrict__ o, float* __restrict__ lse) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * head_dim) return;
  const std::int64_t row = i / head_dim;
  const float la = lse_a[row], lb = lse_b[row];
  const float top = fmaxf(la, lb);
  const bool first = i - row * head_dim == 0;
  if (top == -INFINITY) {  // both empty: no weights to normalise
    o[i] = DTypeTraits<T>::from_float(0.0f);
    if (first) lse[row] = -INFINITY;
    return;
  }
  const float wa = expf(la - top), wb = expf(lb - top);  // an empty state's exp(-inf) is 0
  const float sum = wa + wb;
  o[i] = DTypeTraits<T>::from_float((wa * DTypeTraits<T>::to_float(o_a[i]) + wb * DTypeTraits<T>::to_float(o_b[i])) /
                                    sum);
  if (first) lse[row] = top + logf(sum);
}

}  // namespace detail

// Merges two states of the same rows over disjoint token sets, each as run_decode and
// cpu_decode write one: o_a, o_b T [rows][head_dim], lse_a, lse_b float [rows] (natural
// log). Writes o T [rows][head_dim] and lse float [rows]; outputs must not overlap the
// inputs. An empty state (lse = -inf) weighs nothing; two give o = 0, lse = -inf.
// Stream-ordered, graph-capturable; throws ekv::Error on bad sizes or null pointers.
template <typename T>
void merge_state_pair(const T* o_a, const float* lse_a, const T* o_b, const float* lse_b, int rows, int head_dim,
                      T* o, float* lse, const Stream& stream) {
  if (rows < 0 || head_dim < 1) {
    throw Error("merge_state_pair: needs rows >= 0 and head_dim >= 1, got rows=" + std::to_string(rows) +
                ", head_dim=" + std::to_string(head_dim));
  }
  if (rows == 0) return;
  if (o_a == nullptr || lse_a == nullptr || o_b == nullptr || lse_b == nullptr || o == nullptr || lse == nullptr) {
    throw Error("merge_state_pair: null o_a, lse_a, o_b, lse_b, o or lse");
  }
  constexpr int kThreads = 256;  // untuned: a few thousand elements per decode step
  const std::int64_t elements = static_cast<std::int64_t>(rows) * head_dim;
  const auto grid = static_cast<unsigned>((elements + kThreads - 1) / kThreads);
  detail::merge_state_pair_kernel<T><<<grid, kThreads, 0, stream.get()>>>(o_a, lse_a, o_b, lse_b, rows, head_dim, o,
                                                                          lse);
  check_launch("merge_state_pair", stream.get());
}

// states_o: float [rows][num_states][head_dim], 16-byte aligned; states_lse: float [rows][num_states],
// natural log. Writes o: T [rows][head_dim] and lse: float [rows] (natural log).
// Stream-ordered, graph-capturable; throws ekv::Error on bad sizes.
template <typename T>
void merge_states(const float* states_o, const float* states_lse, int rows, int num_states, int head_dim, T* o,
                  float* lse, const Stream& stream) {
  if (rows < 0 || num_states < 1 || head_dim < 4 || head_dim % 4 != 0) {
    throw Error("merge_states: needs rows >= 0, num_states >= 1 and head_dim a positive multiple of 4, got rows=" +
                std::to_string(rows) + ", num_states=" + std::to_string(num_states) +
                ", head_dim=" + std::to_string(head_dim));
  }
  if (rows == 0) return;
  if (states_o == nullptr || states_lse == nullptr || o == nullptr || lse == nullptr) {
    throw Error("merge_states: null states_o, states_lse, o or lse");
  }
  if (reinterpret_cast<std::uintptr_t>(states_o) % 16 != 0) {
    throw Error("merge_states: states_o at address " + std::to_string(reinterpret_cast<std::uintptr_t>(states_o)) +
                " is not 16-byte aligned");
  }
  const int grid = (rows + detail::kMergeWarps - 1) / detail::kMergeWarps;
  detail::merge_states_kernel<T><<<grid, detail::kMergeWarps * 32, 0, stream.get()>>>(states_o, states_lse, rows,
                                                                                      num_states, head_dim, o, lse);
  check_launch("merge_states", stream.get());
}

}  // namespace ekv
