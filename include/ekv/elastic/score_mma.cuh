#pragma once
// Block scoring on tensor cores, for the single-vector anchors (QUEST, BLOCK_MEAN,
// BLOCK_MAX) in half or bfloat16. Each kind's score is one dot product of the stored anchor
// row with a row derived from the query: MEAN and MAX score q . a, and QUEST's bound
// sum_d max(q_d lo_d, q_d hi_d) equals [min(q, 0), max(q, 0)] . [lo, hi] because hi >= lo
// (where q_d < 0 the larger product is q_d lo_d, where q_d > 0 it is q_d hi_d). So a warp
// scores 8 blocks per m16n8k16 chain: the query heads of the group are the M rows, the 8
// blocks the N columns, the anchor row the K dimension; products are exact in float and
// summed in float, as on CUDA cores. The CUDA-core kernel it replaces spent about 120 warp
// instructions per block and head on 4 channels per lane and a 32-lane reduction per head
// (1.5 TB/s of anchors at 16 x 128K on the H200: RESULTS.md, issue 16); here a lane loads
// 16 contiguous bytes per 32 features, and the products need no reduction across lanes.
//
// The K order is permuted, which a dot product allows: lane (n = lane / 4, t = lane % 4)
// loads features 32 s + 8 t .. + 7 of block n's row, whose four 32-bit words are the B
// fragments of k steps 2 s (words 0, 1) and 2 s + 1 (words 2, 3); the query's A fragments
// follow the same order. An anchor that is not finite (a key that was) gives a NaN or
// infinite score where the CUDA-core bound could differ (0 x inf); selection reads NaN as
// -inf either way.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/kernels/dependent_launch.cuh"
#include "ekv/kernels/mma.cuh"
#include "ekv/kernels/vec.cuh"

