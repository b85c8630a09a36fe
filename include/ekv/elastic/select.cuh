#pragma once
// Query-aware block selection on the GPU, the semantics of elastic/reference_select.hpp.
// score_blocks scores every block from its anchors (many CTAs, one warp per block group);
// select_blocks keeps per granule the sinks, the window and the top blocks by score,
// counted by the policy at each sequence's own length (one CTA per granule: a radix
// select of the k-th score, then CUB scans; equal scores go to the lower block), ascending,
// in the selection rows gather_selection reads: [batch][kv_heads][max_selected] for LAYER
// and KVHEAD, [batch][q_heads][max_selected] for QHEAD. score_and_select_blocks does both
// in one launch (LAYER, KVHEAD): the last scoring CTA of a granule to finish selects it.
// Either can also write the block-sparse rows decode reads (SelectionOut::sparse), so a
// refreshing step needs no gather.

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "ekv/attention/decode_support.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/block_sparse.cuh"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/elastic_problem.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/score_mma.cuh"
#include "ekv/kernels/dependent_launch.cuh"
#include "ekv/kernels/vec.cuh"

namespace ekv {

inline constexpr int kSelectThreads = 256;
// Keys per thread of one pass over a sequence's blocks: up to kSelectTile (4096) blocks
// are selected from registers, a longer sequence in tiles of that many.
inline constexpr int kSelectItems = 16;
inline constexpr int kSelectTile = kSelectThreads * kSelectItems;
// Blocks per thread of the register-resident selection (select_lists_kernel): the fewest
// that hold a sequence's blocks, up to one tile (the radix select's passes cost in items).
inline constexpr int kSelectItemCounts[] = {1, 2, 4, 8, 16};
static_assert(kSelectThreads * kSelectItemCounts[sizeof(kSelectItemCounts) / sizeof(int) - 1] == kSelectTile,
              "the register-resident selection covers one tile");

// Where a selection goes: the logical lists [batch][rows][max_selected] ascending and their
// counts [batch][rows]; blocks_then [batch][rows], if given, the blocks each sequence had
// (for gather_selection on the steps that reuse the selection); and, where
// sparse.tables is set, the block-sparse rows of exactly these blocks, as gather_selection
// would write them (pool block ids, or block-head units with sparse.head_units).
struct SelectionOut {
  std::int32_t* selected = nullptr;
  std::int32_t* num_selected = nullptr;
  int max_selected = 0;
  std::int32_t* blocks_then = nullptr;
  SparseRows sparse;
};

namespace detail {
// A float's bits as an unsigned key in the same order (-inf lowest, +inf highest).
__device__ __forceinline__ unsigned ordered_key(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Warp 0 of a radix select: from the 256-bin histogram of the keys that match `prefix`,
// the digit at `shift` of the remaining-th largest of them; writes the prefix extended by
// it and how many keys of that digit still belong to the largest.
__device__ __forceinline__ void choose_digit(const int* hist, unsigned prefix, int shift, int remaining,
                                             unsigned& chosen_prefix, int& chosen_remaining) {
  const int lane = threadIdx.x % 32;
  // lane l holds digits 8l .. 8l + 7; its suffix sum counts the keys of digits >= 8l, so
  // exactly one lane has suffix >= remaining > suffix - mine
  int mine = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) mine += hist[lane * 8 + j];
  int suffix = mine;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int higher = __shfl_down_sync(0xffffffffu, suffix, off);
    if (lane + off < 32) suffix += higher;
  }
  int cum = suffix - mine;
  if (cum < remaining && suffix >= remaining) {
    int digit = lane * 8 + 7;
    while (cum + hist[digit] < remaining) cum += hist[digit--];
    chosen_prefix = prefix | static_cast<unsigned>(digit) << shift;
    chosen_remaining = remaining - cum;
  }
}

// One pass of a radix select, the whole CTA: fill() adds the keys that match `prefix` to
// hist by their digit at `shift`; then prefix, mask and remaining move to the chosen digit.
template <typename Fill>
__device__ __forceinline__ void radix_pass(int* hist, int shift, unsigned& prefix, unsigned& mask, int& remaining,
                                           unsigned& chosen_prefix, int& chosen_remaining, Fill&& fill) {
  for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
  __syncthreads();
  fill();
  __syncthreads();
  if (threadIdx.x < 32) choose_digit(hist, prefix, shift, remaining, chosen_prefix, chosen_remaining);
  __syncthreads();
  prefix = chosen_prefix;
  remaining = chosen_remaining;
  mask |= 255u << shift;
}

// The score rows one selection reads: block b scores the max over `heads` rows from
// `first` (every kv head's under LAYER, else one row), rows `stride` floats apart.
struct ScoreRows {
  const float* scores = nullptr;
  std::int64_t first = 0;
  int heads = 1;
  int stride = 0;
};

// The whole CTA (kSelectThreads threads) selects one granule of sequence `seq` (len
// tokens, counts from the policy at its blocks): sinks and window get the top key so they
// rank first, the rest their score (NaN as -inf, -0 as +0); the keep largest are kept,
// equal scores to the lower block, by a radix select of the keep-th largest key over 8-bit
// digits from the top, then CUB scans write them ascending. Blocks come in tiles of
// kSelectTile, thread t holding kSelectItems consecutive ones of each; one tile stays in
// registers, more are re-read (from L2) on every pass, so any length is selected. Output
// rows row_begin .. + row_count of the sequence's rows_per_seq all get the list, each with
// its own kv head's pool blocks in out.sparse. (Starting the passes below the keys' common
// prefix, and warp-aggregated histograms, measured slower on the H200: RESULTS.md.) Inlined:
// as a __noinline__ call its key, flag and position arrays lived in local memory (442 local
// loads and stores in the PTX, none inlined), the likely cause of its measured slowness.
template <typename T>
__device__ __forceinline__ void select_row(const KVView<T>& kv, int seq, int len, const BlockCounts& counts,
                                           const ScoreRows& in, const SelectionOut& out, int rows_per_seq,
                                           int row_begin, int row_count) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int hist[256];
  __shared__ unsigned chosen_prefix;
  __shared__ int chosen_remaining;
  const int n = sequence_blocks(len, kv.block_len);
  const int keep = min(n, counts.total());
  const int tiles = max(1, (n + kSelectTile - 1) / kSelectTile);
  unsigned key[kSelectItems];
  const auto block_of = [&](int t, int i) {
    return t * kSelectTile + static_cast<int>(threadIdx.x) * kSelectItems + i;
  };
  const auto load = [&](int t) {
#pragma unroll
    for (int i = 0; i < kSelectItems; ++i) {
      const int b = block_of(t, i);
      float s = -INFINITY;
      if (b < n) {
        for (int h = 0; h < in.heads; ++h) s = fmaxf(s, __ldcg(in.scores + (in.first + h) * in.stride + b));
        s = isnan(s) ? -INFINITY : s + 0.0f;  // -0.0 and +0.0 are one score, as in the reference
      }
      const bool always = b < counts.init || b >= n - counts.local;
      // 0 lies below every score's key, ~0u above (+inf's is 0xff800000)
      key[i] = b >= n ? 0u : always ? ~0u : ordered_key(s);
    }
  };
  if (tiles == 1) load(0);
  unsigned prefix = 0, mask = 0;
  int remaining = keep;
  for (int shift = 24; keep > 0 && shift >= 0; shift -= 8) {
    radix_pass(hist, shift, prefix, mask, remaining, chosen_prefix, chosen_remaining, [&] {
      for (int t = 0; t < tiles; ++t) {
        if (tiles > 1) load(t);
#pragma unroll
        for (int i = 0; i < kSelectItems; ++i) {
          if (block_of(t, i) < n && (key[i] & mask) == prefix) atomicAdd(&hist[(key[i] >> shift) & 255u], 1);
        }
      }
    });
  }
  // keys above the threshold are kept, and the first `take` equal to it
  const unsigned threshold = keep > 0 ? prefix : ~0u;
  const int take = remaining;
  const int kept = min(keep, out.max_selected);
  const std::int64_t first_row = static_cast<std::int64_t>(seq) * rows_per_seq + row_begin;
  std::int32_t* list = out.selected + first_row * out.max_selected;
  int equal_run = 0, kept_run = 0;
  for (int t = 0; t < tiles; ++t) {
    if (tiles > 1) load(t);
    // two arrays for the two scans (registers are short where scoring shares the kernel):
    // flag[] holds the keys equal to the threshold, then the kept ones; position[] the
    // equal ones before each, then the kept ones before each
    int flag[kSelectItems], position[kSelectItems];
    int equal_total = 0, flag_total = 0;
#pragma unroll
    for (int i = 0; i < kSelectItems; ++i) flag[i] = keep > 0 && block_of(t, i) < n && key[i] == threshold;
    Scan(scan).ExclusiveSum(flag, position, equal_total);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kSelectItems; ++i) {
      flag[i] = keep > 0 && block_of(t, i) < n &&
                (key[i] > threshold || (flag[i] && equal_run + position[i] < take));
    }
    Scan(scan).ExclusiveSum(flag, position, flag_total);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kSelectItems; ++i) {
      if (flag[i] && kept_run + position[i] < kept) list[kept_run + position[i]] = block_of(t, i);
    }
    equal_run += equal_total;
    kept_run += flag_total;
  }
  __syncthreads();  // the list is visible to the whole CTA
  // the other rows' copies and the sparse rows, one position per thread: their block-table
  // reads go out together rather than one after another
  const std::int64_t units = out.sparse.head_units ? head_units_per_block(kv) : 1;
  const int heads_per_row = rows_per_seq / kv.kv_heads;
  for (int p = threadIdx.x; p < kept; p += blockDim.x) {
    const int b = list[p];
    for (int r = row_begin; r < row_begin + row_count; ++r) {
      const std::int64_t row = static_cast<std::int64_t>(seq) * rows_per_seq + r;
      if (r != row_begin) out.selected[row * out.max_selected + p] = b;
      if (out.sparse.tables != nullptr) {
        const int head = r / heads_per_row;
        const std::int64_t id = kv.block_id(seq, head, b);
        out.sparse.tables[row * out.sparse.max_per_row + p] =
            static_cast<std::int32_t>(out.sparse.head_units ? id * units + head : id);
        if (out.sparse.attended != nullptr) out.sparse.attended[row * out.sparse.max_per_row + p] = b;
      }
    }
  }
  if (threadIdx.x == 0) {
    // check_selection holds sparse rows at least max_selected long, so they keep all `kept`
    const int last_block = kept > 0 ? list[kept - 1] : 0;
    for (int r = row_begin; r < row_begin + row_count; ++r) {
      const std::int64_t row = static_cast<std::int64_t>(seq) * rows_per_seq + r;
      out.num_selected[row] = kept;
      if (out.blocks_then != nullptr) out.blocks_then[row] = n;
      if (out.sparse.tables != nullptr) {
        out.sparse.lengths[row] =
            kept > 0 ? (kept - 1) * kv.block_len + block_valid_tokens(len, kv.block_len, last_block) : 0;
        if (out.sparse.num_attended != nullptr) out.sparse.num_attended[row] = kept;
      }
    }
  }
}

