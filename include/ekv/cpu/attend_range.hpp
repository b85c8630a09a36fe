#pragma once
// attend_range: one thread's attention for the query heads of one GQA group over a token
// range of one (sequence, kv head), with an online softmax in float. Each K and V row is
// read from memory once for the whole group. cpu_decode runs it once per work item.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/cpu/exp.hpp"
#include "ekv/cpu/group_tile.hpp"
#include "ekv/cpu/quant_rows.hpp"
#include "ekv/cpu/row_ops.hpp"

namespace ekv {

// A group's running attention state and the scratch it is computed in. One per thread,
// reused across work items: it allocates only when the shape grows.
struct AttendState {
  int group = 0;
  int head_dim = 0;
  std::vector<float> q;       // [group][head_dim], times the softmax scale
  std::vector<float> acc;     // [group][head_dim]: sum of p * v, not yet divided by `sum`
  std::vector<float> max;     // [group]: the largest score so far
  std::vector<float> sum;     // [group]: sum of exp(score - max)
  std::vector<float> rescale; // [group]: the tile's factor for acc, exp(old max - new max)
  std::vector<float> scores;  // [group][kAttendTileTokens]
  // [kAttendTileTokens][head_dim]: K and V widened by the portable tile kernels (unused by
  // the AVX2 ones, and for float)
  std::vector<float> k_wide;
  std::vector<float> v_wide;
  // [kAttendTileTokens][head_dim]: a quantized view's K and V rows, dequantized
  std::vector<float> k_rows;
  std::vector<float> v_rows;

  // Starts an empty state for q [group][head_dim] (consecutive query heads).
  template <typename T>
  void begin(const T* q_in, int group_in, int head_dim_in, float scale) {
    group = group_in;
    head_dim = head_dim_in;
    const std::size_t row = static_cast<std::size_t>(head_dim);
    q.resize(group * row);
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = DTypeTraits<T>::to_float(q_in[i]) * scale;
    acc.assign(group * row, 0.0f);
    max.assign(group, -std::numeric_limits<float>::infinity());
    sum.assign(group, 0.0f);
    rescale.resize(group);
    scores.resize(static_cast<std::size_t>(group) * kAttendTileTokens);
    k_wide.resize(kAttendTileTokens * row);
    v_wide.resize(kAttendTileTokens * row);
  }

  // Writes head g's o = acc / sum to o + g * o_stride (Out: T or float) and its
  // lse = max + log(sum) to lse[g * lse_stride]. No token gives o = 0, lse = -inf.
  template <typename Out>
  void write(Out* o, std::int64_t o_stride, float* lse, std::int64_t lse_stride) const {
    for (int g = 0; g < group; ++g) {
      const float inv = sum[g] > 0.0f ? 1.0f / sum[g] : 0.0f;
      const float* a = &acc[static_cast<std::size_t>(g) * head_dim];
      Out* out = o + g * o_stride;
      for (int i = 0; i < head_dim; ++i) out[i] = DTypeTraits<Out>::from_float(a[i] * inv);
      lse[g * lse_stride] = sum[g] > 0.0f ? max[g] + std::log(sum[g]) : -std::numeric_limits<float>::infinity();
    }
  }
};

namespace detail {

// Folds one tile of n tokens, rows k_rows and v_rows [n] in type T, into `state`.
template <typename T>
void attend_tile(const T* const* k_rows, const T* const* v_rows, int n, int d, AttendState& state) {
  constexpr int kTile = kAttendTileTokens;
  tile_scores(state.q.data(), state.group, k_rows, n, d, state.scores.data(), kTile, state.k_wide.data());
  for (int g = 0; g < state.group; ++g) {
    float* s = &state.scores[static_cast<std::size_t>(g) * kTile];
    const float tile_max = max_row(s, n);
    const float new_max = std::max(state.max[g], tile_max);
    state.rescale[g] = std::exp(state.max[g] - new_max);  // 0 for the first tile
    state.sum[g] = state.sum[g] * state.rescale[g] + exp_row(s, n, new_max);
    state.max[g] = new_max;
  }
  tile_accumulate(state.acc.data(), state.rescale.data(), state.scores.data(), kTile, state.group, v_rows, n, d,
                  state.v_wide.data());
}

}  // namespace detail

// Adds tokens [begin, end) of (seq, kv_head) to `state` (begun with the group's q).
// head_dim a multiple of 8; the tokens must lie within the view.
template <typename T>
void attend_range(const KVView<T>& kv, int seq, int kv_head, int begin, int end, AttendState& state) {
  constexpr int kTile = kAttendTileTokens;
  const int d = kv.head_dim;
  // Rows of the next tile are requested while this one computes where the hardware
  // prefetcher cannot find them: a row that does not follow the one before it (a block
  // table's jump, the range's first row) and the kPrefetchAfterJump rows after it, until the
  // hardware's stream picks up. Rows that follow each other are left to the hardware: asking
  // for them too costs more than it gains (benchmarks/RESULTS.md, CPU decode on 2 cores).
  constexpr int kPrefetchAfterJump = 4;
  std::int64_t offsets[2][kTile];
  std::int64_t next_row = -1;  // where a row following the last one located would start
  int prefetch_left = 0;
  auto locate = [&](int t0, std::int64_t* off) {
    const int n = std::min(kTile, end - t0);
    for (int t = 0; t < n; ++t) {
      off[t] = kv.offset(seq, kv_head, t0 + t);
      if (off[t] != next_row) prefetch_left = kPrefetchAfterJump + 1;
      next_row = off[t] + d;
      if (prefetch_left > 0) {
        --prefetch_left;
        prefetch_row(kv.k + off[t], d);
        prefetch_row(kv.v + off[t], d);
      }
    }
    return n;
  };
  const T* k_rows[kTile];
  const T* v_rows[kTile];
  int n_next = begin < end ? locate(begin, offsets[0]) : 0;
  for (int t0 = begin, cur = 0; t0 < end; t0 += kTile, cur ^= 1) {
    const int n = n_next;
    const std::int64_t* off = offsets[cur];
    if (t0 + kTile < end) n_next = locate(t0 + kTile, offsets[cur ^ 1]);
    for (int t = 0; t < n; ++t) {
      k_rows[t] = kv.k + off[t];
      v_rows[t] = kv.v + off[t];
    }
    detail::attend_tile(k_rows, v_rows, n, d, state);
  }
}

// The same over a quantized view: each tile's K and V rows are dequantized to float
// (dequantize_kv_rows: quant.hpp's dequantize_row's values, the ones the GPU kernels
// compute with) into the state's own rows, then attended as float rows.
inline void attend_range(const QuantKVView& kv, int seq, int kv_head, int begin, int end, AttendState& state) {
  constexpr int kTile = kAttendTileTokens;
  const int d = kv.head_dim;
  const std::size_t row = static_cast<std::size_t>(d);
  if (state.k_rows.size() < kTile * row) {
    state.k_rows.resize(kTile * row);
    state.v_rows.resize(kTile * row);
  }
  const float* k_rows[kTile];
  const float* v_rows[kTile];
  for (int t0 = begin; t0 < end; t0 += kTile) {
    const int n = std::min(kTile, end - t0);
    for (int t = 0; t < n; ++t) {
      float* k = state.k_rows.data() + t * row;
      float* v = state.v_rows.data() + t * row;
      dequantize_kv_rows(kv, seq, kv_head, t0 + t, k, v);
      k_rows[t] = k;
      v_rows[t] = v;
    }
    detail::attend_tile(k_rows, v_rows, n, d, state);
  }
}

}  // namespace ekv
