#pragma once
// The decode kernels: grid (split, kv head x head tile, sequence), one CTA each; each maps
// its coordinates to a token range and a tile of query heads and calls its inner loop
// (decode_tiles, decode_tc_tiles).

#include <cstdint>

#include "ekv/attention/decode_block.cuh"
#include "ekv/attention/decode_tc_block.cuh"
#include "ekv/attention/decode_traits.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/merge_states.cuh"
#include "ekv/kernels/dependent_launch.cuh"

namespace ekv {

// View: KVView<T>, or QuantKVView for quantized storage (decode_quant_kernel.cuh).
template <typename T, typename View = KVView<T>>
struct DecodeParams {
  View kv;
  const T* q = nullptr;        // [batch][q_heads][head_dim]
  T* o = nullptr;              // [batch][q_heads][head_dim], written when num_splits == 1
  float* lse = nullptr;        // [batch][q_heads], natural log, written when num_splits == 1
  float* partial_o = nullptr;  // [batch][q_heads][num_splits][head_dim] otherwise
  float* partial_lse = nullptr;  // [batch][q_heads][num_splits], natural log
  int* arrivals = nullptr;  // [batch][kv_heads * head_tiles]: splits done; zero before launch
  int q_heads = 0;
  int group = 0;        // q_heads / kv_heads
  int head_tiles = 0;   // CTAs per kv head
  int num_splits = 1;
  int split_tokens = 0;  // tokens per split, a multiple of every kernel's tile
  float scale_log2 = 0;  // softmax scale * log2(e)
};

// Per-warp states of a CTA, deposited in shared memory for the cross-warp merge.
template <int Warps, int Heads, int HeadDim>
struct DecodeWarpStates {
  float acc[Warps][Heads][HeadDim];  // softmax-weighted sums of V, not yet divided by l
  float m[Warps][Heads];             // running max, log2 units
  float l[Warps][Heads];             // sum of exp2(score - m)
};

// Merges the warps' states of heads first_head .. + heads and writes O and LSE (one
// split), or the float partial state of this split for merge_states. Empty states
// (m = -inf) give o = 0 and lse = -inf.
template <typename T, int HeadDim, int Warps, int Heads, typename View>
__device__ void write_decode_output(const DecodeWarpStates<Warps, Heads, HeadDim>& w, const DecodeParams<T, View>& p,
                                    int seq, int split, int first_head, int heads) {
  constexpr float kLn2 = 0.693147180559945309f;
  for (int i = threadIdx.x; i < heads * HeadDim; i += blockDim.x) {
    const int g = i / HeadDim, d = i % HeadDim;
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < Warps; ++k) mx = fmaxf(mx, w.m[k][g]);
    float num = 0.0f, den = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int k = 0; k < Warps; ++k) {
        const float wt = exp2f(w.m[k][g] - mx);
        num += wt * w.acc[k][g][d];
        den += wt * w.l[k][g];
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

// With split KV, the last CTA of a (sequence, head tile) to finish merges all splits'
// partial states (no second kernel): each CTA publishes its partials, then counts
// itself in; the one that completes the count merges, one warp per head, and resets the
// counter for the next launch.
template <typename T, int HeadDim, typename View>
__device__ void merge_if_last(const DecodeParams<T, View>& p, int seq, int first_head, int heads) {
  __threadfence();  // this CTA's partials are visible before it is counted
  __syncthreads();
  bool counted_last = false;
  if (threadIdx.x == 0) {
    int* arrivals = p.arrivals + static_cast<std::int64_t>(seq) * gridDim.y + blockIdx.y;
    counted_last = atomicAdd(arrivals, 1) == p.num_splits - 1;
    if (counted_last) *arrivals = 0;
  }
  // broadcast thread 0's answer without shared memory (the CUDA-core kernel has none left)
  if (!__syncthreads_or(counted_last)) return;
  __threadfence();  // and the others' partials are visible to this one
  for (int g = threadIdx.x / 32; g < heads; g += blockDim.x / 32) {
    const std::int64_t row = static_cast<std::int64_t>(seq) * p.q_heads + first_head + g;
    merge_row_warp<T>(p.partial_o + row * p.num_splits * HeadDim, p.partial_lse + row * p.num_splits, p.num_splits,
                      HeadDim, p.o + row * HeadDim, p.lse + row);
  }
}

// The CTA's work: sequence blockIdx.z, split blockIdx.x, kv head and head tile blockIdx.y.
struct DecodeCta {
  int seq, split, kv_head, first_head, heads;
  TokenTiles tiles;
};

template <typename T, typename View>
__device__ __forceinline__ DecodeCta decode_cta(const DecodeParams<T, View>& p, int head_tile, int tile_tokens) {
  DecodeCta c;
  c.seq = blockIdx.z;
  c.split = blockIdx.x;
  c.kv_head = blockIdx.y / p.head_tiles;
  c.first_head = c.kv_head * p.group + (blockIdx.y % p.head_tiles) * head_tile;
  c.heads = min(head_tile, (c.kv_head + 1) * p.group - c.first_head);
  // a length past the view's capacity would read past its block-table row; a length
  // past the planned maximum is still covered whole
  const int len = min(p.kv.length(c.seq, c.kv_head), p.kv.capacity());
  TokenTiles& t = c.tiles;
  t.begin = min(len, c.split * p.split_tokens);
  t.end = c.split == p.num_splits - 1 ? len : min(len, t.begin + p.split_tokens);
  t.tile = tile_tokens;
  t.count = (t.end - t.begin + t.tile - 1) / t.tile;
  return c;
}

template <typename T, int HeadDim, int HeadTile>
__global__ void __launch_bounds__(DecodeTraits<T, HeadDim>::kCtaThreads)
    decode_kernel(const __grid_constant__ DecodeParams<T> p) {
  using Traits = DecodeTraits<T, HeadDim>;
  static_assert(kDecodeSplitAlign % Traits::kTileTokens == 0, "splits start on tile boundaries");
  constexpr int kVec = Traits::kVec;
  constexpr int kWarps = Traits::kWarps;
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const DecodeCta c = decode_cta(p, HeadTile, Traits::kTileTokens);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % Traits::kLanes;
  const int group = threadIdx.x / Traits::kLanes;

  // the tile pipeline first, then the same bytes hold the cross-warp merge
  __shared__ __align__(16) unsigned char smem[Traits::kPipelineBytes];
  DecodeLaneState<T, HeadDim, HeadTile> state;
  state.init();
  decode_tiles<T, HeadDim, HeadTile>(p.kv, c.seq, c.kv_head, c.tiles,
                                     p.q + (static_cast<std::int64_t>(c.seq) * p.q_heads + c.first_head) * HeadDim,
                                     c.heads, p.scale_log2, group, lane, state, reinterpret_cast<T*>(smem));

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

  // then warps, through shared memory
  using States = DecodeWarpStates<kWarps, HeadTile, HeadDim>;
  static_assert(sizeof(States) <= sizeof(smem), "the merge fits in the pipeline's shared memory");
  States& w = *reinterpret_cast<States*>(smem);
  if (threadIdx.x % 32 < Traits::kLanes) {
#pragma unroll
    for (int g = 0; g < HeadTile; ++g) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) w.acc[warp][g][lane * kVec + e] = state.acc[g][e];
      if (lane == 0) {
        w.m[warp][g] = state.m[g];
        w.l[warp][g] = state.l[g];
      }
    }
  }
  __syncthreads();
  write_decode_output<T, HeadDim>(w, p, c.seq, c.split, c.first_head, c.heads);
  if (p.num_splits > 1) merge_if_last<T, HeadDim>(p, c.seq, c.first_head, c.heads);
}