// The k-th largest of the CTA's keys (1 <= k <= the number of keys), by radix select
// over 8-bit digits from the top: returns it and, through `take`, how many of the keys
// equal to it belong to the k largest.
template <int Items>
__device__ unsigned kth_largest(const unsigned (&key)[Items], int k, int& take) {
  __shared__ int hist[256];
  __shared__ unsigned chosen_prefix;
  __shared__ int chosen_remaining;
  unsigned prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    radix_pass(hist, shift, prefix, mask, remaining, chosen_prefix, chosen_remaining, [&] {
#pragma unroll
      for (int i = 0; i < Items; ++i) {
        if ((key[i] & mask) == prefix) atomicAdd(&hist[(key[i] >> shift) & 255], 1);
      }
    });
  }
  take = remaining;
  return prefix;
}

// The selection of sequences of up to kSelectTile blocks, keys in registers at the fewest
// items per thread that hold them (Items). CTA (granule, seq): sinks and window get the
// top key so they rank first, the rest their score (the max over kv heads for LAYER; NaN
// as -inf); the keep largest are flagged, equal scores to the lower block, and a scan over
// the flags writes them in ascending block order, with each row's block-sparse row where
// out.sparse.tables is set (each row's own kv head's pool blocks; the thread holding the
// last block writes the row's length). rows: score and selection rows per sequence
// (q_heads for QHEAD, else kv_heads).
template <typename T, int Items>
__global__ void __launch_bounds__(kSelectThreads)
    select_lists_kernel(const KVView<T> kv, const float* scores, int rows, bool layer, ElasticPolicy policy,
                        const SelectionOut out) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan;
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const int seq = blockIdx.y, granule = blockIdx.x;
  const int len = min(kv.length(seq, layer ? 0 : granule / (rows / kv.kv_heads)), kv.capacity());
  const int n = sequence_blocks(len, kv.block_len);
  const BlockCounts counts = policy.counts(n);
  const int keep = min(n, counts.total());
  unsigned key[Items];  // blocked: thread t holds blocks t * Items .. + Items - 1
