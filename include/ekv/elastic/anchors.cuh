#pragma once
// Anchors on the GPU: T [num_blocks][kv_heads][anchor_values] indexed by physical block,
// so they travel with the paged pool's blocks. They are kept in the cache's dtype T:
// min, max and keys are values of T already, only a mean is rounded, and scoring reads
// half the bytes float32 anchors would (at 64-token blocks, 1.6% of the K and V bytes
// rather than 3.1% for QUEST in half precision). The values are those of
// elastic/reference_anchors.hpp, computed from the block's valid tokens; after an append
// only the blocks that received tokens are recomputed (at most block_len tokens each), so
// the cost of keeping anchors current does not grow with the cache. Over quantized storage
// (a QuantKVView) the anchors come from the dequantized keys, in T (half or bfloat16), as
// reference_block_anchors(QuantKVView) computes them.

#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/elastic_problem.hpp"

namespace ekv {

// What the GPU computes: every kind; DYNAMIC needs the tokens' importance
// (record_importance, importance.cuh).
inline Support anchors_supported(const ElasticConfig& config, bool has_importance) {
  if (config.anchor == AnchorKind::kDynamic && !has_importance) {
    return {false, "anchor kind dynamic needs token importance (record_importance); without it supported: quest, "
                   "block_mean, block_max, fixed"};
  }
  return {};
}

namespace detail {

// The keys of one block of (seq, head), value c of token t as float: stored values, or
// the dequantized codes of a quantized view.
template <typename T>
struct BlockKeys {
  const T* k;  // the block's first row; rows are token_stride apart
  std::int64_t token_stride;
  __device__ float operator()(int t, int c) const {
    return DTypeTraits<T>::to_float(k[t * token_stride + c]);
  }
};
struct QuantBlockKeys {
  QuantKVView kv;
  int seq, head, first;  // first: the block's first token
  __device__ float operator()(int t, int c) const { return kv.value(false, seq, head, first + t, c); }
};
template <typename T>
__device__ BlockKeys<T> block_keys(const KVView<T>& kv, int seq, int head, int first) {
  return {kv.k + kv.offset(seq, head, first), kv.token_stride};
}
__device__ inline QuantBlockKeys block_keys(const QuantKVView& kv, int seq, int head, int first) {
  return {kv, seq, head, first};
}
// The block geometry (lengths, table, heads) of either view.
template <typename T>
EKV_HOST_DEVICE const KVView<T>& anchor_layout(const KVView<T>& kv) {
  return kv;
}
EKV_HOST_DEVICE inline const KVView<std::uint8_t>& anchor_layout(const QuantKVView& kv) { return kv.codes; }
template <typename T>
int anchor_head_dim(const KVView<T>& kv) {
  return kv.head_dim;
}
inline int anchor_head_dim(const QuantKVView& kv) { return kv.head_dim; }

// CTA (i, kv head, sequence) recomputes logical block first + i, where first is the block
// holding token from[seq] (0 without `from`); threads take channels. View: KVView<T> or
// QuantKVView, d its values per row. fresh: whether the tokens from from[seq] on are new
// (DYNAMIC: their importance starts at 0) or recomputed as they are.
template <typename T, typename View>
__global__ void block_anchors_kernel(const View view, int d, T* anchors, AnchorKind kind, int anchor_num,
                                     const std::int32_t* from, float* importance, bool fresh_tokens,
                                     const std::int32_t* anchor_ids) {
  const auto& kv = anchor_layout(view);
  const int seq = blockIdx.z, head = blockIdx.y;
  const int len = min(kv.length(seq, head), kv.capacity());
  const int block = (from != nullptr ? min(from[seq], len) / kv.block_len : 0) + blockIdx.x;
  const int valid = block_valid_tokens(len, kv.block_len, block);
  if (valid == 0) return;
  const std::int64_t physical = kv.block_id(seq, head, block);
  const std::int64_t slot =
      anchor_ids != nullptr ? anchor_ids[static_cast<std::int64_t>(seq) * kv.max_blocks_per_seq + block] : physical;
  T* out = anchors + (slot * kv.kv_heads + head) * anchor_values(kind, anchor_num, d);
  const auto key = block_keys(view, seq, head, block * kv.block_len);
  // stored with zeros as +0: min and max of -0 and +0 may be either, and a dequantized zero
  // takes its scale's sign; HostKVCache stores the same bits
  const auto store = [](float x) { return DTypeTraits<T>::from_float(x + 0.0f); };
  if (kind == AnchorKind::kDynamic) {
    float* weight = importance + (physical * kv.kv_heads + head) * kv.block_len;
    // tokens new since the last update start with no importance
    const int fresh = from != nullptr && fresh_tokens ? max(0, from[seq] - block * kv.block_len) : valid;
    for (int t = fresh + threadIdx.x; t < valid; t += blockDim.x) weight[t] = 0.0f;
    __syncthreads();
    // the anchor_num most important tokens, ties to the lower; a short block repeats its last
    __shared__ int chosen[kMaxDynamicAnchors];
    if (threadIdx.x == 0) {
      unsigned long long taken[4] = {};  // bit t: token t chosen (block_len <= 256)
      for (int i = 0; i < anchor_num; ++i) {
        int best = -1;
        for (int t = 0; t < valid; ++t) {
          if (!(taken[t / 64] >> (t % 64) & 1ull) && (best < 0 || weight[t] > weight[best])) best = t;
        }
        if (best < 0) best = chosen[i - 1];
        taken[best / 64] |= 1ull << (best % 64);
        chosen[i] = best;
      }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      for (int i = 0; i < anchor_num; ++i) {
        out[i * d + c] = store(key(chosen[i], c));
      }
    }
    return;
  }
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    if (kind == AnchorKind::kFixed) {
      for (int i = 0; i < anchor_num; ++i) {
        out[i * d + c] = store(key(static_cast<int>(std::int64_t{i} * valid / anchor_num), c));
      }
      continue;
    }
    float lo = INFINITY, hi = -INFINITY, sum = 0.0f;
    for (int t = 0; t < valid; ++t) {
      const float x = key(t, c);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
      sum += x;
    }
    if (kind == AnchorKind::kQuest) {
      out[c] = store(lo);
      out[d + c] = store(hi);
    } else {
      out[c] = store(kind == AnchorKind::kBlockMean ? sum / valid : hi);
    }
  }
}

template <typename T, typename View>
void launch_block_anchors(const View& view, T* anchors, const ElasticConfig& config, const std::int32_t* from,
                          int blocks_per_seq, float* importance, const char* what, const Stream& stream,
                          bool fresh_tokens = true, const std::int32_t* anchor_ids = nullptr) {
  const auto& kv = anchor_layout(view);
  if (Support s = anchors_supported(config, importance != nullptr); !s) throw Error(std::string(what) + ": " + s.why);
  if (Support s = config.validate(); !s) throw Error(std::string(what) + ": " + s.why);
  if (config.anchor == AnchorKind::kDynamic &&
      (config.anchor_num > kMaxDynamicAnchors || kv.block_len > kMaxDynamicBlockLen)) {
    throw Error(std::string(what) + ": dynamic anchors support anchor_num up to " + std::to_string(kMaxDynamicAnchors) +
                " and block_len up to " + std::to_string(kMaxDynamicBlockLen));
  }
  if (kv.block_table == nullptr || anchors == nullptr || !kv.has_lengths()) {
    throw Error(std::string(what) + ": needs a paged view with lengths, and anchors");
  }
  if (kv.batch < 1 || kv.batch > 65535 || kv.kv_heads < 1 || kv.kv_heads > 65535 || blocks_per_seq < 1) {
    throw Error(std::string(what) + ": batch and kv_heads must be 1 to 65535");
  }
  block_anchors_kernel<T, View><<<dim3(blocks_per_seq, kv.kv_heads, kv.batch), 128, 0, stream.get()>>>(
      view, anchor_head_dim(view), anchors, config.anchor, config.anchor_num, from, importance, fresh_tokens,
      anchor_ids);
  check_launch(what, stream.get());
}

}  // namespace detail

