#pragma once
// HostKVCache: the multi-layer paged KV cache object on the CPU backend, host memory only,
// so that a machine without a GPU runs the whole KVCache interface. The names are the
// older KVCache's (KTransformers): attn, update_cache_total_len, get_cache_total_len,
// get_kvcache_one_block / update_kvcache_one_block, get/update_importance_one_block,
// get/update_anchor_one_block, dump_kvcache, load_kvcache.
//
// Storage, per layer, in one pool of config.max_block_num blocks shared by every sequence:
//   k, v        kv_type [max_block_num][kv_head_num][block_len][head_dim]
//   anchors     kv_type [max_block_num][kv_head_num][config.anchor_values()]
//   importance  float   [max_block_num][kv_head_num][block_len]
// One BlockAllocator hands out blocks for all layers (a sequence's logical block b is the
// same pool block in every layer); each layer keeps its own token count per sequence, as a
// forward pass appends layer after layer.
//
// Built from the pieces: cpu_append_kv, reference_block_anchors, CpuElasticDecode
// (selection from this cache's anchors), cpu_decode; the file is cache/safetensors.hpp's.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cache/block_allocator.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/safetensors.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/version.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/cpu_elastic.hpp"
#include "ekv/cpu/thread_pool.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/reference_anchors.hpp"

namespace ekv {

// What a cache holds and uses, in bytes and blocks.
struct KVCacheMemory {
  std::size_t bytes_per_layer = 0;  // K, V, anchors and importance of one layer's pool
  std::size_t bytes_per_token = 0;  // K and V of one token, all layers and kv heads
  std::size_t total_bytes = 0;      // every layer's pool, plus the block tables
  int blocks_used = 0;
  int blocks_free = 0;
};

// The format a dump carries in its metadata (format, format_version): load refuses others.
inline constexpr const char* kKVCacheFileFormat = "ekv-kvcache";
inline constexpr int kKVCacheFileVersion = 1;

inline const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "F32";
    case DType::kFloat16: return "F16";
    case DType::kBFloat16: return "BF16";
    case DType::kFloat8E4M3: return "F8_E4M3";
  }
  return "invalid";
}

class HostKVCache {
 public:
  // Throws ekv::Error with validate()'s message for a config it does not support.
  explicit HostKVCache(const KVCacheConfig& config) : config_(config) {
    if (Support s = config.validate(); !s) throw Error(s.why);
    const std::size_t blocks = static_cast<std::size_t>(config.max_block_num);
    const std::size_t heads = static_cast<std::size_t>(config.kv_head_num);
    const std::size_t elem = dtype_size(config.kv_type);
    layers_.resize(config.layer_num);
    for (Layer& layer : layers_) {
      layer.k.assign(blocks * config.block_elems() * elem, 0);
      layer.v.assign(layer.k.size(), 0);
      layer.anchors.assign(blocks * heads * config.anchor_values() * elem, 0);
      layer.importance.assign(blocks * heads * config.block_len, 0.0f);
      layer.lengths.assign(config.max_batch_size, 0);
    }
    allocator_ = BlockAllocator(config.max_block_num, config.max_batch_size, config.max_seq_block_num(),
                                config.block_len);
    pool_ = std::make_unique<CPUInfer>(config.max_thread_num);
  }

  const KVCacheConfig& config() const { return config_; }
  const BlockAllocator& allocator() const { return allocator_; }
  CPUInfer& pool() { return *pool_; }