#pragma unroll
  for (int i = 0; i < Items; ++i) {
    const int b = threadIdx.x * Items + i;
    float s = -INFINITY;
    if (b < n) {
      const int heads = layer ? rows : 1;
      for (int h = 0; h < heads; ++h) {
        const int row = layer ? h : granule;
        s = fmaxf(s, scores[(static_cast<std::int64_t>(seq) * rows + row) * kv.max_blocks_per_seq + b]);
      }
      s = isnan(s) ? -INFINITY : s + 0.0f;  // -0.0 and +0.0 are one score, as in the reference
    }
    const bool always = b < counts.init || b >= n - counts.local;
    // 0 lies below every score's key, ~0u above (+inf's is 0xff800000)
    key[i] = b >= n ? 0u : always ? ~0u : ordered_key(s);
  }
  int take = 0;
  const unsigned threshold = keep > 0 ? kth_largest<Items>(key, keep, take) : ~0u;
  // among keys equal to the threshold, the lowest blocks first
  int equal[Items], equal_before[Items];
#pragma unroll
  for (int i = 0; i < Items; ++i) equal[i] = keep > 0 && key[i] == threshold;
  Scan(scan).ExclusiveSum(equal, equal_before);
  __syncthreads();
  int flag[Items], position[Items];
#pragma unroll
  for (int i = 0; i < Items; ++i) {
    flag[i] = keep > 0 && (key[i] > threshold || (equal[i] && equal_before[i] < take));
  }
  Scan(scan).ExclusiveSum(flag, position);
  const int kept = min(keep, out.max_selected);
  const SparseRows& sparse = out.sparse;
  const std::int64_t units = sparse.head_units ? head_units_per_block(kv) : 1;
  const int heads_per_row = rows / kv.kv_heads;
  for (int r = 0; r < (layer ? rows : 1); ++r) {
    const int row_head = layer ? r : granule;
    const std::int64_t row = static_cast<std::int64_t>(seq) * rows + row_head;
    const int head = row_head / heads_per_row;
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      if (!flag[i] || position[i] >= kept) continue;
      const int b = threadIdx.x * Items + i;
      out.selected[row * out.max_selected + position[i]] = b;
      if (sparse.tables == nullptr) continue;
      const std::int64_t id = kv.block_id(seq, head, b);
      sparse.tables[row * sparse.max_per_row + position[i]] =
          static_cast<std::int32_t>(sparse.head_units ? id * units + head : id);
      if (sparse.attended != nullptr) sparse.attended[row * sparse.max_per_row + position[i]] = b;
      // ascending rows end in the highest kept block: only it can be partial
      if (position[i] == kept - 1) {
        sparse.lengths[row] = (kept - 1) * kv.block_len + block_valid_tokens(len, kv.block_len, b);
      }
    }
    if (threadIdx.x == 0) {
      out.num_selected[row] = kept;
      if (out.blocks_then != nullptr) out.blocks_then[row] = n;
      if (sparse.tables != nullptr) {
        if (kept == 0) sparse.lengths[row] = 0;
        if (sparse.num_attended != nullptr) sparse.num_attended[row] = kept;
      }
    }
  }
}


