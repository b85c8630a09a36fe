#pragma once
// HostKVCache: the multi-layer paged KV cache object on the CPU backend, host memory only,
// so that a machine without a GPU runs the whole KVCache interface. The names are the
// older KVCache's (KTransformers): attn, update_cache_total_len, get_cache_total_len,
// get_kvcache_one_block / update_kvcache_one_block, get/update_importance_one_block,
// get/update_anchor_one_block, dump_kvcache, load_kvcache.
//
// Storage, per layer, in one pool of config.max_block_num blocks shared by every sequence:
//   k, v        kv_type [max_block_num][kv_head_num][block_len][head_dim] (quantized
//               kv_type: [max_block_num][block_bytes()], kv_cache_config.hpp's layout)
//   anchors     value_type() [max_block_num][kv_head_num][config.anchor_values()]
//   importance  float   [max_block_num][kv_head_num][block_len]
// One BlockAllocator hands out blocks for all layers (a sequence's logical block b is the
// same pool block in every layer); each layer keeps its own token count per sequence, as a
// forward pass appends layer after layer.
//
// Built from the pieces: cpu_append_kv, reference_block_anchors, CpuElasticDecode
// (selection from this cache's anchors), cpu_decode, over a KVView or, for quantized
// storage, a QuantKVView (cache/kv_cache_views.hpp); the file is cache/kv_cache_file.hpp's.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cache/block_allocator.hpp"
#include "ekv/cache/kv_cache_args.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/kv_cache_file.hpp"
#include "ekv/cache/kv_cache_views.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/allocation.hpp"
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