  // Appends new_tokens tokens to each of the first `batch` sequences of layer layer_idx.
  // k_new, v_new: host, kv_type [batch][new_tokens][kv_head_num][head_dim]. Gives the
  // sequences the blocks they need first: where the pool cannot, throws (the pool is
  // full) and nothing is written. Then brings the anchors of every block that changed up
  // to date (DYNAMIC: from the importance stored so far).
  void append(int layer_idx, const TensorView& k_new, const TensorView& v_new) {
    check_layer("append", layer_idx);
    const std::int64_t batch = k_new.ndim == 4 ? k_new.shape[0] : -1;
    const std::int64_t tokens = k_new.ndim == 4 ? k_new.shape[1] : -1;
    if (batch < 1 || batch > config_.max_batch_size || tokens < 0) {
      throw Error("HostKVCache::append: k_new has shape " + k_new.shape_string() +
                  "; needs [batch, new_tokens, kv_head_num, head_dim] with batch 1 to max_batch_size=" +
                  std::to_string(config_.max_batch_size));
    }
    for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"k_new", k_new}, {"v_new", v_new}}) {
      t.check("HostKVCache::append", name, config_.kv_type, {batch, tokens, config_.kv_head_num, config_.head_dim},
              "[batch, new_tokens, kv_head_num, head_dim]", DeviceKind::kHost);
    }
    Layer& layer = layers_[layer_idx];
    std::vector<std::int32_t> grown(layer.lengths.begin(), layer.lengths.begin() + batch);
    for (std::int32_t& len : grown) {
      if (std::int64_t{len} + tokens > config_.max_seq_len()) {
        throw Error("HostKVCache::append: a sequence of " + std::to_string(len) + " tokens cannot take " +
                    std::to_string(tokens) + " more; a sequence holds up to " + std::to_string(config_.max_seq_len()) +
                    " (max_seq_block_num() x block_len)");
      }
      len += static_cast<std::int32_t>(tokens);
    }
    allocator_.grow(grown);  // throws, changing nothing, where the pool is full
    const std::vector<std::int32_t> before(layer.lengths.begin(), layer.lengths.begin() + batch);
    with_type([&](auto tag) {
      using T = typename decltype(tag)::type;
      KVView<T> kv = view<T>(layer_idx);
      kv.batch = static_cast<int>(batch);
      cpu_append_kv<T>(kv, k_new.as<const T>(), v_new.as<const T>(), static_cast<int>(tokens));
      for (int b = 0; b < batch; ++b) {
        for (int block = before[b] / config_.block_len; block < sequence_blocks(layer.lengths[b], config_.block_len);
             ++block) {
          refresh_anchors<T>(layer_idx, b, block);
        }
      }
    });
  }

  // One layer's attention for decode step generate_token_idx (0 at the first step) of the
  // first `batch` sequences, batch = q.shape[0]. q, output: kv_type [batch][q_head_num]
  // [head_dim]; attn_lse: float [batch][q_head_num] (natural log). pick_block_num < 0 reads
  // every block (exact); otherwise elastic: init_block_num sinks, local_block_num window
  // and pick_block_num blocks by score, per retrieval_type, reselected every token_step
  // steps and shared by layer_step layers from layer_offset on (a layer that shares calls
  // after the layer that selects, in the same step).
  void attn(const TensorView& q, const TensorView& output, const TensorView& attn_lse, int layer_idx,
            int generate_token_idx, int pick_block_num = -1, int init_block_num = 1, int local_block_num = 1) {
    check_layer("attn", layer_idx);
    const std::int64_t batch = q.ndim == 3 ? q.shape[0] : -1;
    if (batch < 1 || batch > config_.max_batch_size) {
      throw Error("HostKVCache::attn: q has shape " + q.shape_string() +
                  "; needs [batch, q_head_num, head_dim] with batch 1 to max_batch_size=" +
                  std::to_string(config_.max_batch_size));
    }
    q.check("HostKVCache::attn", "q", config_.kv_type, {batch, config_.q_head_num, config_.head_dim},
            "[batch, q_head_num, head_dim]", DeviceKind::kHost);
    output.check("HostKVCache::attn", "output", config_.kv_type, {batch, config_.q_head_num, config_.head_dim},
                 "[batch, q_head_num, head_dim]", DeviceKind::kHost);
    attn_lse.check("HostKVCache::attn", "attn_lse", DType::kFloat32, {batch, config_.q_head_num},
                   "[batch, q_head_num]", DeviceKind::kHost);
    if (generate_token_idx < 0) {
      throw Error("HostKVCache::attn: generate_token_idx=" + std::to_string(generate_token_idx) + " must be >= 0");
    }
    const Layer& layer = layers_[layer_idx];
    for (int b = 0; b < batch; ++b) {
      if (layer.lengths[b] < 1) {
        throw Error("HostKVCache::attn: sequence " + std::to_string(b) + " of layer " + std::to_string(layer_idx) +
                    " holds no tokens; append before attending");
      }
    }
    with_type([&](auto tag) {
      using T = typename decltype(tag)::type;
      KVView<T> kv = view<T>(layer_idx);
      kv.batch = static_cast<int>(batch);
      if (pick_block_num < 0) {
        cpu_decode<T>(*pool_, kv, q.as<const T>(), config_.q_head_num, output.as<T>(), attn_lse.as<float>());
        return;
      }
      ElasticConfig elastic = config_.elastic_config();
      elastic.pick_block_num = pick_block_num;
      elastic.init_block_num = init_block_num;
      elastic.local_block_num = local_block_num;
      if (Support s = elastic.validate(); !s) throw Error("HostKVCache::attn: " + s.why);
      const int owner = elastic.selection_layer(layer_idx);
      auto& slot = selections_[owner];
      auto* step = std::get_if<CpuElasticDecode<T>>(&slot.step);
      const bool fresh = step == nullptr || slot.batch != batch || slot.config_text != counts_text(elastic);
      if (owner == layer_idx && (fresh || elastic.refreshes_selection(generate_token_idx))) {
        if (fresh) {
          slot.step.emplace<CpuElasticDecode<T>>(kv, config_.q_head_num, ElasticPolicy(elastic));
          slot.batch = static_cast<int>(batch);
          slot.config_text = counts_text(elastic);
          step = &std::get<CpuElasticDecode<T>>(slot.step);
        }
        step->select_from(*pool_, kv, q.as<const T>(), [&](int b, int h, int block) {
          return stored_anchors<T>(layer_idx, b, h, block);
        });
      } else if (fresh) {
        throw Error("HostKVCache::attn: layer " + std::to_string(layer_idx) + " shares layer " +
                    std::to_string(owner) + "'s selection (layer_step=" + std::to_string(config_.layer_step) +
                    "), which has not selected with these counts and batch: attend layer " + std::to_string(owner) +
                    " first in each step");
      }
      step->attend(*pool_, kv, q.as<const T>(), output.as<T>(), attn_lse.as<float>());
    });
  }

  // The blocks the last elastic attn of layer_idx's selection read for (seq, kv_head),
  // ascending logical blocks; empty before any.
  std::vector<int> attended_blocks(int layer_idx, int seq, int kv_head) const {
    check_layer("attended_blocks", layer_idx);
    const auto it = selections_.find(config_.elastic_config().selection_layer(layer_idx));
    if (it == selections_.end()) return {};
    return std::visit(
        [&](const auto& step) -> std::vector<int> {
          if constexpr (std::is_same_v<std::decay_t<decltype(step)>, std::monostate>) {
            return {};
          } else {
            return step.attended(seq, kv_head);
          }
        },
        it->second.step);
  }

  // Tokens of sequence seq (layer 0's count; every layer's after a whole forward pass).
  int get_cache_total_len(int seq = 0) const {
    check_seq("get_cache_total_len", seq);
    return layers_[0].lengths[seq];
  }
  // Sets every layer's token count of sequence seq, e.g. after writing blocks with
  // update_kvcache_one_block or to drop the newest tokens; gives it the blocks it needs
  // (throws, changing nothing, where the pool cannot). A shorter length keeps the blocks.
  void update_cache_total_len(int cache_total_len, int seq = 0) {
    check_seq("update_cache_total_len", seq);
    if (cache_total_len < 0 || cache_total_len > config_.max_seq_len()) {
      throw Error("HostKVCache::update_cache_total_len: cache_total_len=" + std::to_string(cache_total_len) +
                  " not supported; supported: 0 to " + std::to_string(config_.max_seq_len()));
    }
    std::vector<std::int32_t> grown(allocator_.lengths().begin(), allocator_.lengths().begin() + seq + 1);
    grown[seq] = std::max(grown[seq], cache_total_len);
    allocator_.grow(grown);
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& layer = layers_[i];
      const int from = std::min(layer.lengths[seq], cache_total_len) / config_.block_len;
      layer.lengths[seq] = cache_total_len;
      // blocks that gained or lost tokens: their anchors from what they hold now
      with_type([&](auto tag) {
        for (int b = from; b < sequence_blocks(cache_total_len, config_.block_len); ++b) {
          refresh_anchors<typename decltype(tag)::type>(i, seq, b);
        }
      });
    }
    selections_.clear();
  }

  // Returns sequence seq's blocks to the pool; every layer's count of it becomes 0.
  void free_sequence(int seq) {
    check_seq("free_sequence", seq);
    allocator_.free_sequence(seq);
    for (Layer& layer : layers_) layer.lengths[seq] = 0;
    selections_.clear();  // selections index the freed blocks
  }

  // Pool block block_idx of layer layer_id: k, v kv_type [kv_head_num][block_len][head_dim].
  void get_kvcache_one_block(const TensorView& k, const TensorView& v, int layer_id, int block_idx) const {
    check_block("get_kvcache_one_block", layer_id, block_idx);
    check_block_tensors("get_kvcache_one_block", k, v);
    const std::size_t bytes = block_bytes(), at = bytes * block_idx;
    std::memcpy(k.data, layers_[layer_id].k.data() + at, bytes);
    std::memcpy(v.data, layers_[layer_id].v.data() + at, bytes);
  }
  // Writes pool block block_idx of layer layer_id, then recomputes its anchors where a
  // sequence holds it.
  void update_kvcache_one_block(const TensorView& k, const TensorView& v, int layer_id, int block_idx) {
    check_block("update_kvcache_one_block", layer_id, block_idx);
    check_block_tensors("update_kvcache_one_block", k, v);
    const std::size_t bytes = block_bytes(), at = bytes * block_idx;
    std::memcpy(layers_[layer_id].k.data() + at, k.data, bytes);
    std::memcpy(layers_[layer_id].v.data() + at, v.data, bytes);
    refresh_block_anchors(layer_id, block_idx);
  }
  // Token importance of a pool block: float [kv_head_num][block_len].
  void get_importance_one_block(const TensorView& importance, int layer_id, int block_idx) const {
    check_block("get_importance_one_block", layer_id, block_idx);
    importance.check("HostKVCache::get_importance_one_block", "importance", DType::kFloat32,
                     {config_.kv_head_num, config_.block_len}, "[kv_head_num, block_len]", DeviceKind::kHost);
    const std::size_t n = std::size_t{1} * config_.kv_head_num * config_.block_len;
    std::memcpy(importance.data, layers_[layer_id].importance.data() + n * block_idx, n * sizeof(float));
  }
  void update_importance_one_block(const TensorView& importance, int layer_id, int block_idx) {
    check_block("update_importance_one_block", layer_id, block_idx);
    importance.check("HostKVCache::update_importance_one_block", "importance", DType::kFloat32,
                     {config_.kv_head_num, config_.block_len}, "[kv_head_num, block_len]", DeviceKind::kHost);
    const std::size_t n = std::size_t{1} * config_.kv_head_num * config_.block_len;
    std::memcpy(layers_[layer_id].importance.data() + n * block_idx, importance.data, n * sizeof(float));
    if (config_.anchor_type == AnchorKind::kDynamic) refresh_block_anchors(layer_id, block_idx);
  }
  // Anchors of a pool block: kv_type [kv_head_num][config.anchor_values()]. An update
  // stands until the block's tokens change (append or update_kvcache_one_block).
  void get_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx) const {
    check_block("get_anchor_one_block", layer_id, block_idx);
    anchor.check("HostKVCache::get_anchor_one_block", "anchor", config_.kv_type,
                 {config_.kv_head_num, config_.anchor_values()}, "[kv_head_num, anchor_values]", DeviceKind::kHost);
    std::memcpy(anchor.data, layers_[layer_id].anchors.data() + anchor_bytes() * block_idx, anchor_bytes());
  }
  void update_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx) {
    check_block("update_anchor_one_block", layer_id, block_idx);
    anchor.check("HostKVCache::update_anchor_one_block", "anchor", config_.kv_type,
                 {config_.kv_head_num, config_.anchor_values()}, "[kv_head_num, anchor_values]", DeviceKind::kHost);
    std::memcpy(layers_[layer_id].anchors.data() + anchor_bytes() * block_idx, anchor.data, anchor_bytes());
  }

  KVCacheMemory memory() const {
    KVCacheMemory m;
    const Layer& l = layers_[0];
    m.bytes_per_layer = l.k.size() + l.v.size() + l.anchors.size() + l.importance.size() * sizeof(float);
    m.bytes_per_token = 2 * std::size_t{1} * config_.layer_num * config_.kv_head_num * config_.head_dim *
                        dtype_size(config_.kv_type);
    m.total_bytes = m.bytes_per_layer * config_.layer_num + allocator_.tables().size() * sizeof(std::int32_t);
    m.blocks_used = allocator_.used_blocks();
    m.blocks_free = allocator_.free_blocks();
    return m;
  }

  // Writes the whole cache (config, every layer's pools and token counts, the block
  // tables and free list) to a safetensors file, atomically (cache/safetensors.hpp).
  void dump_kvcache(const std::string& path) const {
    std::vector<SafetensorsEntry> tensors;
    const std::int64_t blocks = config_.max_block_num, heads = config_.kv_head_num;
    const char* dtype = safetensors_dtype(config_.kv_type);
    std::vector<std::int32_t> lengths;
    for (const Layer& l : layers_) lengths.insert(lengths.end(), l.lengths.begin(), l.lengths.end());
    for (int i = 0; i < config_.layer_num; ++i) {
      const Layer& l = layers_[i];
      const std::string p = "layer." + std::to_string(i) + ".";
      tensors.push_back({p + "k", dtype, {blocks, heads, config_.block_len, config_.head_dim}, l.k.data(), l.k.size()});
      tensors.push_back({p + "v", dtype, {blocks, heads, config_.block_len, config_.head_dim}, l.v.data(), l.v.size()});
      tensors.push_back({p + "anchors", dtype, {blocks, heads, config_.anchor_values()}, l.anchors.data(),
                         l.anchors.size()});
      tensors.push_back({p + "importance", "F32", {blocks, heads, config_.block_len}, l.importance.data(),
                         l.importance.size() * sizeof(float)});
    }
    tensors.push_back({"lengths", "I32", {config_.layer_num, config_.max_batch_size}, lengths.data(),
                       lengths.size() * sizeof(std::int32_t)});
    tensors.push_back({"block_table", "I32", {config_.max_batch_size, config_.max_seq_block_num()},
                       allocator_.tables().data(), allocator_.tables().size() * sizeof(std::int32_t)});
    tensors.push_back({"free_list", "I32", {static_cast<std::int64_t>(allocator_.free_list().size())},
                       allocator_.free_list().data(), allocator_.free_list().size() * sizeof(std::int32_t)});
    write_safetensors(path, tensors,
                      {{"format", kKVCacheFileFormat},
                       {"format_version", std::to_string(kKVCacheFileVersion)},
                       {"config", to_string(config_)},
                       {"ekv_version", kVersion}});
  }

  // Reads a dump_kvcache file into this cache. Everything is checked before the cache is
  // touched: the file's format and version, its config against this cache's, every
  // tensor's name, dtype and shape, the file's length and every tensor's CRC-32, and the
  // block tables' consistency. Throws ekv::Error saying which; the cache is then unchanged.
  void load_kvcache(const std::string& path) {
    const SafetensorsFile file = read_safetensors(path);
    const std::string what = "HostKVCache::load_kvcache: " + path;
    const auto meta = [&](const char* key) {
      const auto it = file.metadata.find(key);
      return it == file.metadata.end() ? std::string() : it->second;
    };
    if (meta("format") != kKVCacheFileFormat) {
      throw Error(what + ": not an ekv KV cache file (metadata format '" + meta("format") + "', expected '" +
                  kKVCacheFileFormat + "')");
    }
    if (meta("format_version") != std::to_string(kKVCacheFileVersion)) {
      throw Error(what + ": format version '" + meta("format_version") + "'; this ekv reads version " +
                  std::to_string(kKVCacheFileVersion));
    }
    if (meta("config") != to_string(config_)) {
      throw Error(what + ": the file's config does not match this cache's: file '" + meta("config") + "', cache '" +
                  to_string(config_) + "'");
    }
    const auto tensor = [&](const std::string& name, const std::string& dtype, std::vector<std::int64_t> shape,
                            std::size_t bytes) -> const unsigned char* {
      const auto it = file.tensors.find(name);
      if (it == file.tensors.end()) throw Error(what + ": no tensor '" + name + "'");
      const SafetensorsTensor& t = it->second;
      if (t.dtype != dtype || t.shape != shape || t.end - t.begin != bytes) {
        throw Error(what + ": tensor '" + name + "' is " + t.dtype + " of " + std::to_string(t.end - t.begin) +
                    " bytes; this cache needs " + dtype + " of " + std::to_string(bytes));
      }
      return file.bytes_of(t);
    };
    const std::int64_t blocks = config_.max_block_num, heads = config_.kv_head_num;
    const char* dtype = safetensors_dtype(config_.kv_type);
    const Layer& shape = layers_[0];
    std::vector<const unsigned char*> sources;
    for (int i = 0; i < config_.layer_num; ++i) {
      const std::string p = "layer." + std::to_string(i) + ".";
      sources.push_back(tensor(p + "k", dtype, {blocks, heads, config_.block_len, config_.head_dim}, shape.k.size()));
      sources.push_back(tensor(p + "v", dtype, {blocks, heads, config_.block_len, config_.head_dim}, shape.v.size()));
      sources.push_back(tensor(p + "anchors", dtype, {blocks, heads, config_.anchor_values()}, shape.anchors.size()));
      sources.push_back(tensor(p + "importance", "F32", {blocks, heads, config_.block_len},
                               shape.importance.size() * sizeof(float)));
    }
    const std::size_t rows = std::size_t{1} * config_.layer_num * config_.max_batch_size;
    const auto ints = [](const unsigned char* p, std::size_t n) {
      std::vector<std::int32_t> out(n);
      if (n != 0) std::memcpy(out.data(), p, n * sizeof(std::int32_t));
      return out;
    };
    const std::vector<std::int32_t> lengths =
        ints(tensor("lengths", "I32", {config_.layer_num, config_.max_batch_size}, rows * sizeof(std::int32_t)), rows);
    const std::size_t table_size = allocator_.tables().size();
    std::vector<std::int32_t> tables = ints(
        tensor("block_table", "I32", {config_.max_batch_size, config_.max_seq_block_num()},
               table_size * sizeof(std::int32_t)),
        table_size);
    const auto free_it = file.tensors.find("free_list");
    if (free_it == file.tensors.end() || free_it->second.shape.size() != 1) {
      throw Error(what + ": no one-dimensional tensor 'free_list'");
    }
    const std::size_t num_free = static_cast<std::size_t>(free_it->second.shape[0]);
    std::vector<std::int32_t> free =
        ints(tensor("free_list", "I32", {static_cast<std::int64_t>(num_free)}, num_free * sizeof(std::int32_t)),
             num_free);
    // the allocator's length of a sequence is the longest layer's
    std::vector<std::int32_t> seq_lengths(config_.max_batch_size, 0);
    for (std::size_t r = 0; r < rows; ++r) {
      if (lengths[r] < 0) throw Error(what + ": a negative token count");
      seq_lengths[r % config_.max_batch_size] = std::max(seq_lengths[r % config_.max_batch_size], lengths[r]);
    }
    BlockAllocator restored = allocator_;
    try {
      restored.restore(std::move(tables), seq_lengths, std::move(free));
    } catch (const Error& e) {
      throw Error(what + ": inconsistent block tables (" + e.what() + ")");
    }
    // every check passed: commit
    allocator_ = std::move(restored);
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& l = layers_[i];
      std::memcpy(l.k.data(), sources[4 * i], l.k.size());
      std::memcpy(l.v.data(), sources[4 * i + 1], l.v.size());
      std::memcpy(l.anchors.data(), sources[4 * i + 2], l.anchors.size());
      std::memcpy(l.importance.data(), sources[4 * i + 3], l.importance.size() * sizeof(float));
      std::copy(lengths.begin() + std::size_t{1} * i * config_.max_batch_size,
                lengths.begin() + std::size_t{1} * (i + 1) * config_.max_batch_size, l.lengths.begin());
    }
    selections_.clear();
  }

 private:
  struct Layer {
    std::vector<unsigned char> k, v, anchors;  // kv_type, see the layout above
    std::vector<float> importance;
    std::vector<std::int32_t> lengths;  // [max_batch_size]
  };
  struct Selection {
    std::variant<std::monostate, CpuElasticDecode<float>, CpuElasticDecode<__half>, CpuElasticDecode<__nv_bfloat16>>
        step;
    int batch = 0;
    std::string config_text;
  };

  template <typename F>
  void with_type(F&& f) const {
    dispatch<kKVCacheTypes>("kv_type", "HostKVCache", config_.kv_type, std::forward<F>(f));
  }
  static std::string counts_text(const ElasticConfig& c) {
    return std::to_string(c.init_block_num) + "/" + std::to_string(c.local_block_num) + "/" +
           std::to_string(c.pick_block_num);
  }

  template <typename T>
  KVView<T> view(int layer_idx) const {
    Layer& l = const_cast<Layer&>(layers_[layer_idx]);  // views are non-const pointers; attention only reads
    return paged_kv<T>(reinterpret_cast<T*>(l.k.data()), reinterpret_cast<T*>(l.v.data()), allocator_.tables().data(),
                       l.lengths.data(), config_.max_batch_size, config_.kv_head_num, config_.head_dim,
                       config_.block_len, config_.max_seq_block_num());
  }
  std::size_t block_bytes() const { return static_cast<std::size_t>(config_.block_elems()) * dtype_size(config_.kv_type); }
  std::size_t anchor_bytes() const {
    return std::size_t{1} * config_.kv_head_num * config_.anchor_values() * dtype_size(config_.kv_type);
  }

  // Anchors of logical block `block` of (seq, kv_head) from its tokens, stored in kv_type.
  template <typename T>
  void refresh_anchors(int layer_idx, int seq, int block) {
    const KVView<T> kv = view<T>(layer_idx);
    const std::int32_t physical = allocator_.block_id(seq, block);
    const int values = config_.anchor_values();
    T* out = reinterpret_cast<T*>(layers_[layer_idx].anchors.data()) +
             static_cast<std::size_t>(physical) * config_.kv_head_num * values;
    std::vector<double> importance;
    for (int h = 0; h < config_.kv_head_num; ++h) {
      const double* block_importance = nullptr;
      if (config_.anchor_type == AnchorKind::kDynamic) {
        const float* src = layers_[layer_idx].importance.data() +
                           (static_cast<std::size_t>(physical) * config_.kv_head_num + h) * config_.block_len;
        importance.assign(src, src + config_.block_len);
        block_importance = importance.data();
      }
      const std::vector<double> a =
          reference_block_anchors(kv, seq, h, block, config_.anchor_type, config_.anchor_num, block_importance);
      for (int i = 0; i < values; ++i) out[h * values + i] = DTypeTraits<T>::from_float(static_cast<float>(a[i]));
    }
  }
  // The anchors of whichever sequence holds pool block `physical` (none: nothing to do).
  void refresh_block_anchors(int layer_idx, int physical) {
    for (int s = 0; s < config_.max_batch_size; ++s) {
      const int held = sequence_blocks(layers_[layer_idx].lengths[s], config_.block_len);
      for (int b = 0; b < held; ++b) {
        if (allocator_.tables()[static_cast<std::size_t>(s) * config_.max_seq_block_num() + b] == physical) {
          with_type([&](auto tag) { refresh_anchors<typename decltype(tag)::type>(layer_idx, s, b); });
          return;
        }
      }
    }
  }
  template <typename T>
  std::vector<double> stored_anchors(int layer_idx, int seq, int kv_head, int block) const {
    const int values = config_.anchor_values();
    const T* a = reinterpret_cast<const T*>(layers_[layer_idx].anchors.data()) +
                 (static_cast<std::size_t>(allocator_.block_id(seq, block)) * config_.kv_head_num + kv_head) * values;
    std::vector<double> out(values);
    for (int i = 0; i < values; ++i) out[i] = DTypeTraits<T>::to_float(a[i]);
    return out;
  }

  void check_layer(const char* call, int layer) const {
    if (layer < 0 || layer >= config_.layer_num) {
      throw Error(std::string("HostKVCache::") + call + ": layer " + std::to_string(layer) +
                  " not supported; supported: 0 to layer_num - 1 = " + std::to_string(config_.layer_num - 1));
    }
  }
  void check_seq(const char* call, int seq) const {
    if (seq < 0 || seq >= config_.max_batch_size) {
      throw Error(std::string("HostKVCache::") + call + ": sequence " + std::to_string(seq) +
                  " not supported; supported: 0 to max_batch_size - 1 = " + std::to_string(config_.max_batch_size - 1));
    }
  }
  void check_block(const char* call, int layer, int block) const {
    check_layer(call, layer);
    if (block < 0 || block >= config_.max_block_num) {
      throw Error(std::string("HostKVCache::") + call + ": block_idx " + std::to_string(block) +
                  " not supported; supported: 0 to max_block_num - 1 = " + std::to_string(config_.max_block_num - 1));
    }
  }
  void check_block_tensors(const char* call, const TensorView& k, const TensorView& v) const {
    const std::string where = std::string("HostKVCache::") + call;
    for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"k", k}, {"v", v}}) {
      t.check(where.c_str(), name, config_.kv_type, {config_.kv_head_num, config_.block_len, config_.head_dim},
              "[kv_head_num, block_len, head_dim]", DeviceKind::kHost);
    }
  }

  KVCacheConfig config_;
  std::vector<Layer> layers_;
  BlockAllocator allocator_;
  std::unique_ptr<CPUInfer> pool_;
  std::map<int, Selection> selections_;  // by the layer that selects
};

}  // namespace ekv