// The tensor-core kernels' end: each warp's state into shared memory (`smem`, the
// pipeline's bytes, free again), the warps merged, O and LSE (or the split's partials)
// written, and the splits merged by the last CTA.
template <typename T, int HeadDim, typename View>
__device__ __forceinline__ void finish_tc_cta(const DecodeTcState<T, HeadDim>& state, const DecodeParams<T, View>& p,
                                              const DecodeCta& c, unsigned char* smem) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  using States = DecodeWarpStates<Traits::kWarps, Traits::kHeads, HeadDim>;
  static_assert(sizeof(States) <= Traits::kSmemBytes, "the merge fits in the pipeline's shared memory");
  States& w = *reinterpret_cast<States*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float l = state.l[i];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = lane / 4 + 8 * i;
    if (lane % 4 == 0) {
      w.m[warp][row] = state.m[i];
      w.l[warp][row] = l;
    }
#pragma unroll
    for (int d = 0; d < Traits::kDimTiles; ++d) {
      w.acc[warp][row][d * 8 + 2 * (lane % 4)] = state.o[d][2 * i];
      w.acc[warp][row][d * 8 + 2 * (lane % 4) + 1] = state.o[d][2 * i + 1];
    }
  }
  __syncthreads();
  write_decode_output<T, HeadDim>(w, p, c.seq, c.split, c.first_head, c.heads);
  if (p.num_splits > 1) merge_if_last<T, HeadDim>(p, c.seq, c.first_head, c.heads);
}

// The tensor-core decode kernel (half, bfloat16): up to 16 heads of a group per CTA; K
// and V staged by cp.async or, with Bulk (sm_90+), by bulk copies.
template <typename T, int HeadDim, bool Bulk = false>
__global__ void __launch_bounds__(DecodeTcTraits<T, HeadDim>::kCtaThreads)
    decode_tc_kernel(const __grid_constant__ DecodeParams<T> p) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  static_assert(kDecodeSplitAlign % Traits::kTileTokens == 0, "splits start on tile boundaries");
  extern __shared__ __align__(16) unsigned char smem[];
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const DecodeCta c = decode_cta(p, Traits::kHeads, Traits::kTileTokens);
  DecodeTcState<T, HeadDim> state;
  state.init();
  decode_tc_tiles<T, HeadDim, Bulk>(p.kv, c.seq, c.kv_head, c.tiles,
                              p.q + (static_cast<std::int64_t>(c.seq) * p.q_heads + c.first_head) * HeadDim, c.heads,
                              p.scale_log2, state, reinterpret_cast<T*>(smem));

  finish_tc_cta<T, HeadDim>(state, p, c, smem);
}

}  // namespace ekv
