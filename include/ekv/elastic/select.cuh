#pragma once
// Query-aware block selection on the GPU, the semantics of elastic/reference_select.hpp:
// score_blocks scores every block from its anchors (many CTAs, one warp per block), then
// select_blocks keeps per granule the sinks, the window and the top blocks by score,
// counted by the policy at each sequence's own length (one CTA per granule: a radix
// select of the k-th score, then CUB scans; equal scores go to the lower block),
// ascending, in the selection rows gather_selection reads: [batch][kv_heads][max_selected]
// for LAYER and KVHEAD, [batch][q_heads][max_selected] for QHEAD.

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <string>

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
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/elastic_problem.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/kernels/vec.cuh"

namespace ekv {

inline constexpr int kSelectThreads = 256;
// Blocks per thread of the selection: the fewest that hold a sequence's blocks (the
// radix select's passes cost in items, not in blocks).
inline constexpr int kSelectItemCounts[] = {1, 2, 4, 8, 16};
// The most blocks per sequence, kSelectMaxBlocks (elastic_problem.hpp), at the largest item count
static_assert(kSelectThreads * kSelectItemCounts[sizeof(kSelectItemCounts) / sizeof(int) - 1] == kSelectMaxBlocks,
              "select_supported and the selection kernel agree on the most blocks per sequence");

namespace detail {

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
                        int anchor_num, bool per_query, int warp_blocks, float* scores) {
  // each lane takes contiguous channels: one vector load of an anchor's, one of a query's
  constexpr int kPerLane = HeadDim / 32, kChunk = kScoreChunk<T, HeadDim>;
  constexpr int kAnchorBytes = kPerLane * static_cast<int>(sizeof(T)), kQueryBytes = kPerLane * 4;
  using AnchorVec = Vec<T, kAnchorBytes>;
  const int seq = blockIdx.z, head = blockIdx.y, lane = threadIdx.x % 32;
  const int first = (blockIdx.x * kScoreWarps + threadIdx.x / 32) * warp_blocks;
  const int n = sequence_blocks(min(kv.length(seq, head), kv.capacity()), kv.block_len);
  const int count = max(0, min(warp_blocks, n - first));
  const std::int64_t lane_block = lane < count ? kv.block_id(seq, head, first + lane) : 0;
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
}

// A float's bits as an unsigned key in the same order (-inf lowest, +inf highest).
__device__ __forceinline__ unsigned ordered_key(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
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
  const int lane = threadIdx.x % 32;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      if ((key[i] & mask) == prefix) atomicAdd(&hist[(key[i] >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // lane l holds digits 8l .. 8l + 7; its suffix sum counts the keys of digits >= 8l,
      // so exactly one lane has suffix >= remaining > suffix - mine
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
    __syncthreads();
    prefix = chosen_prefix;
    remaining = chosen_remaining;
    mask |= 255u << shift;
  }
  take = remaining;
  return prefix;
}

// CTA (granule, seq): sinks and window get the top key so they rank first, the rest
// their score (the max over kv heads for LAYER; NaN as -inf); the keep largest are
// flagged, equal scores to the lower block, and a scan over the flags writes them in
// ascending block order. rows: score and selection rows per sequence (q_heads for
// QHEAD, else kv_heads).
template <typename T, int Items>
__global__ void __launch_bounds__(kSelectThreads)
    select_blocks_kernel(const KVView<T> kv, const float* scores, int rows, bool layer, ElasticPolicy policy,
                         std::int32_t* selected, std::int32_t* num_selected, int max_selected,
                         std::int32_t* blocks_then) {
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan;
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
  for (int r = 0; r < (layer ? rows : 1); ++r) {
    const std::int64_t row = static_cast<std::int64_t>(seq) * rows + (layer ? r : granule);
#pragma unroll
    for (int i = 0; i < Items; ++i) {
      if (flag[i] && position[i] < max_selected) selected[row * max_selected + position[i]] = threadIdx.x * Items + i;
    }
    if (threadIdx.x == 0) {
      num_selected[row] = min(keep, max_selected);
      if (blocks_then != nullptr) blocks_then[row] = n;
    }
  }
}

}  // namespace detail

// scores: float [batch][kv_heads][kv.max_blocks_per_seq], each kv head's max over its
// group, or for QHEAD [batch][q_heads][kv.max_blocks_per_seq], each query head's own.
// `device` sizes the grid by its SM count.
template <typename T>
void score_blocks(const KVView<T>& kv, const T* q, int q_heads, const T* anchors, const ElasticConfig& config,
                  float* scores, const DeviceInfo& device, const Stream& stream) {
  if (kv.block_table == nullptr || q == nullptr || anchors == nullptr || scores == nullptr || q_heads % kv.kv_heads ||
      q_heads / kv.kv_heads > kDecodeMaxGroup) {
    throw Error("score_blocks: needs a paged view, q, anchors, scores and q_heads a multiple of kv_heads, group <= " +
                std::to_string(kDecodeMaxGroup));
  }
  if (!is_aligned<32>(anchors)) throw Error("score_blocks: anchors must be 32-byte aligned, as a DeviceBuffer's are");
  dispatch<kDecodeHeadDims>("head_dim", "GPU selection", kv.head_dim, [&](auto dim) {
    constexpr int kChunk = detail::kScoreChunk<T, decltype(dim)::value>;
    const auto ctas = [&](int warp_blocks) {
      const int cta_blocks = detail::kScoreWarps * warp_blocks;
      return static_cast<long>((kv.max_blocks_per_seq + cta_blocks - 1) / cta_blocks) * kv.kv_heads * kv.batch;
    };
    int warp_blocks = detail::kScoreMaxWarpBlocks;
    const long min_ctas = static_cast<long>(detail::kScoreMinCtasPerSm) * std::max(1, device.sm_count);
    while (warp_blocks > kChunk && ctas(warp_blocks) < min_ctas) warp_blocks /= 2;
    const int cta_blocks = detail::kScoreWarps * warp_blocks;
    const dim3 grid((kv.max_blocks_per_seq + cta_blocks - 1) / cta_blocks, kv.kv_heads, kv.batch);
    detail::score_blocks_kernel<T, decltype(dim)::value><<<grid, detail::kScoreWarps * 32, 0, stream.get()>>>(
        kv, q, q_heads, anchors, config.anchor, config.anchor_num, config.retrieval == RetrievalType::kQHead,
        warp_blocks, scores);
  });
  check_launch("score_blocks", stream.get());
}

// From score_blocks' scores for q_heads query heads: selected int32 [batch][rows]
// [max_selected] (ascending logical blocks, as many as policy.counts(the sequence's
// blocks) gives; LAYER writes one list to every row) and num_selected [batch][rows], where
// rows is q_heads for QHEAD and kv_heads otherwise; blocks_then [batch][rows], if given,
// the blocks each sequence had (for gather_selection on the steps that reuse this selection).
template <typename T>
void select_blocks(const KVView<T>& kv, int q_heads, const float* scores, const ElasticPolicy& policy,
                   std::int32_t* selected, std::int32_t* num_selected, int max_selected, const Stream& stream,
                   std::int32_t* blocks_then = nullptr) {
  const ElasticConfig& config = policy.config();
  if (Support s = select_supported(kv.max_blocks_per_seq, kv.head_dim); !s) throw Error("select_blocks: " + s.why);
  if (kv.kv_heads < 1 || q_heads < kv.kv_heads || q_heads % kv.kv_heads != 0) {
    throw Error("select_blocks: q_heads=" + std::to_string(q_heads) + " must be a multiple of kv_heads=" +
                std::to_string(kv.kv_heads));
  }
  const bool per_query = config.retrieval == RetrievalType::kQHead;
  const int rows = per_query ? q_heads : kv.kv_heads;
  // counts grow with the blocks, so the view's most blocks bound every sequence's
  if (scores == nullptr || selected == nullptr || num_selected == nullptr ||
      max_selected < policy.counts(kv.max_blocks_per_seq).total()) {
    throw Error("select_blocks: needs scores, outputs and max_selected >= policy.counts(max_blocks_per_seq).total()");
  }
  const bool layer = config.retrieval == RetrievalType::kLayer;
  int items = 1;
  while (items * kSelectThreads < kv.max_blocks_per_seq) items *= 2;
  dispatch<kSelectItemCounts>("items", "select_blocks", items, [&](auto n) {
    detail::select_blocks_kernel<T, decltype(n)::value>
        <<<dim3(layer ? 1 : rows, kv.batch), kSelectThreads, 0, stream.get()>>>(
            kv, scores, rows, layer, policy, selected, num_selected, max_selected, blocks_then);
  });
  check_launch("select_blocks", stream.get());
}

}  // namespace ekv