class HostKVCache {
 public:
  // Throws ekv::Error with validate()'s message for a config it does not support.
  explicit HostKVCache(const KVCacheConfig& config) : config_(config) {
    if (Support s = config.validate(); !s) throw Error(s.why);
    const std::size_t blocks = static_cast<std::size_t>(config.max_block_num);
    const std::size_t heads = static_cast<std::size_t>(config.kv_head_num);
    layers_.resize(config.layer_num);
    for (Layer& layer : layers_) {  // ekv::Error where the host has not the memory
      const unsigned char zero = 0;
      host_assign(layer.k, blocks * config.block_bytes(), zero, "HostKVCache: the K pool");
      host_assign(layer.v, layer.k.size(), zero, "HostKVCache: the V pool");
      host_assign(layer.anchors, blocks * heads * config.anchor_values() * dtype_size(config.value_type()), zero,
                  "HostKVCache: the anchors");
      host_assign(layer.importance, blocks * heads * config.block_len, 0.0f, "HostKVCache: the importance");
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
  // k_new, v_new: host, value_type() [batch][new_tokens][kv_head_num][head_dim], quantized
  // here where kv_type is (as the GPU's KVCache quantizes: the same bytes). Gives the
  // sequences the blocks they need first: where the pool cannot, throws (the pool is
  // full) and nothing is written. Then brings the anchors of every block that changed up
  // to date (DYNAMIC: from the importance stored so far).
  void append(int layer_idx, const TensorView& k_new, const TensorView& v_new) {
    args().layer("append", layer_idx);
    const std::pair<int, int> shape = args().append(k_new, v_new);
    const int batch = shape.first, tokens = shape.second;
    Layer& layer = layers_[layer_idx];
    args().append_fits(layer.lengths.data(), batch, tokens);
    std::vector<std::int32_t> grown(layer.lengths.begin(), layer.lengths.begin() + batch);
    for (std::int32_t& len : grown) len += tokens;
    allocator_.grow(grown);  // throws, changing nothing, where the pool is full
    const std::vector<std::int32_t> before(layer.lengths.begin(), layer.lengths.begin() + batch);
    with_view(layer_idx, batch, [&](auto tag, const auto& kv) {
      using T = typename decltype(tag)::type;
      cpu_append_kv<T>(kv, k_new.as<const T>(), v_new.as<const T>(), tokens);
      for (int b = 0; b < batch; ++b) {
        for (int block = before[b] / config_.block_len; block < sequence_blocks(layer.lengths[b], config_.block_len);
             ++block) {
          refresh_anchors<T>(kv, layer_idx, b, block);
        }
      }
    });
  }

  // One layer's attention for decode step generate_token_idx (0 at the first step) of the
  // first `batch` sequences, batch = q.shape[0]. q, output: value_type() [batch][q_head_num]
  // [head_dim]; attn_lse: float [batch][q_head_num] (natural log). pick_block_num < 0 reads
  // every block (exact); otherwise elastic: init_block_num sinks, local_block_num window
  // and pick_block_num blocks by score, per retrieval_type, reselected every token_step
  // steps and shared by layer_step layers from layer_offset on (a layer that shares calls
  // after the layer that selects, in the same step).
  void attn(const TensorView& q, const TensorView& output, const TensorView& attn_lse, int layer_idx,
            int generate_token_idx, int pick_block_num = -1, int init_block_num = 1, int local_block_num = 1) {
    args().layer("attn", layer_idx);
    const int batch =
        args().attn(q, output, attn_lse, layer_idx, generate_token_idx, layers_[layer_idx].lengths.data());
    with_view(layer_idx, batch, [&](auto tag, const auto& kv) {
      using T = typename decltype(tag)::type;
      using Step = CpuElasticDecode<T, std::decay_t<decltype(kv)>>;
      if (pick_block_num < 0) {
        cpu_decode<T>(*pool_, kv, q.as<const T>(), config_.q_head_num, output.as<T>(), attn_lse.as<float>());
        return;
      }
      const ElasticConfig elastic = args().elastic(pick_block_num, init_block_num, local_block_num);
      const int owner = elastic.selection_layer(layer_idx);
      auto& slot = selections_[owner];
      auto* step = std::get_if<Step>(&slot.step);
      const bool fresh = step == nullptr || slot.batch != batch || slot.config_text != counts_text(elastic);
      if (owner == layer_idx && (fresh || elastic.refreshes_selection(generate_token_idx))) {
        if (fresh) {
          slot.step.emplace<Step>(kv, config_.q_head_num, ElasticPolicy(elastic));
          slot.batch = batch;
          slot.config_text = counts_text(elastic);
          step = &std::get<Step>(slot.step);
        }
        step->select_from(*pool_, kv, q.as<const T>(), [&](int b, int h, int block) {
          return stored_anchors<T>(layer_idx, b, h, block);
        });
      } else if (fresh) {
        args().owner_first(layer_idx, owner);
      }
      step->attend(*pool_, kv, q.as<const T>(), output.as<T>(), attn_lse.as<float>());
    });
  }

  // The blocks the last elastic attn of layer_idx's selection read for (seq, kv_head),
  // ascending logical blocks; empty before any.
  std::vector<int> attended_blocks(int layer_idx, int seq, int kv_head) const {
    args().layer("attended_blocks", layer_idx);
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
    args().seq("get_cache_total_len", seq);
    return layers_[0].lengths[seq];
  }
  // Sets every layer's token count of sequence seq, e.g. after writing blocks with
  // update_kvcache_one_block or to drop the newest tokens; gives it the blocks it needs
  // (throws, changing nothing, where the pool cannot). A shorter length keeps the blocks.
  void update_cache_total_len(int cache_total_len, int seq = 0) {
    args().seq("update_cache_total_len", seq);
    args().total_len("update_cache_total_len", cache_total_len);
    std::vector<std::int32_t> grown(allocator_.lengths().begin(), allocator_.lengths().begin() + seq + 1);
    grown[seq] = std::max(grown[seq], cache_total_len);
    allocator_.grow(grown);
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& layer = layers_[i];
      const int from = std::min(layer.lengths[seq], cache_total_len) / config_.block_len;
      layer.lengths[seq] = cache_total_len;
      // blocks that gained or lost tokens: their anchors from what they hold now
      with_view(i, config_.max_batch_size, [&](auto tag, const auto& kv) {
        for (int b = from; b < sequence_blocks(cache_total_len, config_.block_len); ++b) {
          refresh_anchors<typename decltype(tag)::type>(kv, i, seq, b);
        }
      });
    }
    selections_.clear();
  }

  // Returns sequence seq's blocks to the pool; every layer's count of it becomes 0.
  void free_sequence(int seq) {
    args().seq("free_sequence", seq);
    allocator_.free_sequence(seq);
    for (Layer& layer : layers_) layer.lengths[seq] = 0;
    selections_.clear();  // selections index the freed blocks
  }

  // Pool block block_idx of layer layer_id: k, v kv_type [kv_head_num][block_len][head_dim]
  // (quantized kv_type: its block_row_bytes() stored bytes, every row's codes then scales).
  void get_kvcache_one_block(const TensorView& k, const TensorView& v, int layer_id, int block_idx) const {
    args().block("get_kvcache_one_block", layer_id, block_idx);
    args().block_kv("get_kvcache_one_block", k, v);
    const std::size_t bytes = config_.block_row_bytes(), at = config_.block_bytes() * block_idx;
    std::memcpy(k.data, layers_[layer_id].k.data() + at, bytes);
    std::memcpy(v.data, layers_[layer_id].v.data() + at, bytes);
  }
  // Writes pool block block_idx of layer layer_id, then recomputes its anchors where a
  // sequence holds it.
  void update_kvcache_one_block(const TensorView& k, const TensorView& v, int layer_id, int block_idx) {
    args().block("update_kvcache_one_block", layer_id, block_idx);
    args().block_kv("update_kvcache_one_block", k, v);
    const std::size_t bytes = config_.block_row_bytes(), at = config_.block_bytes() * block_idx;
    std::memcpy(layers_[layer_id].k.data() + at, k.data, bytes);
    std::memcpy(layers_[layer_id].v.data() + at, v.data, bytes);
    refresh_block_anchors(layer_id, block_idx);
  }
  // Token importance of a pool block: float [kv_head_num][block_len].
  void get_importance_one_block(const TensorView& importance, int layer_id, int block_idx) const {
    args().block("get_importance_one_block", layer_id, block_idx);
    args().importance("get_importance_one_block", importance);
    const std::size_t n = std::size_t{1} * config_.kv_head_num * config_.block_len;
    std::memcpy(importance.data, layers_[layer_id].importance.data() + n * block_idx, n * sizeof(float));
  }
  void update_importance_one_block(const TensorView& importance, int layer_id, int block_idx) {
    args().block("update_importance_one_block", layer_id, block_idx);
    args().importance("update_importance_one_block", importance);
    const std::size_t n = std::size_t{1} * config_.kv_head_num * config_.block_len;
    std::memcpy(layers_[layer_id].importance.data() + n * block_idx, importance.data, n * sizeof(float));
    if (config_.anchor_type == AnchorKind::kDynamic) refresh_block_anchors(layer_id, block_idx);
  }
  // Anchors of a pool block: value_type() [kv_head_num][config.anchor_values()]. An update
  // stands until the block's tokens change (append or update_kvcache_one_block).
  void get_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx) const {
    args().block("get_anchor_one_block", layer_id, block_idx);
    args().anchor("get_anchor_one_block", anchor);
    std::memcpy(anchor.data, layers_[layer_id].anchors.data() + anchor_bytes() * block_idx, anchor_bytes());
  }
  void update_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx) {
    args().block("update_anchor_one_block", layer_id, block_idx);
    args().anchor("update_anchor_one_block", anchor);
    std::memcpy(layers_[layer_id].anchors.data() + anchor_bytes() * block_idx, anchor.data, anchor_bytes());
  }

  KVCacheMemory memory() const { return kv_cache_memory(config_, allocator_); }

  // Writes the whole cache (config, every layer's pools and token counts, the block
  // tables and free list) to a file, atomically (cache/kv_cache_file.hpp); the CRC-32s
  // are computed on one thread per core while the file is written.
  void dump_kvcache(const std::string& path) const {
    std::vector<KVCacheLayerBytes> layers;
    std::vector<std::int32_t> lengths;
    for (const Layer& l : layers_) {
      layers.push_back({l.k.data(), l.v.data(), l.anchors.data(), l.importance.data()});
      lengths.insert(lengths.end(), l.lengths.begin(), l.lengths.end());
    }
    write_kv_cache_file(path, config_, layers, lengths, allocator_, kFileThreads);
  }

  // Reads a dump_kvcache file into this cache. Everything is checked before the cache is
  // touched (read_kv_cache_file): the file's length and CRC-32s (one thread per core), format and version, its
  // config against this cache's, every tensor, the block tables. Throws ekv::Error saying
  // which; the cache is then unchanged.
  void load_kvcache(const std::string& path) {
    KVCacheFileContents file =
        read_kv_cache_file(path, config_, allocator_, "HostKVCache::load_kvcache", kFileThreads);
    allocator_ = std::move(file.allocator);
    // the pools, in 8 MiB pieces over the pool's threads
    struct Copy {
      void* dst;
      const void* src;
      std::size_t bytes;
    };
    std::vector<Copy> copies;
    const auto add = [&](void* dst, const void* src, std::size_t bytes) {
      constexpr std::size_t kPiece = std::size_t{8} << 20;
      for (std::size_t at = 0; at < bytes; at += kPiece) {
        copies.push_back({static_cast<unsigned char*>(dst) + at, static_cast<const unsigned char*>(src) + at,
                          std::min(kPiece, bytes - at)});
      }
    };
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& l = layers_[i];
      add(l.k.data(), file.layers[i].k, l.k.size());
      add(l.v.data(), file.layers[i].v, l.v.size());
      add(l.anchors.data(), file.layers[i].anchors, l.anchors.size());
      add(l.importance.data(), file.layers[i].importance, l.importance.size() * sizeof(float));
    }
    pool_->parallel_for(0, static_cast<std::int64_t>(copies.size()), [&](std::int64_t i) {
      std::memcpy(copies[i].dst, copies[i].src, copies[i].bytes);
    });
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& l = layers_[i];
      const auto first = file.lengths.begin() + std::ptrdiff_t{1} * i * config_.max_batch_size;
      std::copy(first, first + config_.max_batch_size, l.lengths.begin());
    }
    selections_.clear();
  }

 private:
  static constexpr unsigned kFileThreads = 0;  // dump and load checksum on every core

  struct Layer {
    std::vector<unsigned char> k, v, anchors;  // see the layout above
    std::vector<float> importance;
    std::vector<std::int32_t> lengths;  // [max_batch_size]
  };
  struct Selection {
    std::variant<std::monostate, CpuElasticDecode<float>, CpuElasticDecode<__half>, CpuElasticDecode<__nv_bfloat16>,
                 CpuElasticDecode<__half, QuantKVView>>
        step;
    int batch = 0;
    std::string config_text;
  };

  // f(TypeTag<value type>, view of layer layer_idx's first `batch` sequences): a KVView
  // for dense storage, a QuantKVView for quantized.
  template <typename F>
  void with_view(int layer_idx, int batch, F&& f) const {
    Layer& l = const_cast<Layer&>(layers_[layer_idx]);  // views hold non-const pointers; attention only reads
    with_kv_cache_view(config_, l.k.data(), l.v.data(), allocator_.tables().data(), l.lengths.data(), batch,
                       "HostKVCache", std::forward<F>(f));
  }

  static std::string counts_text(const ElasticConfig& c) {
    return std::to_string(c.init_block_num) + "/" + std::to_string(c.local_block_num) + "/" +
           std::to_string(c.pick_block_num);
  }

  std::size_t anchor_bytes() const {
    return std::size_t{1} * config_.kv_head_num * config_.anchor_values() * dtype_size(config_.value_type());
  }

  // Anchors of logical block `block` of sequence seq, every kv head, from its tokens (the
  // dequantized keys of quantized storage), stored in T (value_type()).
  template <typename T, typename View>
  void refresh_anchors(const View& kv, int layer_idx, int seq, int block) {
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
      // zeros as +0, as the GPU's anchors store them (anchors.cuh)
      for (int i = 0; i < values; ++i) {
        out[h * values + i] = DTypeTraits<T>::from_float(static_cast<float>(a[i]) + 0.0f);
      }
    }
  }
  // The anchors of whichever sequence holds pool block `physical` (none: nothing to do).
  void refresh_block_anchors(int layer_idx, int physical) {
    for (int s = 0; s < config_.max_batch_size; ++s) {
      const int held = sequence_blocks(layers_[layer_idx].lengths[s], config_.block_len);
      for (int b = 0; b < held; ++b) {
        if (allocator_.tables()[static_cast<std::size_t>(s) * config_.max_seq_block_num() + b] == physical) {
          with_view(layer_idx, config_.max_batch_size, [&](auto tag, const auto& kv) {
            refresh_anchors<typename decltype(tag)::type>(kv, layer_idx, s, b);
          });
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

  KVCacheArgs args() const { return {config_, "HostKVCache", "HostKVCache::attn", DeviceKind::kHost, false}; }

  KVCacheConfig config_;
  std::vector<Layer> layers_;
  BlockAllocator allocator_;
  std::unique_ptr<CPUInfer> pool_;
  std::map<int, Selection> selections_;  // by the layer that selects
};

}  // namespace ekv
