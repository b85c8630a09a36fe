#pragma once
// kvcache::KVCache: the CPU backend's cache (HostKVCache) under KTransformers' spelling,
// for code written against that interface. The call names and the older argument lists
// stay: dump_kvcache(block_table, cache_total_len, path); attn(..., block_table,
// cache_seqlens, pick_block_num, init_block_num, local_block_num) with the counts
// optional; the _fp16 block accessors. The types are ekv's: every tensor a TensorView,
// the counts std::optional<int> (no count: exact attention), and errors thrown as
// ekv::Error instead of a false return.
//
// The cache keeps its own block tables (BlockAllocator): a block_table or cache_seqlens
// given here (int32, host memory, as ekv::Span) is checked against them, and a
// disagreement throws saying which entry differs; nothing else about them is read.
// block_table() gives the rows to pass.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"
#include "ekv/cpu/host_kv_cache.hpp"

namespace kvcache {

using ekv::AnchorType;
using ekv::GGMLType;
using ekv::KVCacheConfig;
using ekv::RetrievalType;
using ekv::TensorView;

class KVCache {
 public:
  explicit KVCache(const KVCacheConfig& config) : cache_(config) {}

  // The cache underneath, for what the older interface does not have (append,
  // free_sequence, memory, attended_blocks).
  ekv::HostKVCache& cache() { return cache_; }
  const ekv::HostKVCache& cache() const { return cache_; }

  // int32 [max_batch_size][max_seq_block_num]: each sequence's pool blocks, -1 where none.
  const std::vector<std::int32_t>& block_table() const { return cache_.allocator().tables(); }

  void load_kvcache(const std::string& tensor_file_path) { cache_.load_kvcache(tensor_file_path); }
  // block_table: sequence 0's first pool blocks, int32; cache_total_len: its length. Both
  // must be the cache's; the file holds the whole cache (HostKVCache::dump_kvcache).
  void dump_kvcache(ekv::Span<const std::int32_t> block_table, int cache_total_len,
                    const std::string& tensor_file_path) const {
    if (cache_total_len != cache_.get_cache_total_len(0)) {
      throw ekv::Error(where("dump_kvcache") + ": cache_total_len=" + std::to_string(cache_total_len) +
                       ", but sequence 0 holds " + std::to_string(cache_.get_cache_total_len(0)) + " tokens");
    }
    check_rows("dump_kvcache", block_table, 1);
    cache_.dump_kvcache(tensor_file_path);
  }
  void update_cache_total_len(int cache_total_len) { cache_.update_cache_total_len(cache_total_len, 0); }
  int get_cache_total_len() const { return cache_.get_cache_total_len(0); }

  // One layer's attention for q [batch][q_head_num][head_dim] (HostKVCache::attn).
  // block_table (int32 [batch][width], any width that holds the sequences' blocks) and
  // cache_seqlens (int32 [batch]), where given, must be the cache's rows and token counts.
  // No pick_block_num: exact attention.
  void attn(const TensorView& q, const TensorView& output, const TensorView& attn_lse, int layer_idx,
            int generate_token_idx, ekv::Span<const std::int32_t> block_table = {},
            ekv::Span<const std::int32_t> cache_seqlens = {}, std::optional<int> pick_block_num = std::nullopt,
            std::optional<int> init_block_num = std::nullopt, std::optional<int> local_block_num = std::nullopt) {
    const int batch = q.ndim == 3 ? static_cast<int>(q.shape[0]) : 0;  // HostKVCache::attn checks q itself
    if (!cache_seqlens.empty() && batch > 0) {
      if (cache_seqlens.size() != static_cast<std::size_t>(batch)) {
        throw ekv::Error(where("attn") + ": cache_seqlens holds " + std::to_string(cache_seqlens.size()) +
                         " lengths for a batch of " + std::to_string(batch));
      }
      for (int b = 0; b < batch; ++b) {
        if (cache_seqlens[b] != cache_.get_cache_total_len(b)) {
          throw ekv::Error(where("attn") + ": cache_seqlens[" + std::to_string(b) + "]=" +
                           std::to_string(cache_seqlens[b]) + ", but sequence " + std::to_string(b) + " holds " +
                           std::to_string(cache_.get_cache_total_len(b)) + " tokens");
        }
      }
    }
    if (!block_table.empty() && batch > 0) check_rows("attn", block_table, batch);
    cache_.attn(q, output, attn_lse, layer_idx, generate_token_idx, pick_block_num.value_or(-1),
                init_block_num.value_or(1), local_block_num.value_or(1));
  }