// CTA (granule, seq) of the standalone selection; rows: score and selection rows per
// sequence (q_heads for QHEAD, else kv_heads).
template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_blocks_kernel(const KVView<T> kv, const float* scores, int rows, bool layer, ElasticPolicy policy,
                         SelectionOut out) {
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const int seq = blockIdx.y, granule = blockIdx.x;
  const int len = min(kv.length(seq, layer ? 0 : granule / (rows / kv.kv_heads)), kv.capacity());
  const BlockCounts counts = policy.counts(sequence_blocks(len, kv.block_len));
  const ScoreRows in{scores, static_cast<std::int64_t>(seq) * rows + (layer ? 0 : granule), layer ? rows : 1,
                     kv.max_blocks_per_seq};
  select_row<T>(kv, seq, len, counts, in, out, rows, layer ? 0 : granule, layer ? rows : 1);
}


// What score_blocks_kernel selects after scoring: nothing where arrivals is null;
// otherwise arrivals holds a zeroed counter per granule ([batch] for LAYER, [batch]
// [kv_heads] for KVHEAD), left at zero again.
struct FusedSelect {
  int* arrivals = nullptr;
  bool layer = false;
  ElasticPolicy policy{ElasticConfig{}};
  SelectionOut out;
};

inline constexpr int kScoreWarps = 8;
// The most blocks one warp scores: one table lookup per lane.
inline constexpr int kScoreMaxWarpBlocks = 32;
// Fewer blocks per warp until the grid has about this many CTAs per SM (4: 528 on an
// H100's or H200's 132 SMs), so that short caches still spread over the GPU.
inline constexpr int kScoreMinCtasPerSm = 4;

