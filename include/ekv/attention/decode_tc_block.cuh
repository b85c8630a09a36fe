#pragma once
// The decode inner loop on tensor cores, for half and bfloat16: query heads are the M
// rows of m16n8k16 MMAs (up to 16 heads of a GQA group in one CTA), tokens the N columns
// of S = Q K^T, and P V reuses S's accumulator fragments as its A operand, so scores
// never leave registers. K and V tiles stream through a cp.async pipeline in shared
// memory; each warp owns 16 tokens of every tile, copies them itself and waits only for
// its own copies (no CTA barrier per tile). Like decode_block.cuh it assumes no
// grid, so split-KV and block-sparse kernels share it.

#include <cstdint>

#include "ekv/attention/kv_view.hpp"
#include "ekv/kernels/async_copy.cuh"
#include "ekv/kernels/bulk_copy.cuh"
#include "ekv/kernels/mma.cuh"
#include "ekv/kernels/tile_pipeline.cuh"

namespace ekv {

template <typename T, int HeadDim>
struct DecodeTcTraits {
  // 8 warps and 3 stages (209 KB at head_dim 128, one CTA per SM) measured best among
  // 4 or 8 warps x 2 or 3 stages on the H100, by 1 to 6% (RESULTS.md); 256 fits 4 warps
  static constexpr int kWarps = HeadDim == 256 ? 4 : 8;
  static constexpr int kCtaThreads = kWarps * 32;
  static constexpr int kHeads = 16;       // MMA rows: query heads per CTA
  static constexpr int kWarpTokens = 16;  // one k step of P V
  static constexpr int kTileTokens = kWarps * kWarpTokens;
  // rows padded by 16 bytes so the 8 rows of an ldmatrix tile fall in distinct banks
  static constexpr int kRowElems = HeadDim + 8;
  static constexpr int kStages = 3;
  static constexpr int kStageElems = 2 * kTileTokens * kRowElems;  // K then V
  static constexpr int kSmemBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
  // bulk copies (Bulk = true) complete on one mbarrier per warp and slot, after the stages
  static constexpr int kBulkSmemBytes = kSmemBytes + kStages * kWarps * static_cast<int>(sizeof(std::uint64_t));
  static constexpr int kRowBytes = HeadDim * static_cast<int>(sizeof(T));
  static constexpr int kChunksPerToken = HeadDim * static_cast<int>(sizeof(T)) / 16;
  static constexpr int kDimTiles = HeadDim / 8;  // N tiles of the output
  static_assert(32 % kChunksPerToken == 0, "each lane copies one 16-byte column of its warp's tokens");
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

// Stages one warp's 16 tokens of K and V, first .. first + 15 (zeros past `end`), into its
// own rows k_warp and v_warp: each warp copies only what it consumes, so the pipeline
// synchronises warps, not the CTA (TileOwner::kWarp). Lane x copies 16-byte column
// x % kChunksPerToken of tokens x / kChunksPerToken + j * kTokenStep. A full slice needs
// no bounds checks, and in a contiguous view its rows are a fixed stride apart, so only
// the last tile of a range pays for per-token checks; a slice past `end` copies nothing
// (its warp skips it).
template <typename T, int HeadDim>
__device__ __forceinline__ void stage_tc_warp_tile(const KVView<T>& kv, int seq, int kv_head, int first, int end,
                                                   T* k_warp, T* v_warp) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  constexpr int kElemsPerChunk = 16 / static_cast<int>(sizeof(T));
  constexpr int kTokenStep = 32 / Traits::kChunksPerToken;
  constexpr int kCopies = Traits::kWarpTokens / kTokenStep;
  static_assert(32 % Traits::kChunksPerToken == 0 && Traits::kWarpTokens % kTokenStep == 0,
                "every lane copies the same number of rows");
  const int lane = threadIdx.x % 32;
  const int column = (lane % Traits::kChunksPerToken) * kElemsPerChunk;
  const int t0 = lane / Traits::kChunksPerToken;
  T* k_dst = k_warp + t0 * Traits::kRowElems + column;
  T* v_dst = v_warp + t0 * Traits::kRowElems + column;
  constexpr int kDstStep = kTokenStep * Traits::kRowElems;
  if (first >= end) return;
  if (first + Traits::kWarpTokens <= end) {
    if (kv.block_table == nullptr) {
      const std::int64_t base = kv.offset(seq, kv_head, first + t0) + column;
      const std::int64_t step = kTokenStep * kv.token_stride;
#pragma unroll
      for (int j = 0; j < kCopies; ++j) {
        async_copy_16(k_dst + j * kDstStep, kv.k + base + j * step);
        async_copy_16(v_dst + j * kDstStep, kv.v + base + j * step);
      }
    } else {
#pragma unroll
      for (int j = 0; j < kCopies; ++j) {
        const std::int64_t off = kv.offset(seq, kv_head, first + t0 + j * kTokenStep) + column;
        async_copy_16(k_dst + j * kDstStep, kv.k + off);
        async_copy_16(v_dst + j * kDstStep, kv.v + off);
      }
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kCopies; ++j) {
    const bool valid = first + t0 + j * kTokenStep < end;
    const std::int64_t off = valid ? kv.offset(seq, kv_head, first + t0 + j * kTokenStep) + column : 0;
    async_copy_16_zfill(k_dst + j * kDstStep, kv.k + off, valid ? 16 : 0);
    async_copy_16_zfill(v_dst + j * kDstStep, kv.v + off, valid ? 16 : 0);
  }
}

// The same slice by bulk copies: lane r < 16 copies K's row of token first + r, lane
// 16 + r V's, one 256-byte copy each at head_dim 128 (into the padded rows ldmatrix
// reads without bank conflicts), all completing on `bar`; lane 0 announces their bytes
// first. Rows past `end` are zeroed by ordinary stores instead: P is 0 there, but
// 0 x NaN in stale shared memory would still reach O. Needs first < end.
template <typename T, int HeadDim>
__device__ __forceinline__ void stage_tc_warp_tile_bulk(const KVView<T>& kv, int seq, int kv_head, int first,
                                                        int end, T* k_warp, T* v_warp, std::uint64_t* bar) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  static_assert(Traits::kWarpTokens == 16, "one lane per row of K and of V");
  static_assert(Traits::kRowBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
  const int lane = threadIdx.x % 32;
  const int rows = min(Traits::kWarpTokens, end - first);
  if (lane == 0) mbarrier_arrive_expect_tx(bar, 2 * rows * Traits::kRowBytes);
  __syncwarp();  // the bytes are announced before any copy can complete them
  const int row = lane % Traits::kWarpTokens;
  T* dst = (lane < Traits::kWarpTokens ? k_warp : v_warp) + row * Traits::kRowElems;
  if (row < rows) {
    const T* src = (lane < Traits::kWarpTokens ? kv.k : kv.v) + kv.offset(seq, kv_head, first + row);
    bulk_copy_to_shared(dst, src, Traits::kRowBytes, bar);
  } else {
#pragma unroll
    for (int c = 0; c < Traits::kRowBytes / 16; ++c) reinterpret_cast<uint4*>(dst)[c] = make_uint4(0, 0, 0, 0);
    fence_proxy_async_shared();  // ordered before the copies that later refill the row
  }
}

// S = Q K^T for one warp's 16 staged tokens (k_warp, its first row): two N tiles of 8
// tokens, accumulators in the MMA's layout.
template <typename T, int HeadDim>
__device__ __forceinline__ void decode_tc_scores(const T* k_warp, const std::uint32_t (&qa)[HeadDim / 16][4],
                                                 float (&s)[2][4]) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  const int lane = threadIdx.x % 32;
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
}

// P as the softmax gives it, for every dimension: decode_tc_fold's default. A P map
// gives the A fragments of P that P V takes for each of kGroups equal spans of the head
// dimension (the quantized kernel folds V's group scales into P: GroupScaledP).
struct UnscaledP {
  static constexpr int kGroups = 1;
  __device__ void operator()(const std::uint32_t (&pa)[4], std::uint32_t (&out)[1][4]) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[0][i] = pa[i];
  }
};