  // Pool block block_idx of layer layer_id, k and v fp16 [kv_head_num][block_len][head_dim]
  // (a cache of another kv_type throws, naming it).
  void update_kvcache_one_block_fp16(const TensorView& k_in, const TensorView& v_in, int layer_id, int block_idx) {
    fp16("update_kvcache_one_block_fp16");
    cache_.update_kvcache_one_block(k_in, v_in, layer_id, block_idx);
  }
  void get_kvcache_one_block_fp16(const TensorView& k_in, const TensorView& v_in, int layer_id, int block_idx) const {
    fp16("get_kvcache_one_block_fp16");
    cache_.get_kvcache_one_block(k_in, v_in, layer_id, block_idx);
  }
  void update_importance_one_block(const TensorView& importance, int layer_id, int block_idx) {
    cache_.update_importance_one_block(importance, layer_id, block_idx);
  }
  void get_importance_one_block(const TensorView& importance, int layer_id, int block_idx) const {
    cache_.get_importance_one_block(importance, layer_id, block_idx);
  }
  void get_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx) const {
    cache_.get_anchor_one_block(anchor, layer_id, block_idx);
  }
  void update_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx) {
    cache_.update_anchor_one_block(anchor, layer_id, block_idx);
  }

 private:
  static std::string where(const char* call) { return std::string("kvcache::KVCache::") + call; }

  void fp16(const char* call) const {
    if (cache_.config().kv_type != GGMLType::kFloat16) {
      throw ekv::Error(where(call) + ": the cache's kv_type is " + ekv::to_string(cache_.config().kv_type) +
                       "; the _fp16 accessors need float16 (get/update_kvcache_one_block take any kv_type)");
    }
  }

  // block_table [rows][width] flattened: each row's blocks must be the cache's.
  void check_rows(const char* call, ekv::Span<const std::int32_t> table, int rows) const {
    const int block_len = cache_.config().block_len;
    if (table.size() % static_cast<std::size_t>(rows) != 0) {
      throw ekv::Error(where(call) + ": block_table holds " + std::to_string(table.size()) + " entries, not " +
                       std::to_string(rows) + " rows of one width");
    }
    const std::size_t width = table.size() / static_cast<std::size_t>(rows);
    const std::size_t row_len = static_cast<std::size_t>(cache_.allocator().max_blocks_per_seq());
    for (int s = 0; s < rows; ++s) {
      const std::size_t held = static_cast<std::size_t>(ekv::sequence_blocks(cache_.get_cache_total_len(s), block_len));
      if (width < held) {
        throw ekv::Error(where(call) + ": block_table rows hold " + std::to_string(width) + " blocks; sequence " +
                         std::to_string(s) + " has " + std::to_string(held));
      }
      for (std::size_t b = 0; b < held; ++b) {
        const std::int32_t want = block_table()[s * row_len + b], got = table[s * width + b];
        if (got != want) {
          throw ekv::Error(where(call) + ": block_table[" + std::to_string(s) + "][" + std::to_string(b) + "]=" +
                           std::to_string(got) + ", but the cache holds that block in pool block " +
                           std::to_string(want) + " (pass the rows of block_table())");
        }
      }
    }
  }

  ekv::HostKVCache cache_;
};

}  // namespace kvcache