// Blocks a warp scores at once: the anchor loads of all of them are issued before any is
// used, about 64 bytes per lane in flight.
template <typename T, int HeadDim>
inline constexpr int kScoreChunk = std::clamp(64 / (HeadDim / 32 * static_cast<int>(sizeof(T))), 2, 8);

// Warp w of CTA (x, kv head, seq) scores warp_blocks logical blocks from
// (x * kScoreWarps + w) * warp_blocks for each query head of the group and stores the
// group's max, scores [batch][kv_heads][max_blocks], or per_query each head's own,
// scores [batch][q_heads][max_blocks]. Scoring is latency-bound unless each warp has many
// loads in flight: the length and table loads go out before the query's, every block's
// table entry in one load per lane, and a chunk's anchors together.
template <typename T, int HeadDim>
__global__ void __launch_bounds__(kScoreWarps * 32, 3)
    score_blocks_kernel(const KVView<T> kv, const T* q, int q_heads, const T* anchors, AnchorKind kind,
                        int anchor_num, bool per_query, int warp_blocks, float* scores, const FusedSelect fuse) {
  // each lane takes contiguous channels: one vector load of an anchor's, one of a query's
  constexpr int kPerLane = HeadDim / 32, kChunk = kScoreChunk<T, HeadDim>;
  constexpr int kAnchorBytes = kPerLane * static_cast<int>(sizeof(T)), kQueryBytes = kPerLane * 4;
  using AnchorVec = Vec<T, kAnchorBytes>;
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const int seq = blockIdx.z, head = blockIdx.y, lane = threadIdx.x % 32;
  const int first = (blockIdx.x * kScoreWarps + threadIdx.x / 32) * warp_blocks;
  // a table of whole rows (max_blocks_per_seq entries each) is read beside the length, not
  // after it: one dependent load fewer before the anchors; a ragged table ends where the
  // length says, so there the entry waits for it
  const bool whole_rows = kv.page_indptr == nullptr;
  const bool in_row = lane < warp_blocks && first + lane < kv.max_blocks_per_seq;
  std::int64_t lane_block = whole_rows && in_row ? kv.block_id(seq, head, first + lane) : 0;
  const int n = sequence_blocks(min(kv.length(seq, head), kv.capacity()), kv.block_len);
  const int count = max(0, min(warp_blocks, n - first));
  if (!whole_rows) lane_block = lane < count ? kv.block_id(seq, head, first + lane) : 0;
  // the group's queries, shared by the CTA's warps (blocks of the same kv head)
  __shared__ __align__(32) float q_group[kDecodeMaxGroup * HeadDim];
  const int group = q_heads / kv.kv_heads;
  const T* q_first = q + (static_cast<std::int64_t>(seq) * q_heads + head * group) * HeadDim;
  for (int i = threadIdx.x; i < group * HeadDim; i += blockDim.x) q_group[i] = DTypeTraits<T>::to_float(q_first[i]);
  __syncthreads();
  const int values = anchor_values(kind, anchor_num, HeadDim);
  // single-vector kinds (QUEST's min and max, MEAN, MAX) load a chunk's anchors up front
  const bool single = kind == AnchorKind::kQuest || kind == AnchorKind::kBlockMean || kind == AnchorKind::kBlockMax;
  const auto dot = [&](const Vec<float, kQueryBytes>& qv, const AnchorVec& av) {
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) part += qv[j] * DTypeTraits<T>::to_float(av[j]);
    return part;
  };
  const auto warp_sum = [](float part) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) part += __shfl_xor_sync(0xffffffffu, part, off);
    return part;
  };
  for (int c = 0; c < count; c += kChunk) {
    const int here = min(kChunk, count - c);
    const auto anchor_of = [&](int i) {  // block c + i's anchors, this lane's channels
      const std::int64_t physical = __shfl_sync(0xffffffffu, lane_block, c + i);
      return anchors + (physical * kv.kv_heads + head) * values + lane * kPerLane;
    };
    AnchorVec lo[kChunk], hi[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      if (single && i < here) {
        const T* a = anchor_of(i);
        lo[i] = load<T, kAnchorBytes>(a);
        if (kind == AnchorKind::kQuest) hi[i] = load<T, kAnchorBytes>(a + HeadDim);
      }
    }
    float best[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) best[i] = -INFINITY;
    for (int g = 0; g < group; ++g) {
      const Vec<float, kQueryBytes> qv = load<float, kQueryBytes>(q_group + g * HeadDim + lane * kPerLane);
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        if (i >= here) break;
        float s = -INFINITY;
        if (kind == AnchorKind::kQuest) {
          // the bound max(q * min, q * max) per channel
          float part = 0.0f;
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            part += fmaxf(qv[j] * DTypeTraits<T>::to_float(lo[i][j]), qv[j] * DTypeTraits<T>::to_float(hi[i][j]));
          }
          s = warp_sum(part);
        } else if (single) {
          s = warp_sum(dot(qv, lo[i]));
        } else {
          const T* a = anchor_of(i);
          for (int k = 0; k < values / HeadDim; ++k) s = fmaxf(s, warp_sum(dot(qv, load<T, kAnchorBytes>(a + k * HeadDim))));
        }
        if (per_query && lane == 0) {
          scores[(static_cast<std::int64_t>(seq) * q_heads + head * group + g) * kv.max_blocks_per_seq + first + c + i] =
              s;
        }
        best[i] = fmaxf(best[i], s);
      }
    }
    if (!per_query && lane < here) {
      float mine = best[0];
#pragma unroll
      for (int i = 1; i < kChunk; ++i) mine = lane == i ? best[i] : mine;
      scores[(static_cast<std::int64_t>(seq) * kv.kv_heads + head) * kv.max_blocks_per_seq + first + c + lane] = mine;
    }
  }
  if (fuse.arrivals == nullptr) return;
  // fused selection: the last CTA of the granule (a kv head, or under LAYER the whole
  // sequence) to finish its scores selects, as merge_if_last merges decode's splits
  const bool layer = fuse.layer;
  __threadfence();  // this CTA's scores are visible before it is counted
  __syncthreads();
  bool counted_last = false;
  if (threadIdx.x == 0) {
    int* arrivals = fuse.arrivals + (layer ? seq : static_cast<std::int64_t>(seq) * kv.kv_heads + head);
    const int expected = layer ? static_cast<int>(gridDim.x * gridDim.y) : static_cast<int>(gridDim.x);
    counted_last = atomicAdd(arrivals, 1) == expected - 1;
    if (counted_last) *arrivals = 0;
  }
  if (!__syncthreads_or(counted_last)) return;
  __threadfence();  // and the other CTAs' scores are visible to this one
  const int len = min(kv.length(seq, layer ? 0 : head), kv.capacity());
  const BlockCounts counts = fuse.policy.counts(sequence_blocks(len, kv.block_len));
  const ScoreRows in{scores, static_cast<std::int64_t>(seq) * kv.kv_heads + (layer ? 0 : head), layer ? kv.kv_heads : 1,
                     kv.max_blocks_per_seq};
  select_row<T>(kv, seq, len, counts, in, fuse.out, kv.kv_heads, layer ? 0 : head, layer ? kv.kv_heads : 1);
}

