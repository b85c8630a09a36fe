#pragma once
// The decode kernel: grid (split, kv head x head tile, sequence), one CTA each; it maps
// its coordinates to a token range and a tile of query heads and calls decode_tokens.

#include <cstdint>

#include "ekv/attention/decode_block.cuh"
#include "ekv/attention/decode_traits.hpp"
#include "ekv/attention/kv_view.hpp"

namespace ekv {

template <typename T>
struct DecodeParams {
  KVView<T> kv;
  const T* q = nullptr;        // [batch][q_heads][head_dim]
  T* o = nullptr;              // [batch][q_heads][head_dim], written when num_splits == 1
  float* lse = nullptr;        // [batch][q_heads], natural log, written when num_splits == 1
  float* partial_o = nullptr;  // [batch][q_heads][num_splits][head_dim] otherwise
  float* partial_lse = nullptr;  // [batch][q_heads][num_splits], natural log
  int q_heads = 0;
  int group = 0;        // q_heads / kv_heads
  int head_tiles = 0;   // CTAs per kv head
  int num_splits = 1;
  int split_tokens = 0;  // tokens per split
  float scale_log2 = 0;  // softmax scale * log2(e)
};

template <typename T, int HeadDim, int HeadTile>
__global__ void __launch_bounds__(DecodeTraits<T, HeadDim>::kCtaThreads)
    decode_kernel(const __grid_constant__ DecodeParams<T> p) {
  using Traits = DecodeTraits<T, HeadDim>;
  constexpr int kVec = Traits::kVec;
  constexpr int kWarps = Traits::kWarps;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / p.head_tiles;
  const int first_head = kv_head * p.group + (blockIdx.y % p.head_tiles) * HeadTile;
  const int heads = min(HeadTile, (kv_head + 1) * p.group - first_head);
  const int seq = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % Traits::kLanes;
  const int group = threadIdx.x / Traits::kLanes;
  const int len = p.kv.lengths[seq];
  const int begin = min(len, split * p.split_tokens);
  const int end = min(len, begin + p.split_tokens);

  float q[HeadTile][kVec];
#pragma unroll
  for (int g = 0; g < HeadTile; ++g) {
    const auto qv = load<T, Traits::kVecBytes>(
        p.q + (static_cast<std::int64_t>(seq) * p.q_heads + first_head + min(g, heads - 1)) * HeadDim + lane * kVec);
#pragma unroll
    for (int e = 0; e < kVec; ++e) q[g][e] = DTypeTraits<T>::to_float(qv[e]) * p.scale_log2;
  }
  // the tile pipeline first, then the same bytes hold the cross-warp merge
  __shared__ __align__(16) unsigned char smem[Traits::kPipelineBytes];
  DecodeLaneState<T, HeadDim, HeadTile> state;
  state.init();
  decode_tokens<T, HeadDim, HeadTile>(p.kv, seq, kv_head, begin, end, group, lane, q, state,
                                      reinterpret_cast<T*>(smem));

  // token groups of a warp hold disjoint tokens of the same dimensions: merge them
#pragma unroll
  for (int off = Traits::kLanes; off < 32; off *= 2) {
    float m2[HeadTile], l2[HeadTile], acc2[HeadTile][kVec];
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
      m2[g] = __shfl_xor_sync(0xffffffffu, state.m[g], off);
      l2[g] = __shfl_xor_sync(0xffffffffu, state.l[g], off);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc2[g][e] = __shfl_xor_sync(0xffffffffu, state.acc[g][e], off);
    }
    state.merge(m2, l2, acc2);
  }

  // then warps, through shared memory: [warp][head][HeadDim] accumulators, [warp][head] m, l
  struct Merge {
    float acc[kWarps][HeadTile][HeadDim];
    float m[kWarps][HeadTile];
    float l[kWarps][HeadTile];
  };
  static_assert(sizeof(Merge) <= sizeof(smem), "the merge fits in the pipeline's shared memory");
  Merge& merge = *reinterpret_cast<Merge*>(smem);
  auto& s_acc = merge.acc;
  auto& s_m = merge.m;
  auto& s_l = merge.l;
  if (threadIdx.x % 32 < Traits::kLanes) {
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) s_acc[warp][g][lane * kVec + e] = state.acc[g][e];
      if (lane == 0) {
        s_m[warp][g] = state.m[g];
        s_l[warp][g] = state.l[g];
      }
    }
  }
  __syncthreads();
  constexpr float kLn2 = 0.693147180559945309f;
  for (int i = threadIdx.x; i < heads * HeadDim; i += Traits::kCtaThreads) {
    const int g = i / HeadDim, d = i % HeadDim;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][g]);
    float num = 0.0f, den = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = exp2f(s_m[w][g] - mx);
        num += wt * s_acc[w][g][d];
        den += wt * s_l[w][g];
      }
    }
    const float out = den > 0.0f ? num / den : 0.0f;
    const float lse = den > 0.0f ? (mx + log2f(den)) * kLn2 : -INFINITY;
    const std::int64_t row = static_cast<std::int64_t>(seq) * p.q_heads + first_head + g;
    if (p.num_splits == 1) {
      p.o[row * HeadDim + d] = DTypeTraits<T>::from_float(out);
      if (d == 0) p.lse[row] = lse;
    } else {
      p.partial_o[(row * p.num_splits + split) * HeadDim + d] = out;
      if (d == 0) p.partial_lse[row * p.num_splits + split] = lse;
    }
  }
}

}  // namespace ekv
