#pragma once
// The decode kernels. Work is balanced over a fixed grid: the token ranges of all units
// (sequence, kv head, head tile) are laid end to end in chunks of kDecodeSplitAlign
// tokens and cut into gridDim.x equal runs, one per CTA. A CTA's run covers pieces of
// one or more units; each piece is attended on its own, and a unit cut into several
// pieces is merged through LSE by the CTA that finishes its last piece, so every SM
// streams the same number of bytes whatever the batch and head counts.

#include <cstdint>

#include "ekv/attention/decode_block.cuh"
#include "ekv/attention/decode_tc_block.cuh"
#include "ekv/attention/decode_traits.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/merge_states.cuh"

namespace ekv {

template <typename T>
struct DecodeParams {
  KVView<T> kv;
  const T* q = nullptr;          // [batch][q_heads][head_dim]
  T* o = nullptr;                // [batch][q_heads][head_dim]
  float* lse = nullptr;          // [batch][q_heads], natural log
  float* partial_o = nullptr;    // [batch][q_heads][max_pieces][head_dim], for units cut in pieces
  float* partial_lse = nullptr;  // [batch][q_heads][max_pieces], natural log
  int* arrivals = nullptr;       // [units]: pieces done; zero between launches
  int q_heads = 0;
  int group = 0;       // q_heads / kv_heads
  int head_tiles = 0;  // units per kv head
  int units = 0;       // batch * kv_heads * head_tiles
  int chunks = 0;      // chunks of kDecodeSplitAlign tokens per unit, for the planned length
  int max_pieces = 1;
  float scale_log2 = 0;  // softmax scale * log2(e)
};

// Per-warp states of a CTA, deposited in shared memory for the cross-warp merge.
template <int Warps, int Heads, int HeadDim>
struct DecodeWarpStates {
  float acc[Warps][Heads][HeadDim];  // softmax-weighted sums of V, not yet divided by l
  float m[Warps][Heads];             // running max, log2 units
  float l[Warps][Heads];             // sum of exp2(score - m)
};

// One piece of one unit: the tokens [tiles.begin, tiles.end) of (seq, kv_head) for query
// heads first_head .. + heads; piece `piece` of the unit's `pieces`.
struct DecodePiece {
  int unit, seq, kv_head, first_head, heads, piece, pieces;
  TokenTiles tiles;
};

// Merges the warps' states of the piece's heads and writes O and LSE (a unit in one
// piece), or the float partial state of the piece. Empty states (m = -inf) give o = 0
// and lse = -inf.
template <typename T, int HeadDim, int Warps, int Heads>
__device__ void write_decode_output(const DecodeWarpStates<Warps, Heads, HeadDim>& w, const DecodeParams<T>& p,
                                    const DecodePiece& c) {
  constexpr float kLn2 = 0.693147180559945309f;
  for (int i = threadIdx.x; i < c.heads * HeadDim; i += blockDim.x) {
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
    const std::int64_t row = static_cast<std::int64_t>(c.seq) * p.q_heads + c.first_head + g;
    if (c.pieces == 1) {
      p.o[row * HeadDim + d] = DTypeTraits<T>::from_float(out);
      if (d == 0) p.lse[row] = lse;
    } else {
      p.partial_o[(row * p.max_pieces + c.piece) * HeadDim + d] = out;
      if (d == 0) p.partial_lse[row * p.max_pieces + c.piece] = lse;
    }
  }
}

// For a unit cut in pieces, the CTA that finishes its last piece merges all pieces'
// partial states (no second kernel): each CTA publishes its partials, then counts
// itself in; the one that completes the count merges, one warp per head, and resets the
// counter for the next launch.
template <typename T, int HeadDim>
__device__ void merge_if_last(const DecodeParams<T>& p, const DecodePiece& c) {
  __threadfence();  // this CTA's partials are visible before it is counted
  __syncthreads();
  bool counted_last = false;
  if (threadIdx.x == 0) {
    int* arrivals = p.arrivals + c.unit;
    counted_last = atomicAdd(arrivals, 1) == c.pieces - 1;
    if (counted_last) *arrivals = 0;
  }
  // broadcast thread 0's answer without shared memory (the CUDA-core kernel has none left)
  if (!__syncthreads_or(counted_last)) return;
  __threadfence();  // and the others' partials are visible to this one
  for (int g = threadIdx.x / 32; g < c.heads; g += blockDim.x / 32) {
    const std::int64_t row = static_cast<std::int64_t>(c.seq) * p.q_heads + c.first_head + g;
    merge_row_warp<T>(p.partial_o + row * p.max_pieces * HeadDim, p.partial_lse + row * p.max_pieces, c.pieces,
                      HeadDim, p.o + row * HeadDim, p.lse + row);
  }
}

// Calls piece(DecodePiece) for each piece of this CTA's run, in order; tile_tokens is the
// kernel's tile. The pieces of one CTA reuse its shared memory one after another.
template <typename T, typename Piece>
__device__ __forceinline__ void for_each_piece(const DecodeParams<T>& p, int head_tile, int tile_tokens,
                                               Piece&& piece) {
  const long long n = static_cast<long long>(p.units) * p.chunks;
  const int g = gridDim.x;
  const long long lo = blockIdx.x * n / g, hi = (blockIdx.x + 1) * n / g;
  const int units_per_seq = p.kv.kv_heads * p.head_tiles;
  for (long long u = lo / p.chunks; u * p.chunks < hi; ++u) {
    DecodePiece c;
    c.unit = static_cast<int>(u);
    c.seq = c.unit / units_per_seq;
    c.kv_head = c.unit % units_per_seq / p.head_tiles;
    c.first_head = c.kv_head * p.group + c.unit % p.head_tiles * head_tile;
    c.heads = min(head_tile, (c.kv_head + 1) * p.group - c.first_head);
    const long long unit_first = u * p.chunks, unit_end = unit_first + p.chunks;
    c.piece = blockIdx.x - decode_cta_of(unit_first, n, g);
    c.pieces = decode_cta_of(unit_end - 1, n, g) - decode_cta_of(unit_first, n, g) + 1;
    // a length past the view's capacity would read past its block-table row; a length
    // past the planned maximum is still covered whole, by the unit's last piece
    const int len = min(p.kv.lengths[c.seq], p.kv.capacity());
    const long long first_chunk = max(lo, unit_first) - unit_first, end_chunk = min(hi, unit_end) - unit_first;
    TokenTiles& t = c.tiles;
    t.begin = static_cast<int>(min(static_cast<long long>(len), first_chunk * kDecodeSplitAlign));
    t.end = end_chunk == p.chunks ? len : static_cast<int>(min(static_cast<long long>(len), end_chunk * kDecodeSplitAlign));
    t.stride = tile_tokens;
    t.count = (t.end - t.begin + t.stride - 1) / t.stride;
    piece(c);
  }
}

template <typename T, int HeadDim, int HeadTile>
__global__ void __launch_bounds__(DecodeTraits<T, HeadDim>::kCtaThreads)
    decode_kernel(const __grid_constant__ DecodeParams<T> p) {
  using Traits = DecodeTraits<T, HeadDim>;
  static_assert(kDecodeSplitAlign % Traits::kTileTokens == 0, "splits start on tile boundaries");
  constexpr int kVec = Traits::kVec;
  constexpr int kWarps = Traits::kWarps;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % Traits::kLanes;
  const int group = threadIdx.x / Traits::kLanes;
  // the tile pipeline first, then the same bytes hold the cross-warp merge
  __shared__ __align__(16) unsigned char smem[Traits::kPipelineBytes];
  for_each_piece(p, HeadTile, Traits::kTileTokens, [&](const DecodePiece& c) {
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
    write_decode_output<T, HeadDim>(w, p, c);
    if (c.pieces > 1) merge_if_last<T, HeadDim>(p, c);
    __syncthreads();  // the next piece's pipeline overwrites the states
  });
}

// The tensor-core decode kernel (half, bfloat16): up to 16 heads of a group per CTA.
template <typename T, int HeadDim>
__global__ void __launch_bounds__(DecodeTcTraits<T, HeadDim>::kCtaThreads)
    decode_tc_kernel(const __grid_constant__ DecodeParams<T> p) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  static_assert(kDecodeSplitAlign % Traits::kTileTokens == 0, "splits start on tile boundaries");
  extern __shared__ __align__(16) unsigned char smem[];
  for_each_piece(p, Traits::kHeads, Traits::kTileTokens, [&](const DecodePiece& c) {
    DecodeTcState<T, HeadDim> state;
    state.init();
    decode_tc_tiles<T, HeadDim>(p.kv, c.seq, c.kv_head, c.tiles,
                                p.q + (static_cast<std::int64_t>(c.seq) * p.q_heads + c.first_head) * HeadDim, c.heads,
                                p.scale_log2, state, reinterpret_cast<T*>(smem));

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
    write_decode_output<T, HeadDim>(w, p, c);
    if (c.pieces > 1) merge_if_last<T, HeadDim>(p, c);
    __syncthreads();  // the next piece's pipeline overwrites the states
  });
}

}  // namespace ekv