template <typename T>
void launch_score_blocks(const KVView<T>& kv, const T* q, int q_heads, const T* anchors, const ElasticConfig& config,
                         float* scores, const DeviceInfo& device, const Stream& stream, const FusedSelect& fuse,
                         const char* what) {
  if (kv.block_table == nullptr || q == nullptr || anchors == nullptr || scores == nullptr || kv.kv_heads < 1 ||
      q_heads % kv.kv_heads || q_heads / kv.kv_heads > kDecodeMaxGroup) {
    throw Error(std::string(what) + ": needs a paged view, q, anchors, scores and q_heads a multiple of kv_heads, "
                "group <= " + std::to_string(kDecodeMaxGroup));
  }
  if (!is_aligned<32>(anchors)) {
    throw Error(std::string(what) + ": anchors must be 32-byte aligned, as a DeviceBuffer's are");
  }
  if (kv.batch < 1 || kv.batch > 65535 || kv.kv_heads > 65535) {
    throw Error(std::string(what) + ": batch and kv_heads must be 1 to 65535");
  }
  dispatch<kDecodeHeadDims>("head_dim", "GPU selection", kv.head_dim, [&](auto dim) {
    constexpr int kHeadDim = decltype(dim)::value;
    // tensor cores for the single-vector kinds in half and bfloat16 (score_mma.cuh), up to
    // 256 features and with q 16-byte aligned (it reads 16-byte runs); the fused selection
    // keeps the CUDA-core kernel it shares its CTAs with
    const bool quest = config.anchor == AnchorKind::kQuest;
    const bool single = quest || config.anchor == AnchorKind::kBlockMean || config.anchor == AnchorKind::kBlockMax;
    if constexpr (!std::is_same_v<T, float>) {
      if (single && fuse.arrivals == nullptr && (!quest || kHeadDim <= 128) && is_aligned<16>(q)) {
        // the longest spans whose grid still fills one wave of the SMs
        int warp_blocks = kScoreMmaMaxWarpBlocks;
        const long slots = static_cast<long>(kScoreMmaCtasPerSm) * std::max(1, device.sm_count);
        const auto ctas = [&](int wb) {
          const int cta_blocks = kScoreMmaWarps * wb;
          return static_cast<long>((kv.max_blocks_per_seq + cta_blocks - 1) / cta_blocks) * kv.kv_heads * kv.batch;
        };
        while (warp_blocks > kScoreMmaBlocks && ctas(warp_blocks) * 10 < slots * 9) warp_blocks /= 2;
        const int cta_blocks = kScoreMmaWarps * warp_blocks;
        const dim3 grid((kv.max_blocks_per_seq + cta_blocks - 1) / cta_blocks, kv.kv_heads, kv.batch);
        const bool per_query = config.retrieval == RetrievalType::kQHead;
        if (quest) {
          if constexpr (kHeadDim <= 128) {
            launch_dependent(score_blocks_mma_kernel<T, kHeadDim, true>, grid, kScoreMmaWarps * 32, 0, stream.get(),
                             kv, q, q_heads, anchors, per_query, warp_blocks, scores);
          }
        } else {
          launch_dependent(score_blocks_mma_kernel<T, kHeadDim, false>, grid, kScoreMmaWarps * 32, 0, stream.get(), kv,
                           q, q_heads, anchors, per_query, warp_blocks, scores);
        }
        return;
      }
    }
    constexpr int kChunk = kScoreChunk<T, kHeadDim>;
    const auto ctas = [&](int warp_blocks) {
      const int cta_blocks = kScoreWarps * warp_blocks;
      return static_cast<long>((kv.max_blocks_per_seq + cta_blocks - 1) / cta_blocks) * kv.kv_heads * kv.batch;
    };
    int warp_blocks = kScoreMaxWarpBlocks;
    const long min_ctas = static_cast<long>(kScoreMinCtasPerSm) * std::max(1, device.sm_count);
    while (warp_blocks > kChunk && ctas(warp_blocks) < min_ctas) warp_blocks /= 2;
    const int cta_blocks = kScoreWarps * warp_blocks;
    const dim3 grid((kv.max_blocks_per_seq + cta_blocks - 1) / cta_blocks, kv.kv_heads, kv.batch);
    launch_dependent(score_blocks_kernel<T, decltype(dim)::value>, grid, kScoreWarps * 32, 0, stream.get(), kv, q,
                     q_heads, anchors, config.anchor, config.anchor_num, config.retrieval == RetrievalType::kQHead,
                     warp_blocks, scores, fuse);
  });
  check_launch(what, stream.get());
}

