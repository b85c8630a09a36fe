#pragma once
// The decode inner loop as a device function: one CTA's share of attention for a tile of
// query heads of one (sequence, kv head) over a token range. It assumes no grid, so the
// split-KV kernel, block-sparse decode and fused kernels all reuse it.

#include <cstdint>

#include "ekv/attention/decode_traits.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/kernels/async_copy.cuh"
#include "ekv/kernels/tile_pipeline.cuh"
#include "ekv/kernels/vec.cuh"

namespace ekv {

// One lane's running softmax state for each head of the tile, over its kVec dimensions,
// in log2 units.
template <typename T, int HeadDim, int HeadTile>
struct DecodeLaneState {
  static constexpr int kVec = DecodeTraits<T, HeadDim>::kVec;
  float m[HeadTile];
  float l[HeadTile];
  float acc[HeadTile][kVec];

  __device__ void init() {
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
      m[g] = -INFINITY;
      l[g] = 0.0f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[g][e] = 0.0f;
    }
  }

  // Folds in another state over the same dimensions (empty states weigh nothing).
  __device__ void merge(const float (&m2)[HeadTile], const float (&l2)[HeadTile], const float (&acc2)[HeadTile][kVec]) {
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
      const float mx = fmaxf(m[g], m2[g]);
      if (mx == -INFINITY) continue;
      const float a = exp2f(m[g] - mx), b = exp2f(m2[g] - mx);
      l[g] = l[g] * a + l2[g] * b;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[g][e] = acc[g][e] * a + acc2[g][e] * b;
      m[g] = mx;
    }
  }
};

// Stages tile `tile` (tokens first .. first + kTileTokens, clipped to end) of K and V
// into shared memory with cp.async: thread x copies 16-byte column x % kChunksPerToken
// of every (kCtaThreads / kChunksPerToken)-th token. Tokens past `end` are not copied.
template <typename T, int HeadDim>
__device__ __forceinline__ void stage_tile(const KVView<T>& kv, int seq, int kv_head, int first, int end,
                                           T* k_tile, T* v_tile) {
  using Traits = DecodeTraits<T, HeadDim>;
  constexpr int kElemsPerChunk = 16 / static_cast<int>(sizeof(T));
  constexpr int kTokenStep = Traits::kCtaThreads / Traits::kChunksPerToken;
  const int column = (threadIdx.x % Traits::kChunksPerToken) * kElemsPerChunk;
#pragma unroll
  for (int t = threadIdx.x / Traits::kChunksPerToken; t < Traits::kTileTokens; t += kTokenStep) {
    if (first + t < end) {
      const std::int64_t off = kv.offset(seq, kv_head, first + t) + column;
      async_copy_16(k_tile + t * HeadDim + column, kv.k + off);
      async_copy_16(v_tile + t * HeadDim + column, kv.v + off);
    }
  }
}

// Folds the tiles of (seq, kv_head) into `state`, for the query heads at q_rows (`heads`
// of them; a smaller tile repeats the last). The whole CTA calls it: tiles of
// kTileTokens tokens stream through `pipeline` (Traits::kPipelineBytes of shared memory,
// 16-byte aligned). Within a tile, token group `group` (kLanes lanes; `lane` within it)
// takes tokens u * kGroups + group. scale_log2 = softmax scale * log2(e).
template <typename T, int HeadDim, int HeadTile>
__device__ __forceinline__ void decode_tiles(const KVView<T>& kv, int seq, int kv_head, const TokenTiles& tiles,
                                             const T* q_rows, int heads, float scale_log2, int group, int lane,
                                             DecodeLaneState<T, HeadDim, HeadTile>& state, T* pipeline) {
  using Traits = DecodeTraits<T, HeadDim>;
  constexpr int kVec = Traits::kVec;
  constexpr int kTileElems = Traits::kTileTokens * HeadDim;
  using V = Vec<T, Traits::kVecBytes>;
  auto stage = [&](int i, int slot) {
    T* k_tile = pipeline + slot * 2 * kTileElems;
    stage_tile<T, HeadDim>(kv, seq, kv_head, tiles.first(i), tiles.end, k_tile, k_tile + kTileElems);
  };
  pipeline_prologue<Traits::kStages>(tiles.count, stage);
  float q[HeadTile][kVec];  // in log2 units, so exp2 is one instruction
#pragma unroll
  for (int g = 0; g < HeadTile; ++g) {
    const auto qv = load<T, Traits::kVecBytes>(q_rows + min(g, heads - 1) * HeadDim + lane * kVec);
#pragma unroll
    for (int e = 0; e < kVec; ++e) q[g][e] = DTypeTraits<T>::to_float(qv[e]) * scale_log2;
  }

  pipeline_run<Traits::kStages>(tiles.count, stage, [&](int i, int slot) {
    const T* k_tile = pipeline + slot * 2 * kTileElems;
    const T* v_tile = k_tile + kTileElems;
    const int first = tiles.first(i);
    V k[Traits::kUnroll];
    float s[Traits::kUnroll][HeadTile];
#pragma unroll
    for (int u = 0; u < Traits::kUnroll; ++u) {
      k[u] = load<T, Traits::kVecBytes>(k_tile + (u * Traits::kGroups + group) * HeadDim + lane * kVec);
    }
#pragma unroll
    for (int u = 0; u < Traits::kUnroll; ++u) {
      const bool valid = first + u * Traits::kGroups + group < tiles.end;
#pragma unroll
      for (int g = 0; g < HeadTile; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot += q[g][e] * DTypeTraits<T>::to_float(k[u][e]);
        // the kLanes lanes of one token are contiguous: xor offsets below kLanes stay inside
#pragma unroll
        for (int off = Traits::kLanes / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        s[u][g] = valid ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
      float mx = state.m[g];
#pragma unroll
      for (int u = 0; u < Traits::kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) continue;  // no valid token yet
      const float correction = exp2f(state.m[g] - mx);
      state.m[g] = mx;
      state.l[g] *= correction;
#pragma unroll
      for (int e = 0; e < kVec; ++e) state.acc[g][e] *= correction;
    }
#pragma unroll
    for (int u = 0; u < Traits::kUnroll; ++u) {
      if (first + u * Traits::kGroups + group < tiles.end) {  // unstaged tokens hold stale data
        const V v = load<T, Traits::kVecBytes>(v_tile + (u * Traits::kGroups + group) * HeadDim + lane * kVec);
#pragma unroll
        for (int g = 0; g < HeadTile; ++g) {
          const float p = exp2f(s[u][g] - state.m[g]);
          state.l[g] += p;
#pragma unroll
          for (int e = 0; e < kVec; ++e) state.acc[g][e] += p * DTypeTraits<T>::to_float(v[e]);
        }
      }
    }
  });
}

}  // namespace ekv
