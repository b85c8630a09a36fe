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

// Folds one tile of n tokens, rows k_rows and v_rows [n] in type T, into `state`, asking
// for `v_ahead` while the scores compute and for `k_ahead` while the weighted sum does.
template <typename T>
void attend_tile(const T* const* k_rows, const T* const* v_rows, int n, int d, AttendState& state,
                 const TilePrefetch& v_ahead = {}, const TilePrefetch& k_ahead = {}) {
  constexpr int kTile = kAttendTileTokens;
  tile_scores(state.q.data(), state.group, k_rows, n, d, state.scores.data(), kTile, state.k_wide.data(), v_ahead);
  for (int g = 0; g < state.group; ++g) {
    float* s = &state.scores[static_cast<std::size_t>(g) * kTile];
    const float tile_max = max_row(s, n);
    const float new_max = std::max(state.max[g], tile_max);
    state.rescale[g] = std::exp(state.max[g] - new_max);  // 0 for the first tile
    state.sum[g] = state.sum[g] * state.rescale[g] + exp_row(s, n, new_max);
    state.max[g] = new_max;
  }
  tile_accumulate(state.acc.data(), state.rescale.data(), state.scores.data(), kTile, state.group, v_rows, n, d,
                  state.v_wide.data(), k_ahead);
}

}  // namespace detail

// Tiles ahead that attend_range asks for while a tile computes: V of the next tile while
// its scores compute, K of the one after while its weighted sum does, every row, contiguous
// or through a block table; the first tiles' rows at the start. Distances up to 6 tiles were
// within 5% of these (benchmarks/RESULTS.md, CPU decode: prefetch spread through the tile).
inline constexpr int kAttendPrefetchTilesV = 1;
inline constexpr int kAttendPrefetchTilesK = 2;

// Adds tokens [begin, end) of (seq, kv_head) to `state` (begun with the group's q).
// head_dim a multiple of 8; the tokens must lie within the view.
template <typename T>
void attend_range(const KVView<T>& kv, int seq, int kv_head, int begin, int end, AttendState& state) {
  constexpr int kTile = kAttendTileTokens;
  constexpr int kSlots = kAttendPrefetchTilesK + 1;  // a ring of located tiles: this one and those ahead
  static_assert(kAttendPrefetchTilesV <= kAttendPrefetchTilesK, "V is asked for no further ahead than K");
  const int d = kv.head_dim;
  // a located tile: its rows, and the runs of rows that follow each other, for the prefetch
  // (V's rows follow each other where K's do: they share offsets)
  struct Located {
    const T* k_rows[kTile];
    const T* v_rows[kTile];
    PrefetchRun k_runs[kTile];
    PrefetchRun v_runs[kTile];
    int n = 0;
    int runs = 0;
    std::size_t bytes = 0;  // of K's rows, as of V's
    TilePrefetch k_ahead() const { return {k_runs, runs, bytes}; }
    TilePrefetch v_ahead() const { return {v_runs, runs, bytes}; }
  };
  const auto bytes_of = [](const T* p) { return reinterpret_cast<const char*>(p); };
  const auto locate = [&](std::int64_t t0, Located& l) {
    l.n = static_cast<int>(std::clamp<std::int64_t>(end - t0, 0, kTile));
    l.runs = 0;
    for (int t = 0; t < l.n; ++t) {
      const std::int64_t off = kv.offset(seq, kv_head, static_cast<int>(t0) + t);
      l.k_rows[t] = kv.k + off;
      l.v_rows[t] = kv.v + off;
      if (l.runs > 0 && l.k_runs[l.runs - 1].end == bytes_of(kv.k + off)) {  // follows the row before
        l.k_runs[l.runs - 1].end = bytes_of(kv.k + off + d);
        l.v_runs[l.runs - 1].end = bytes_of(kv.v + off + d);
      } else {
        l.k_runs[l.runs] = {bytes_of(kv.k + off), bytes_of(kv.k + off + d)};
        l.v_runs[l.runs++] = {bytes_of(kv.v + off), bytes_of(kv.v + off + d)};
      }
    }
    l.bytes = static_cast<std::size_t>(l.n) * d * sizeof(T);
  };
  Located tiles[kSlots];
  for (int i = 0; i < kAttendPrefetchTilesK; ++i) locate(std::int64_t{begin} + i * kTile, tiles[i]);
  // what no tile before them asks for: the first tile's V and the K of those up to K's distance
  tiles[0].v_ahead().part(0, 1);
  for (int i = 1; i < kAttendPrefetchTilesK; ++i) tiles[i].k_ahead().part(0, 1);
  for (std::int64_t t0 = begin, cur = 0; t0 < end; t0 += kTile, cur = (cur + 1) % kSlots) {
    Located& k_next = tiles[(cur + kAttendPrefetchTilesK) % kSlots];
    locate(t0 + std::int64_t{kAttendPrefetchTilesK} * kTile, k_next);
    const Located& here = tiles[cur];
    const Located& v_next = tiles[(cur + kAttendPrefetchTilesV) % kSlots];
    detail::attend_tile(here.k_rows, here.v_rows, here.n, d, state, v_next.v_ahead(), k_next.k_ahead());
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
