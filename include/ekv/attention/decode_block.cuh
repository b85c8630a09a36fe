#pragma once
// The decode inner loop as a device function: one CTA's share of attention for a tile of
// query heads of one (sequence, kv head) over a token range. It assumes no grid, so the
// split-KV kernel, block-sparse decode and fused kernels all reuse it.

#include <cstdint>

#include "ekv/attention/decode_traits.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/vec.cuh"

namespace ekv {

// One lane's running softmax state for each head of the tile, over its kVec dimensions.
// Scores are in log2 units (q is pre-scaled by scale * log2 e), so exp2 is one instruction.
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

// Token group `group` of `groups` (each kLanes lanes; `lane` within it) visits tokens
// step + u * groups + group for u < kUnroll, step advancing by kUnroll * groups from
// begin, and folds them into `state`. Every lane of a warp runs the same iterations, as
// the shuffles require. q: this lane's kVec slice of each head, in log2 units.
template <typename T, int HeadDim, int HeadTile>
__device__ __forceinline__ void decode_tokens(const KVView<T>& kv, int seq, int kv_head, int begin, int end,
                                              int group, int groups, int lane,
                                              const float (&q)[HeadTile][DecodeTraits<T, HeadDim>::kVec],
                                              DecodeLaneState<T, HeadDim, HeadTile>& state) {
  using Traits = DecodeTraits<T, HeadDim>;
  constexpr int kVec = Traits::kVec;
  constexpr int kUnroll = Traits::kUnroll;
  using V = Vec<T, Traits::kVecBytes>;
  for (int step = begin; step < end; step += kUnroll * groups) {
    V k[kUnroll], v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = step + u * groups + group;
      if (t < end) {
        const std::int64_t off = kv.offset(seq, kv_head, t) + lane * kVec;
        k[u] = load_stream<T, Traits::kVecBytes>(kv.k + off);
        v[u] = load_stream<T, Traits::kVecBytes>(kv.v + off);
      }
    }
    float s[kUnroll][HeadTile];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int g = 0; g < HeadTile; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot += q[g][e] * DTypeTraits<T>::to_float(k[u][e]);
        // the kLanes lanes of one token are contiguous: xor offsets below kLanes stay inside
#pragma unroll
        for (int off = Traits::kLanes / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        s[u][g] = step + u * groups + group < end ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
      float mx = state.m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) continue;  // no valid token yet
      const float correction = exp2f(state.m[g] - mx);
      state.m[g] = mx;
      state.l[g] *= correction;
#pragma unroll
      for (int e = 0; e < kVec; ++e) state.acc[g][e] *= correction;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (step + u * groups + group < end) {
          const float p = exp2f(s[u][g] - mx);
          state.l[g] += p;
#pragma unroll
          for (int e = 0; e < kVec; ++e) state.acc[g][e] += p * DTypeTraits<T>::to_float(v[u][e]);
        }
      }
    }
  }
}

}  // namespace ekv
