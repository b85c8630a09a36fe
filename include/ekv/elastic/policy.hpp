#pragma once
// ElasticPolicy: a config plus a budget, turned into the sink, window and picked block
// counts of each sequence, and the bytes a decode step reads with them.

#include <cstddef>

#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/elastic/budget.hpp"
#include "ekv/elastic/elastic_config.hpp"

namespace ekv {

// Blocks read from one sequence: init first blocks (sinks), local last blocks (window) and
// pick more by score. They never overlap and total() never exceeds the sequence's blocks.
struct BlockCounts {
  int init = 0;
  int local = 0;
  int pick = 0;
  EKV_HOST_DEVICE int total() const { return init + local + pick; }
};

// Bytes of one decode step of one sequence and one layer, all kv heads. `anchors` is read
// only on steps that score (ElasticConfig::refreshes_selection); steps that reuse a
// selection read `kv` alone.
struct BytesRead {
  std::size_t kv = 0;       // K and V of the attended tokens
  std::size_t anchors = 0;  // anchors scanned for scoring (in the cache's dtype)
  std::size_t total() const { return kv + anchors; }
};

class ElasticPolicy {
 public:
  // The budget takes the place of config.pick_block_num: picks get what sinks and window
  // leave of it. Throws ekv::Error with config.validate()'s sentence for an invalid config.
  ElasticPolicy(const ElasticConfig& config, ElasticBudget budget) : config_(config), budget_(budget) {
    const Support valid = config.validate();
    if (!valid) throw Error(valid.why);
  }
  // The config's own counts as a block budget: init + local + pick blocks.
  explicit ElasticPolicy(const ElasticConfig& config)
      : ElasticPolicy(config,
                      ElasticBudget::blocks(config.init_block_num + config.local_block_num + config.pick_block_num)) {}

  const ElasticConfig& config() const { return config_; }
  const ElasticBudget& budget() const { return budget_; }

  // Sinks take the budget first, then the window, then picks get what is left; a sequence
  // no longer than the budget is read whole.
  EKV_HOST_DEVICE BlockCounts counts(int num_blocks) const {
    const int budget = budget_.budget_blocks(num_blocks);
    BlockCounts c;
    c.init = config_.init_block_num < budget ? config_.init_block_num : budget;
    c.local = config_.local_block_num < budget - c.init ? config_.local_block_num : budget - c.init;
    c.pick = budget - c.init - c.local;
    return c;
  }

  // Each kv head reads one block list, as for LAYER and KVHEAD. Under QHEAD the query heads
  // of a group may pick different blocks and the group reads their union, which this
  // undercounts: a bandwidth efficiency computed from it stays conservative. The partial
  // last block counts its valid tokens when the window holds it (local_block_num > 0) and
  // whole when it is picked. Scoring scans the anchors of the blocks that are neither sinks
  // nor window, and only when something is left to pick.
  BytesRead bytes_read(int seq_len, int block_len, int kv_heads, int head_dim, DType kv_dtype) const {
    return bytes_read(seq_len, block_len, kv_heads, head_dim, dense_storage(kv_dtype), kv_dtype);
  }
  // The same for K and V stored as `storage` (quantized rows count their codes and
  // scales, kv_row_bytes), with anchors in anchor_dtype (quantized caches keep them in
  // float16 or bfloat16).
  BytesRead bytes_read(int seq_len, int block_len, int kv_heads, int head_dim, KVStorage storage,
                       DType anchor_dtype) const {
    const int num_blocks = sequence_blocks(seq_len, block_len);
    const BlockCounts c = counts(num_blocks);
    const bool everything = c.total() == num_blocks;
    std::size_t tokens = static_cast<std::size_t>(c.total()) * block_len;
    if (everything || c.local > 0) tokens -= static_cast<std::size_t>(num_blocks) * block_len - seq_len;
    const std::size_t per_token = static_cast<std::size_t>(kv_heads) * kv_row_bytes(storage, head_dim);
    const int scored = everything || c.pick == 0 ? 0 : num_blocks - c.init - c.local;
    const std::size_t per_anchor_block = static_cast<std::size_t>(kv_heads) *
                                         anchor_values(config_.anchor, config_.anchor_num, head_dim) *
                                         dtype_size(anchor_dtype);
    return {2 * tokens * per_token, scored * per_anchor_block};
  }

 private:
  ElasticConfig config_;
  ElasticBudget budget_;
};

}  // namespace ekv