// One warp's 16 tokens first .. first + 15 (those at or past `end` masked), whose scores
// s are in hand, folded into its state: the online softmax, then O += P V with V's rows
// staged at v_warp (P through p_map, per span of dimensions).
template <typename T, int HeadDim, typename PMap = UnscaledP>
__device__ __forceinline__ void decode_tc_fold(float (&s)[2][4], const T* v_warp, int first, int end,
                                               float scale_log2, DecodeTcState<T, HeadDim>& state,
                                               const PMap& p_map = {}) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  const int lane = threadIdx.x % 32;
  // V's fragments are read now, so their shared-memory latency hides under the softmax
  // (up to head_dim 128: at 256 the 64 more registers spill, and V is read as it is used)
  constexpr int kEarlyV = HeadDim <= 128 ? HeadDim / 16 : 0;
  auto load_v = [&](int d, std::uint32_t(&b)[4]) {
    ldmatrix_x4<true>(b, v_warp + ((lane / 8) % 2 * 8 + lane % 8) * Traits::kRowElems + d * 16 + (lane / 16) * 8);
  };
  std::uint32_t vb[kEarlyV > 0 ? kEarlyV : 1][4];
#pragma unroll
  for (int d = 0; d < kEarlyV; ++d) load_v(d, vb[d]);
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
  // once the running max settles (after the first tiles, on most data) no row of the
  // warp changes it, and the 64 rescales per lane are skipped: exp2f(0) is exactly 1
  if (__any_sync(0xffffffffu, correction[0] != 1.0f || correction[1] != 1.0f)) {
#pragma unroll
    for (int d = 0; d < Traits::kDimTiles; ++d) {
      state.o[d][0] *= correction[0];
      state.o[d][1] *= correction[0];
      state.o[d][2] *= correction[1];
      state.o[d][3] *= correction[1];
    }
  }
  // O += P V: P's fragments are S's accumulators, rounded to T
  const std::uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]),
                               pack2<T>(s[1][0], s[1][1]), pack2<T>(s[1][2], s[1][3])};
  constexpr int kDimSteps = HeadDim / 16;
  static_assert(kDimSteps % PMap::kGroups == 0, "P's spans are whole k16 steps of the head dimension");
  std::uint32_t pg[PMap::kGroups][4];
  p_map(pa, pg);