// What every selection checks: the view, the rows and the outputs.
template <typename T>
void check_selection(const KVView<T>& kv, int q_heads, const ElasticPolicy& policy, const SelectionOut& out,
                     const char* what) {
  if (Support s = select_supported(kv.max_blocks_per_seq, kv.head_dim); !s) {
    throw Error(std::string(what) + ": " + s.why);
  }
  if (kv.block_table == nullptr || !kv.has_lengths()) {
    throw Error(std::string(what) + ": needs a paged view with lengths");
  }
  if (kv.kv_heads < 1 || q_heads < kv.kv_heads || q_heads % kv.kv_heads != 0) {
    throw Error(std::string(what) + ": q_heads=" + std::to_string(q_heads) + " must be a multiple of kv_heads=" +
                std::to_string(kv.kv_heads));
  }
  // counts grow with the blocks, so the view's most blocks bound every sequence's
  if (out.selected == nullptr || out.num_selected == nullptr ||
      out.max_selected < policy.counts(kv.max_blocks_per_seq).total()) {
    throw Error(std::string(what) + ": needs scores, outputs and max_selected >= "
                "policy.counts(max_blocks_per_seq).total() = " +
                std::to_string(policy.counts(kv.max_blocks_per_seq).total()) + ", got " +
                std::to_string(out.max_selected));
  }
  const SparseRows& sparse = out.sparse;
  if (sparse.tables != nullptr && (sparse.lengths == nullptr || sparse.max_per_row < out.max_selected)) {
    throw Error(std::string(what) + ": sparse rows need lengths and max_per_row >= max_selected (" +
                std::to_string(out.max_selected) + ")");
  }
  if (sparse.tables != nullptr && sparse.head_units && head_units_per_block(kv) == 0) {
    throw Error(std::string(what) + ": block-head units need the view's block stride a multiple of its head stride");
  }
}

}  // namespace detail

