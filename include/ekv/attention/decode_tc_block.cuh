#pragma once
// The decode inner loop on tensor cores, for half and bfloat16: query heads are the M
// rows of m16n8k16 MMAs (up to 16 heads of a GQA group in one CTA), tokens the N columns
// of S = Q K^T, and P V reuses S's accumulator fragments as its A operand, so scores
// never leave registers. K and V tiles stream through a cp.async pipeline in shared
// memory; each warp owns 16 tokens of every tile. Like decode_block.cuh it assumes no
// grid, so split-KV and block-sparse kernels share it.

#include <cstdint>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/tile_pipeline.cuh"
#include "ekv/core/async_copy.cuh"
#include "ekv/core/mma.cuh"

namespace ekv {

template <typename T, int HeadDim>
struct DecodeTcTraits {
  static constexpr int kWarps = 4;  // untuned
  static constexpr int kCtaThreads = kWarps * 32;
  static constexpr int kHeads = 16;       // MMA rows: query heads per CTA
  static constexpr int kWarpTokens = 16;  // one k step of P V
  static constexpr int kTileTokens = kWarps * kWarpTokens;
  // rows padded by 16 bytes so the 8 rows of an ldmatrix tile fall in distinct banks
  static constexpr int kRowElems = HeadDim + 8;
  // Three stages (104 KB at head_dim 128, 2 CTAs per SM) against two (70 KB, 3 CTAs):
  // within 5% either way on the H100, three faster at 1 x 4K (15.4 against 19.2 us),
  // two at contiguous 16 x 32K (750 against 788 us); RESULTS.md. 256 fits only two.
  static constexpr int kStages = HeadDim == 256 ? 2 : 3;
  static constexpr int kStageElems = 2 * kTileTokens * kRowElems;  // K then V
  static constexpr int kSmemBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
  static constexpr int kChunksPerToken = HeadDim * static_cast<int>(sizeof(T)) / 16;
  static constexpr int kDimTiles = HeadDim / 8;  // N tiles of the output
  static_assert(kCtaThreads % kChunksPerToken == 0, "each thread copies one 16-byte column of a tile");
};

// One warp's running state: the accumulator fragments of O (16 heads x HeadDim) and,
// for the two rows this lane holds (lane / 4 and lane / 4 + 8), max and partial sum.
template <typename T, int HeadDim>
struct DecodeTcState {
  float o[DecodeTcTraits<T, HeadDim>::kDimTiles][4];
  float m[2];
  float l[2];  // this lane's share; the four lanes of a row add up at the end

  __device__ void init() {
#pragma unroll
    for (int n = 0; n < DecodeTcTraits<T, HeadDim>::kDimTiles; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) o[n][i] = 0.0f;
    }
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }
};

// Query fragments (A operand, 16 heads x HeadDim) of heads first_head .. + heads; rows
// past `heads` are zero.
template <typename T, int HeadDim>
__device__ __forceinline__ void load_q_fragments(const T* q_rows, int heads,
                                                 std::uint32_t (&qa)[HeadDim / 16][4]) {
  const int lane = threadIdx.x % 32;
  const int row = lane / 4, col = 2 * (lane % 4);
  auto pair = [&](int r, int c) -> std::uint32_t {
    return r < heads ? *reinterpret_cast<const std::uint32_t*>(q_rows + r * HeadDim + c) : 0u;
  };
#pragma unroll
  for (int k = 0; k < HeadDim / 16; ++k) {
    qa[k][0] = pair(row, k * 16 + col);
    qa[k][1] = pair(row + 8, k * 16 + col);
    qa[k][2] = pair(row, k * 16 + 8 + col);
    qa[k][3] = pair(row + 8, k * 16 + 8 + col);
  }
}

// Stages tokens first .. first + kTileTokens of K and V (zeros past `end`).
template <typename T, int HeadDim>
__device__ __forceinline__ void stage_tc_tile(const KVView<T>& kv, int seq, int kv_head, int first, int end,
                                              T* stage) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  constexpr int kElemsPerChunk = 16 / static_cast<int>(sizeof(T));
  constexpr int kTokenStep = Traits::kCtaThreads / Traits::kChunksPerToken;
  const int column = (threadIdx.x % Traits::kChunksPerToken) * kElemsPerChunk;
  T* v_stage = stage + Traits::kTileTokens * Traits::kRowElems;
