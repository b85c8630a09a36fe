#pragma once
// ElasticProblem: one elastic decode step's shapes (the dense decode problem, the paged
// cache's block length, the policy, the tokens a step appends), what GPU elastic decode
// supports for them, and the anchors they need. ElasticDecode (elastic_decode.cuh) is
// sized from one; supports() never throws and says what is supported.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <optional>
#include <string>

#include "ekv/attention/decode_support.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/policy.hpp"

namespace ekv {

// The most blocks one sequence may have for GPU selection (64M tokens at 64-token blocks):
// selection runs in tiles of 4096 blocks (elastic/select.cuh), so the bound is only that
// block counts and score offsets stay far inside int32.
inline constexpr int kSelectMaxBlocks = 1 << 20;
// DYNAMIC anchors a block may keep, and the longest block they are chosen from: the choice
// lives in shared memory (elastic/anchors.cuh).
inline constexpr int kMaxDynamicAnchors = 16;
inline constexpr int kMaxDynamicBlockLen = 256;

// What GPU selection handles: head dims are decode's own (kDecodeHeadDims).
inline Support select_supported(int blocks_per_seq, int head_dim) {
  if (blocks_per_seq > kSelectMaxBlocks) {
    return {false, "blocks per sequence " + std::to_string(blocks_per_seq) + " not supported by GPU selection; "
                   "supported: up to " + std::to_string(kSelectMaxBlocks) + " (use longer blocks)"};
  }
  return check_supported<kDecodeHeadDims>("head_dim", "GPU selection", head_dim);
}

// Whether ElasticDecode may attend exactly where elastic attention cannot pay (kAuto), or
// must select whatever the shape (kNever: tests, measurements of the elastic path itself).
enum class ExactFallback { kAuto, kNever };

// Below this many K and V bytes skipped per step (all sequences), selection costs more
// than the reads it saves. Measured on the H200 at batch 1 (fp16, 8 kv heads, dim 128,
// RESULTS.md "The elastic step's launches"): skipping 29-34 MB (1 x 8K at C = 8 and 16,
// 1 x 16K at C = 2) ran 0.84-0.87x of exact, 50 MB (1 x 16K at C = 4) 1.02x, 59 MB 1.14x;
// speed crosses exact's near 48 MB.
inline constexpr double kElasticBreakEvenBytes = 48.0e6;
// A budget that covers more than this share of the blocks attends exactly.
inline constexpr double kElasticMostShare = 0.75;

struct ElasticProblem {
  DecodeProblem decode;  // max_seq_len: the longest sequence, which sizes the selection
  int block_len = 64;    // tokens per block of the paged cache
  ElasticPolicy policy{ElasticConfig{}};
  int max_new_tokens = 1;  // tokens a sequence gains per step: room for blocks appended between refreshes
  ExactFallback exact_fallback = ExactFallback::kAuto;
  // How the cache stores K and V where not as decode.dtype's values: FP8, Q8_0 or Q4_0
  // (quant.hpp), for half or bfloat16 queries; anchors stay in decode.dtype.
  std::optional<KVStorage> kv_storage = std::nullopt;