namespace ekv {

inline constexpr int kScoreMmaWarps = 8;
inline constexpr int kScoreMmaBlocks = 8;  // N of one MMA: blocks a warp scores at once
// Blocks one warp scores, at most: long spans share a CTA's query staging over more blocks
// (at 16 x 128K, 32 blocks a warp made 4 waves of CTAs that each staged the query for 4
// MMA chains a warp); the launcher shortens them until the grid fills the SMs
// (kScoreMmaCtasPerSm, the kernel's occupancy at 126 registers).
inline constexpr int kScoreMmaMaxWarpBlocks = 128;
inline constexpr int kScoreMmaCtasPerSm = 2;

// Features: the anchor row's values (2 x head_dim for QUEST, head_dim otherwise).
template <typename T, int HeadDim, bool Quest>
struct ScoreMmaTraits {
  static constexpr int kFeatures = Quest ? 2 * HeadDim : HeadDim;
  static constexpr int kSlabs = kFeatures / 32;  // 16-byte loads per lane and block
  static constexpr int kSteps = kFeatures / 16;  // k steps of the MMA chain
  static_assert(kFeatures % 32 == 0, "a lane loads whole 16-byte runs of 8 features");
};

namespace detail {

// A query row's feature from query value q (QUEST: min(q, 0) against lo, max(q, 0) against
// hi; the others q itself), in T.
template <typename T, bool Quest>
__device__ __forceinline__ T score_query_feature(T q, bool against_lo) {
  if constexpr (Quest) {
    const float x = DTypeTraits<T>::to_float(q);
    return DTypeTraits<T>::from_float(against_lo ? fminf(x, 0.0f) : fmaxf(x, 0.0f));
  }
  return q;
}

}  // namespace detail

// Warp w of CTA (x, kv head, seq) scores warp_blocks logical blocks (a multiple of 8, at
// most kScoreMmaMaxWarpBlocks) from (x * kScoreMmaWarps + w) * warp_blocks, as
// score_blocks_kernel does: the group's max, scores [batch][kv_heads][max_blocks], or
// per_query each head's own, [batch][q_heads][max_blocks]. Needs group <= 16 (the M rows)
// and q 16-byte aligned.
template <typename T, int HeadDim, bool Quest>
__global__ void __launch_bounds__(kScoreMmaWarps * 32, 2)
    score_blocks_mma_kernel(const KVView<T> kv, const T* q, int q_heads, const T* anchors, bool per_query,
                            int warp_blocks, float* scores) {
  using Traits = ScoreMmaTraits<T, HeadDim, Quest>;
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const int seq = blockIdx.z, head = blockIdx.y, lane = threadIdx.x % 32;
  const int n_col = lane / 4, t = lane % 4;
  const int first = (blockIdx.x * kScoreMmaWarps + threadIdx.x / 32) * warp_blocks;
  // lane l holds the table entry of block first + c + l for the 32 blocks from c; a table
  // of whole rows is read beside the length (as in score_blocks_kernel)
  const bool whole_rows = kv.page_indptr == nullptr;
  const auto entry = [&](int c, int bound) -> std::int64_t {
    const int b = c + lane;
    return b < warp_blocks && first + b < bound ? kv.block_id(seq, head, first + b) : 0;
  };
  std::int64_t lane_block = whole_rows ? entry(0, kv.max_blocks_per_seq) : 0;
  const int group = q_heads / kv.kv_heads;
  const T* q_group = q + (static_cast<std::int64_t>(seq) * q_heads + head * group) * HeadDim;
  // the group's query rows (16, zero past the group), derived once per CTA
  // (16-byte runs: 8 features of one row, all of lo or all of hi)
  __shared__ __align__(16) T q_rows[16][Traits::kFeatures];
  constexpr int kRuns = Traits::kFeatures / 8;
  for (int i = threadIdx.x; i < 16 * kRuns; i += blockDim.x) {
    const int g = i / kRuns, f = (i % kRuns) * 8;
    Vec<T, 16> run;
    if (g < group) {
      const Vec<T, 16> x = load<T, 16>(q_group + g * HeadDim + (Quest && f >= HeadDim ? f - HeadDim : f));
#pragma unroll
      for (int j = 0; j < 8; ++j) run[j] = detail::score_query_feature<T, Quest>(x[j], f < HeadDim);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) run[j] = DTypeTraits<T>::from_float(0.0f);
    }
    *reinterpret_cast<Vec<T, 16>*>(&q_rows[g][f]) = run;
  }
  __syncthreads();
  // the A fragments in the permuted K order: rows lane / 4 and lane / 4 + 8, features
  // f, f + 1 (words 0, 1) and f + 2, f + 3 (words 2, 3)
  std::uint32_t qa[Traits::kSteps][4];
  const auto pair = [&](int g, int f) { return *reinterpret_cast<const std::uint32_t*>(&q_rows[g][f]); };
#pragma unroll
  for (int s = 0; s < Traits::kSlabs; ++s) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int f = 32 * s + 8 * t + 4 * h;
      qa[2 * s + h][0] = pair(n_col, f);
      qa[2 * s + h][1] = pair(n_col + 8, f);
      qa[2 * s + h][2] = pair(n_col, f + 2);
      qa[2 * s + h][3] = pair(n_col + 8, f + 2);
    }
  }
  const int n = sequence_blocks(min(kv.length(seq, head), kv.capacity()), kv.block_len);
  const int count = max(0, min(warp_blocks, n - first));
  for (int c = 0; c < count; c += kScoreMmaBlocks) {
    if (c % 32 == 0 && (c > 0 || !whole_rows)) lane_block = entry(c, first + count);
    // lane loads its 16-byte runs of block c + n_col's row
    const int mine = c + n_col;
    const std::int64_t physical = __shfl_sync(0xffffffffu, lane_block, mine % 32);
    uint4 run[Traits::kSlabs];
    const T* row = anchors + (physical * kv.kv_heads + head) * Traits::kFeatures + 8 * t;
#pragma unroll
    for (int s = 0; s < Traits::kSlabs; ++s) {
      run[s] = mine < count ? __ldg(reinterpret_cast<const uint4*>(row + 32 * s)) : make_uint4(0, 0, 0, 0);
    }
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int s = 0; s < Traits::kSlabs; ++s) {
      mma_16816<T>(acc, qa[2 * s], run[s].x, run[s].y);
      mma_16816<T>(acc, qa[2 * s + 1], run[s].z, run[s].w);
    }
    // acc: heads n_col (0, 1) and n_col + 8 (2, 3), blocks c + 2 t and c + 2 t + 1
    const int block0 = c + 2 * t;
    if (per_query) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int g = n_col + (i / 2) * 8, b = block0 + i % 2;
        if (g < group && b < count) {
          scores[(static_cast<std::int64_t>(seq) * q_heads + head * group + g) * kv.max_blocks_per_seq + first + b] =
              acc[i];
        }
      }
      continue;
    }
    float best[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float top = n_col < group ? acc[j] : -INFINITY;
      const float low = n_col + 8 < group ? acc[2 + j] : -INFINITY;
      best[j] = fmaxf(top, low);
#pragma unroll
      for (int off = 4; off < 32; off *= 2) best[j] = fmaxf(best[j], __shfl_xor_sync(0xffffffffu, best[j], off));
    }
    if (n_col == 0) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (block0 + j < count) {
          scores[(static_cast<std::int64_t>(seq) * kv.kv_heads + head) * kv.max_blocks_per_seq + first + block0 + j] =
              best[j];
        }
      }
    }
  }
}

}  // namespace ekv