#pragma unroll
  for (int t = threadIdx.x / Traits::kChunksPerToken; t < Traits::kTileTokens; t += kTokenStep) {
    const bool valid = first + t < end;
    const std::int64_t off = valid ? kv.offset(seq, kv_head, first + t) + column : 0;
    async_copy_16_zfill(stage + t * Traits::kRowElems + column, kv.k + off, valid ? 16 : 0);
    async_copy_16_zfill(v_stage + t * Traits::kRowElems + column, kv.v + off, valid ? 16 : 0);
  }
}

// Folds the tiles of (seq, kv_head) into each warp's `state`, for the query heads at
// q_rows (`heads` of them, rows past that are zero). The whole CTA calls it; `pipeline`
// is Traits::kSmemBytes of 16-byte-aligned shared memory. The first tiles' loads are
// issued before the query is read, so its latency hides under theirs.
// scale_log2 = softmax scale * log2(e).
template <typename T, int HeadDim>
__device__ __forceinline__ void decode_tc_tiles(const KVView<T>& kv, int seq, int kv_head, const TokenTiles& tiles,
                                                const T* q_rows, int heads, float scale_log2,
                                                DecodeTcState<T, HeadDim>& state, T* pipeline) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto stage = [&](int i, int slot) {
    stage_tc_tile<T, HeadDim>(kv, seq, kv_head, tiles.first(i), tiles.end, pipeline + slot * Traits::kStageElems);
  };
  pipeline_prologue<Traits::kStages>(tiles.count, stage);
  std::uint32_t qa[HeadDim / 16][4];
  load_q_fragments<T, HeadDim>(q_rows, heads, qa);

  pipeline_run<Traits::kStages>(tiles.count, stage, [&](int i, int slot) {
    const T* k_warp = pipeline + slot * Traits::kStageElems + warp * Traits::kWarpTokens * Traits::kRowElems;
    const T* v_warp = k_warp + Traits::kTileTokens * Traits::kRowElems;
    const int first = tiles.first(i) + warp * Traits::kWarpTokens;
    const int end = tiles.end;
    if (first >= end) return;  // warp-uniform: this warp's tokens are all past the end

    // S = Q K^T for the warp's 16 tokens: two N tiles of 8 tokens
    float s[2][4] = {};
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int k = 0; k < HeadDim / 32; ++k) {
        std::uint32_t b[4];
        ldmatrix_x4<false>(b, k_warp + (n * 8 + lane % 8) * Traits::kRowElems + k * 32 + (lane / 8) * 8);
        mma_16816<T>(s[n], qa[2 * k], b[0], b[1]);
        mma_16816<T>(s[n], qa[2 * k + 1], b[2], b[3]);
      }
    }
    // online softmax over the rows this lane holds: r = 0 for row lane/4, 1 for lane/4 + 8
    float correction[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int token = first + n * 8 + 2 * (lane % 4) + j;
          float& x = s[n][2 * r + j];
          x = token < end ? x * scale_log2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(state.m[r], mx);  // finite: token `first` is valid
      correction[r] = exp2f(state.m[r] - m_new);
      state.m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float& x = s[n][2 * r + j];
          x = exp2f(x - m_new);
          sum += x;
        }
      }
      state.l[r] = state.l[r] * correction[r] + sum;
    }
#pragma unroll
    for (int d = 0; d < Traits::kDimTiles; ++d) {
      state.o[d][0] *= correction[0];
      state.o[d][1] *= correction[0];
      state.o[d][2] *= correction[1];
      state.o[d][3] *= correction[1];
    }
    // O += P V: P's fragments are S's accumulators, rounded to T
    const std::uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]),
                                 pack2<T>(s[1][0], s[1][1]), pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int d = 0; d < HeadDim / 16; ++d) {
      std::uint32_t b[4];
      ldmatrix_x4<true>(b, v_warp + ((lane / 8) % 2 * 8 + lane % 8) * Traits::kRowElems + d * 16 + (lane / 16) * 8);
      mma_16816<T>(state.o[2 * d], pa, b[0], b[1]);
      mma_16816<T>(state.o[2 * d + 1], pa, b[2], b[3]);
    }
  });
}

}  // namespace ekv