  KVStorage storage() const { return kv_storage.value_or(dense_storage(decode.dtype)); }
  // Blocks of the longest sequence.
  int max_blocks() const { return sequence_blocks(std::max(1, decode.max_seq_len), block_len); }
  // Anchor values per pool block and kv head, in the cache's dtype.
  int anchor_values_per_block() const {
    return anchor_values(policy.config().anchor, policy.config().anchor_num, decode.head_dim);
  }
  // The anchors of a pool of num_pool_blocks blocks, as build_anchors writes them:
  // T [num_pool_blocks][kv_heads][anchor_values_per_block()], indexed by physical block.
  std::size_t anchor_elems(std::size_t num_pool_blocks) const {
    return num_pool_blocks * static_cast<std::size_t>(decode.kv_heads) * anchor_values_per_block();
  }
  std::size_t anchor_bytes(std::size_t num_pool_blocks) const {
    return anchor_elems(num_pool_blocks) * dtype_size(decode.dtype);
  }
  // K and V bytes a step skips at the longest sequence, over the batch.
  double skipped_bytes() const {
    const int blocks = max_blocks();
    const int read = std::min(blocks, policy.counts(blocks).total());
    return static_cast<double>(blocks - read) * block_len * 2.0 * kv_row_bytes(storage(), decode.head_dim) *
           decode.kv_heads * decode.batch;
  }
  // Whether a step attends exactly instead: kAuto and the budget covers most of the blocks
  // or skips fewer bytes than kElasticBreakEvenBytes.
  bool attends_exactly() const {
    if (exact_fallback == ExactFallback::kNever) return false;
    const int blocks = max_blocks();
    return policy.counts(blocks).total() > kElasticMostShare * blocks || skipped_bytes() < kElasticBreakEvenBytes;
  }
};

// Never throws: ok, or the first problem in a sentence naming the value and what is supported.
inline Support supports(const ElasticProblem& p) {
  if (Support s = supports(p.decode); !s) return s;
  if (p.block_len < 1) {
    return {false, "block_len=" + std::to_string(p.block_len) + " not supported by elastic decode; supported: 1 or more"};
  }
  if (p.max_new_tokens < 1) {
    return {false, "max_new_tokens=" + std::to_string(p.max_new_tokens) +
                       " not supported by elastic decode; supported: 1 or more"};
  }
  if (Support s = p.policy.config().validate(); !s) return s;
  const ElasticConfig& config = p.policy.config();
  // FIXED anchors may outnumber a block's tokens (they repeat tokens; DYNAMIC's are 16 at
  // most, below), but anchor_values_per_block() is an int: a product past it would
  // overflow (UBSan, on tests/fuzz's kv_cache_config)
  if (config.anchor == AnchorKind::kFixed || config.anchor == AnchorKind::kDynamic) {
    const int most = std::numeric_limits<int>::max() / p.decode.head_dim;
    if (config.anchor_num > most) {
      return {false, "anchor_num=" + std::to_string(config.anchor_num) + " not supported with head_dim=" +
                         std::to_string(p.decode.head_dim) + "; supported: 1 to " + std::to_string(most) +
                         " (anchor_num x head_dim anchor values per block must fit an int)"};
    }
  }
  if (Support s = select_supported(p.max_blocks(), p.decode.head_dim); !s) return s;
  if (p.kv_storage && *p.kv_storage != dense_storage(p.decode.dtype)) {
    const KVStorage storage = *p.kv_storage;
    if (!is_quantized(storage)) {
      return {false, std::string("kv storage=") + to_string(storage) + " not supported with dtype=" +
                         to_string(p.decode.dtype) + " queries; supported: the queries' own type, fp8, q8_0, q4_0"};
    }
    if (p.decode.dtype != DType::kFloat16 && p.decode.dtype != DType::kBFloat16) {
      return {false, std::string("dtype=") + to_string(p.decode.dtype) + " not supported with kv storage " +
                         to_string(storage) + "; supported: float16, bfloat16"};
    }
    if (Support s = kv_storage_supports(storage, p.decode.head_dim); !s) return s;
    if (config.retrieval == RetrievalType::kQHead) {
      return {false, std::string("retrieval_type=QHEAD not supported with kv storage ") + to_string(storage) +
                         "; supported: LAYER, KVHEAD"};
    }
  }
  if (config.anchor == AnchorKind::kDynamic) {
    if (config.anchor_num > kMaxDynamicAnchors) {
      return {false, "anchor_num=" + std::to_string(config.anchor_num) +
                         " not supported by dynamic anchors; supported: 1 to " + std::to_string(kMaxDynamicAnchors)};
    }
    if (p.block_len > kMaxDynamicBlockLen) {
      return {false, "block_len=" + std::to_string(p.block_len) + " not supported by dynamic anchors; supported: 1 to " +
                         std::to_string(kMaxDynamicBlockLen)};
    }
  }
  return {};
}

}  // namespace ekv