// scores: float [batch][kv_heads][kv.max_blocks_per_seq], each kv head's max over its
// group, or for QHEAD [batch][q_heads][kv.max_blocks_per_seq], each query head's own.
// `device` sizes the grid by its SM count.
template <typename T>
void score_blocks(const KVView<T>& kv, const T* q, int q_heads, const T* anchors, const ElasticConfig& config,
                  float* scores, const DeviceInfo& device, const Stream& stream) {
  detail::launch_score_blocks<T>(kv, q, q_heads, anchors, config, scores, device, stream, detail::FusedSelect{},
                                 "score_blocks");
}

// From score_blocks' scores for q_heads query heads: the selection of every granule
// (SelectionOut), as many blocks as policy.counts(the sequence's blocks) gives; LAYER
// writes one list to every row. Rows are q_heads per sequence for QHEAD, else kv_heads.
template <typename T>
void select_blocks(const KVView<T>& kv, int q_heads, const float* scores, const ElasticPolicy& policy,
                   const SelectionOut& out, const Stream& stream) {
  detail::check_selection(kv, q_heads, policy, out, "select_blocks");
  if (scores == nullptr) throw Error("select_blocks: needs scores");
  const ElasticConfig& config = policy.config();
  const int rows = config.retrieval == RetrievalType::kQHead ? q_heads : kv.kv_heads;
  const bool layer = config.retrieval == RetrievalType::kLayer;
  const dim3 grid(layer ? 1 : rows, kv.batch);
  if (kv.max_blocks_per_seq <= kSelectTile) {
    // up to one tile: keys in registers at the fewest items per thread
    int items = 1;
    while (items * kSelectThreads < kv.max_blocks_per_seq) items *= 2;
    dispatch<kSelectItemCounts>("items", "select_blocks", items, [&](auto n) {
      launch_dependent(detail::select_lists_kernel<T, decltype(n)::value>, grid, kSelectThreads, 0, stream.get(), kv,
                       scores, rows, layer, policy, out);
    });
  } else {
    launch_dependent(detail::select_blocks_kernel<T>, grid, kSelectThreads, 0, stream.get(), kv, scores, rows, layer,
                     policy, out);
  }
  check_launch("select_blocks", stream.get());
}

// The lists alone: selected [batch][rows][max_selected], num_selected [batch][rows],
// blocks_then [batch][rows] if given.
template <typename T>
void select_blocks(const KVView<T>& kv, int q_heads, const float* scores, const ElasticPolicy& policy,
                   std::int32_t* selected, std::int32_t* num_selected, int max_selected, const Stream& stream,
                   std::int32_t* blocks_then = nullptr) {
  SelectionOut out;
  out.selected = selected;
  out.num_selected = num_selected;
  out.max_selected = max_selected;
  out.blocks_then = blocks_then;
  select_blocks<T>(kv, q_heads, scores, policy, out, stream);
}

// score_blocks then select_blocks in one launch, for LAYER and KVHEAD (QHEAD: the two
// calls). arrivals: int32, zeroed once before the first call ([batch] for LAYER, [batch]
// [kv_heads] for KVHEAD), left zeroed by each call; not shared by concurrent launches.
template <typename T>
void score_and_select_blocks(const KVView<T>& kv, const T* q, int q_heads, const T* anchors,
                             const ElasticPolicy& policy, float* scores, int* arrivals, const SelectionOut& out,
                             const DeviceInfo& device, const Stream& stream) {
  const ElasticConfig& config = policy.config();
  if (config.retrieval == RetrievalType::kQHead) {
    throw Error("score_and_select_blocks: retrieval qhead selects per query head; supported: layer, kvhead "
                "(qhead: score_blocks, then select_blocks)");
  }
  detail::check_selection(kv, q_heads, policy, out, "score_and_select_blocks");
  if (arrivals == nullptr) throw Error("score_and_select_blocks: needs arrivals (zeroed counters)");
  detail::FusedSelect fuse;
  fuse.arrivals = arrivals;
  fuse.layer = config.retrieval == RetrievalType::kLayer;
  fuse.policy = policy;
  fuse.out = out;
  detail::launch_score_blocks<T>(kv, q, q_heads, anchors, config, scores, device, stream, fuse,
                                 "score_and_select_blocks");
}

}  // namespace ekv