// Anchors of every block of every sequence, e.g. after a prefill. DYNAMIC reads the
// tokens' importance, float [num_blocks][kv_heads][block_len] by physical block
// (record_importance), and leaves it as it is.
template <typename T>
void build_anchors(const KVView<T>& kv, T* anchors, const ElasticConfig& config, const Stream& stream,
                   float* importance = nullptr) {
  detail::launch_block_anchors(kv, anchors, config, nullptr, kv.max_blocks_per_seq, importance, "build_anchors",
                               stream);
}
// The same from a quantized view's dequantized keys; anchors T (half or bfloat16).
template <typename T>
void build_anchors(const QuantKVView& kv, T* anchors, const ElasticConfig& config, const Stream& stream,
                   float* importance = nullptr) {
  detail::launch_block_anchors(kv, anchors, config, nullptr, kv.codes.max_blocks_per_seq, importance,
                               "build_anchors", stream);
}

// After append_kv of at most max_new_tokens tokens per sequence: recomputes the blocks
// holding tokens from[b] .. lengths[b] - 1, where from (int32 [batch], device) holds the
// lengths before the append. DYNAMIC also zeroes the new tokens' importance, unless
// fresh_tokens is false: the tokens are not new, their blocks recomputed from the
// importance they have (a cache's block or importance written by its caller).
// View: KVView<T>, or a QuantKVView (anchors from the dequantized keys, T half or bfloat16).
template <typename T, typename View = KVView<T>>
void update_anchors(const View& kv, T* anchors, const ElasticConfig& config, const std::int32_t* from,
                    int max_new_tokens, const Stream& stream, float* importance = nullptr, bool fresh_tokens = true) {
  if (from == nullptr || max_new_tokens < 1) throw Error("update_anchors: needs from and max_new_tokens >= 1");
  const int block_len = detail::anchor_layout(kv).block_len;
  const int blocks = (max_new_tokens + block_len - 2) / block_len + 1;  // a run may straddle a boundary
  detail::launch_block_anchors(kv, anchors, config, from, blocks, importance, "update_anchors", stream,
                               fresh_tokens);
}

// update_anchors for a cache whose anchors are numbered apart from its K and V: block i of
// sequence b's anchors go to anchors' block anchor_ids[b x max_blocks_per_seq + i] (int32,
// device), not to its pool block (TieredKVCache: keys in GPU slots, anchors by logical
// block). Not DYNAMIC (its importance is by pool block).
template <typename T>
void update_anchors_at(const KVView<T>& kv, const std::int32_t* anchor_ids, T* anchors, const ElasticConfig& config,
                       const std::int32_t* from, int max_new_tokens, const Stream& stream) {
  if (from == nullptr || anchor_ids == nullptr || max_new_tokens < 1) {
    throw Error("update_anchors_at: needs from, anchor_ids and max_new_tokens >= 1");
  }
  if (config.anchor == AnchorKind::kDynamic) {
    throw Error("update_anchors_at: DYNAMIC anchors are kept by pool block; use QUEST, BLOCK_MEAN, BLOCK_MAX or FIXED");
  }
  const int blocks = (max_new_tokens + kv.block_len - 2) / kv.block_len + 1;
  detail::launch_block_anchors(kv, anchors, config, from, blocks, nullptr, "update_anchors_at", stream, true,
                               anchor_ids);
}

}  // namespace ekv