#pragma unroll
  for (int d = 0; d < kDimSteps; ++d) {
    std::uint32_t late[4];
    if (d >= kEarlyV) load_v(d, late);
    const std::uint32_t(&b)[4] = d < kEarlyV ? vb[d] : late;
    const std::uint32_t(&p)[4] = pg[d / (kDimSteps / PMap::kGroups)];
    mma_16816<T>(state.o[2 * d], p, b[0], b[1]);
    mma_16816<T>(state.o[2 * d + 1], p, b[2], b[3]);
  }
}

// One warp's 16 tokens of a staged tile, first .. first + 15 (those at or past `end`
// masked), folded into its state. k_warp and v_warp point at its first rows.
template <typename T, int HeadDim>
__device__ __forceinline__ void decode_tc_warp_tile(const T* k_warp, const T* v_warp, int first, int end,
                                                    const std::uint32_t (&qa)[HeadDim / 16][4], float scale_log2,
                                                    DecodeTcState<T, HeadDim>& state) {
  float s[2][4] = {};
  decode_tc_scores<T, HeadDim>(k_warp, qa, s);
  decode_tc_fold<T, HeadDim>(s, v_warp, first, end, scale_log2, state);
}

// Folds the tiles of (seq, kv_head) into each warp's `state`, for the query heads at
// q_rows (`heads` of them, rows past that are zero). The whole CTA calls it; `pipeline`
// is Traits::kSmemBytes of 16-byte-aligned shared memory, free again on return. The
// first tiles' loads are issued before the query is read, so its latency hides under
// theirs. scale_log2 = softmax scale * log2(e).
template <typename T, int HeadDim, bool Bulk = false>
__device__ __forceinline__ void decode_tc_tiles(const KVView<T>& kv, int seq, int kv_head, const TokenTiles& tiles,
                                                const T* q_rows, int heads, float scale_log2,
                                                DecodeTcState<T, HeadDim>& state, T* pipeline) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  const int warp = threadIdx.x / 32;
  std::uint32_t qa[HeadDim / 16][4];  // loaded once the first tiles are on their way
  auto k_rows = [&](int slot) {
    return pipeline + slot * Traits::kStageElems + warp * Traits::kWarpTokens * Traits::kRowElems;
  };
  auto v_rows = [&](int slot) { return k_rows(slot) + Traits::kTileTokens * Traits::kRowElems; };
  auto warp_first = [&](int i) { return tiles.first(i) + warp * Traits::kWarpTokens; };
  if constexpr (Bulk) {
    // each warp streams its own slices: slot s of warp w completes on bars[s][w]
    auto* bars = reinterpret_cast<std::uint64_t*>(pipeline + Traits::kStages * Traits::kStageElems);
    auto bar = [&](int slot) { return bars + slot * Traits::kWarps + warp; };
    if (threadIdx.x < Traits::kStages * Traits::kWarps) mbarrier_init(bars + threadIdx.x, 1);
    fence_proxy_async_shared();
    __syncthreads();
    auto stage = [&](int i, int slot) {
      if (i < tiles.count && warp_first(i) < tiles.end) {
        stage_tc_warp_tile_bulk<T, HeadDim>(kv, seq, kv_head, warp_first(i), tiles.end, k_rows(slot), v_rows(slot),
                                            bar(slot));
      }
    };
    for (int i = 0; i < Traits::kStages - 1; ++i) stage(i, i);
    load_q_fragments<T, HeadDim>(q_rows, heads, qa);
    // a warp whose slice is past the end is past it in every later tile too; every slice
    // staged is waited for below, so no copy is in flight when the CTA moves on
    for (int i = 0; i < tiles.count && warp_first(i) < tiles.end; ++i) {
      const int slot = i % Traits::kStages;
      mbarrier_wait_parity(bar(slot), static_cast<std::uint32_t>(i / Traits::kStages) & 1u);
      __syncwarp();  // every lane has read the slot refilled next (tile i - 1's)
      stage(i + Traits::kStages - 1, (i + Traits::kStages - 1) % Traits::kStages);
      decode_tc_warp_tile<T, HeadDim>(k_rows(slot), v_rows(slot), warp_first(i), tiles.end, qa, scale_log2, state);
    }
    __syncthreads();
    return;
  }
  auto stage = [&](int i, int slot) {
    stage_tc_warp_tile<T, HeadDim>(kv, seq, kv_head, warp_first(i), tiles.end, k_rows(slot), v_rows(slot));
  };
  auto consume = [&](int i, int slot) {
    if (warp_first(i) < tiles.end) {
      decode_tc_warp_tile<T, HeadDim>(k_rows(slot), v_rows(slot), warp_first(i), tiles.end, qa, scale_log2, state);
    }
  };
  pipeline_prologue<Traits::kStages>(tiles.count, stage);
  load_q_fragments<T, HeadDim>(q_rows, heads, qa);
  pipeline_run<Traits::kStages, TileOwner::kWarp>(tiles.count, stage, consume);
}

}  // namespace ekv
