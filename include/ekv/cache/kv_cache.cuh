#pragma once
// KVCache: the multi-layer paged KV cache object on the GPU, with the older KVCache's
// interface (KTransformers): attn, update_cache_total_len, get_cache_total_len,
// get/update_kvcache_one_block, get/update_importance_one_block,
// get/update_anchor_one_block, dump_kvcache, load_kvcache. HostKVCache
// (cpu/host_kv_cache.hpp) is its twin in host memory, for machines without a GPU.
//
// Storage, per layer, in device memory, one pool of config.max_block_num blocks shared by
// every sequence (the layout of HostKVCache and of the file, cache/kv_cache_file.hpp):
//   k, v kv_type [blocks][kv_head_num][block_len][head_dim] (quantized kv_type: [blocks]
//   [block_bytes()], kv_cache_config.hpp's layout); anchors value_type()
//   [blocks][kv_head_num][anchor_values]; importance float [blocks][kv_head_num][block_len].
// Quantized storage (FP8, Q8_0, Q4_0) is quantized on append by the function the CPU
// backend runs (the same bytes as HostKVCache's), attended by decode_quant.cuh's kernels
// and ElasticDecode over a QuantKVView; its anchors come from the dequantized keys.
// One BlockAllocator on the host hands out blocks for all layers; its table is copied to
// the device when it changes. Each layer keeps its own token counts, on the host and on
// the device.
//
// Built from append_kv, build_anchors / update_anchors, run_decode and ElasticDecode
// (run_layer, for layer_step sharing). Calls are ordered on the stream they take. attn is
// graph-capturable once a call of the same batch and block counts (and, for exact, of a
// longest sequence in the same power of two) has run: the warm-up plans and allocates;
// append, the block accessors, update_cache_total_len, free_sequence, dump and load are
// not (they copy tables and lengths from the host, and the accessors, dump and load
// synchronize the stream).

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_quant.cuh"
#include "ekv/attention/kv_view.hpp"
#include "ekv/cache/block_allocator.hpp"
#include "ekv/cache/kv_cache_args.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/kv_cache_file.hpp"
#include "ekv/cache/kv_cache_views.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"

namespace ekv {

class KVCache {
 public:
  // Allocates every layer's pools (zeroed, on `stream`). Throws ekv::Error with
  // validate()'s message for a config it does not support.
  KVCache(const KVCacheConfig& config, const DeviceInfo& device, const Stream& stream)
      : config_(config), device_(device) {
    if (Support s = config.validate(); !s) throw Error("KVCache: " + s.why);
    const KVCacheLayerSizes size(config);
    layers_.resize(config.layer_num);
    for (Layer& l : layers_) {
      l.k = DeviceBuffer<unsigned char>(size.kv);
      l.v = DeviceBuffer<unsigned char>(size.kv);
      l.anchors = DeviceBuffer<unsigned char>(size.anchors);
      l.importance = DeviceBuffer<float>(size.importance / sizeof(float));
      l.lengths = DeviceBuffer<std::int32_t>(config.max_batch_size);
      l.host_lengths.assign(config.max_batch_size, 0);
      for (auto* b : {&l.k, &l.v, &l.anchors}) b->fill_bytes(0, stream);
      l.importance.fill_bytes(0, stream);
      l.lengths.fill_bytes(0, stream);
    }
    allocator_ = BlockAllocator(config.max_block_num, config.max_batch_size, config.max_seq_block_num(),
                                config.block_len);
    table_ = DeviceBuffer<std::int32_t>(allocator_.tables().size());
    from_ = DeviceBuffer<std::int32_t>(config.max_batch_size);
    table_.copy_from(allocator_.tables(), stream);
  }

  const KVCacheConfig& config() const { return config_; }
  const BlockAllocator& allocator() const { return allocator_; }

  // Appends new_tokens tokens to each of the first `batch` sequences of layer layer_idx.
  // k_new, v_new: device, value_type() [batch][new_tokens][kv_head_num][head_dim], 16-byte
  // aligned (quantized here where kv_type is). Where the pool cannot hold the blocks this
  // needs, throws (the pool is full) and nothing is written. Then brings the changed
  // blocks' anchors up to date.
  void append(int layer_idx, const TensorView& k_new, const TensorView& v_new, const Stream& stream) {
    args().layer("append", layer_idx);
    const std::pair<int, int> shape = args().append(k_new, v_new);
    const int batch = shape.first, tokens = shape.second;
    Layer& layer = layers_[layer_idx];
    args().append_fits(layer.host_lengths.data(), batch, tokens);
    std::vector<std::int32_t> grown(layer.host_lengths.begin(), layer.host_lengths.begin() + batch);
    for (std::int32_t& len : grown) len += tokens;
    grow(grown, stream);  // throws, changing nothing, where the pool is full
    EKV_CUDA_CHECK(cudaMemcpyAsync(from_.data(), layer.lengths.data(), batch * sizeof(std::int32_t),
                                   cudaMemcpyDeviceToDevice, stream.get()),
                   "KVCache::append: copy lengths");
    with_view(layer_idx, batch, [&](auto tag, const auto& kv) {
      using T = typename decltype(tag)::type;
      append_kv<T>(kv, k_new.as<const T>(), v_new.as<const T>(), tokens, stream);
      update_anchors<T>(kv, reinterpret_cast<T*>(layer.anchors.data()), config_.elastic_config(), from_.data(),
                        tokens, stream, dynamic() ? layer.importance.data() : nullptr);
    });
    std::copy(grown.begin(), grown.end(), layer.host_lengths.begin());
  }

  // One layer's attention for decode step generate_token_idx of the first `batch`
  // sequences, batch = q.shape[0]; q, output device value_type() [batch][q_head_num][head_dim],
  // attn_lse device float [batch][q_head_num]. pick_block_num < 0: exact (every block);
  // otherwise elastic with init_block_num sinks, local_block_num window and pick_block_num
  // blocks by score, per retrieval_type, token_step and layer_step (a layer that shares
  // attends after the layer that selects, in the same step), or exact where that budget
  // cannot pay at the batch's longest sequence (set_exact_fallback; last_attn_exact()).
  void attn(const TensorView& q, const TensorView& output, const TensorView& attn_lse, int layer_idx,
            int generate_token_idx, const Stream& stream, int pick_block_num = -1, int init_block_num = 1,
            int local_block_num = 1) {
    args().layer("attn", layer_idx);
    const int batch =
        args().attn(q, output, attn_lse, layer_idx, generate_token_idx, layers_[layer_idx].host_lengths.data());
    with_view(layer_idx, batch, [&](auto tag, const auto& kv) {
      using T = typename decltype(tag)::type;
      const auto exact = [&] {
        Exact& plan = exact_plan(batch, layers_[layer_idx].host_lengths, stream);
        run_decode<T>(plan.plan, kv, q.as<const T>(), output.as<T>(), attn_lse.as<float>(), plan.workspace.data(),
                      stream);
      };
      last_attn_exact_ = pick_block_num < 0;
      if (pick_block_num < 0) return exact();
      const ElasticConfig elastic = args().elastic(pick_block_num, init_block_num, local_block_num);
      // elastic where it pays at the batch's longest sequence now (ElasticProblem::attends_exactly)
      ElasticProblem now;
      now.decode = config_.decode_problem(batch);
      now.decode.max_seq_len = *std::max_element(layers_[layer_idx].host_lengths.begin(),
                                                 layers_[layer_idx].host_lengths.begin() + batch);
      now.block_len = config_.block_len;
      now.policy = ElasticPolicy(elastic);
      if (config_.quantized()) now.kv_storage = config_.storage();
      now.exact_fallback = exact_fallback_;
      if (now.attends_exactly()) {
        last_attn_exact_ = true;
        return exact();
      }
      const ElasticKey key{batch, init_block_num, local_block_num, pick_block_num};
      Elastic& slot = elastic_[key];
      if (slot.step.index() == 0) {
        ElasticProblem problem = now;
        problem.decode.max_seq_len = config_.max_seq_len();
        problem.exact_fallback = ExactFallback::kNever;  // decided above, per call
        slot.step.emplace<std::unique_ptr<ElasticDecode<T>>>(
            std::make_unique<ElasticDecode<T>>(problem, device_, stream));
      }
      const int owner = elastic.selection_layer(layer_idx);
      if (owner != layer_idx && slot.selected.count(owner) == 0) args().owner_first(layer_idx, owner);
      // the first call of a selecting layer selects whatever the step (a fresh object has no selection)
      const int step = slot.selected.count(owner) == 0 ? 0 : generate_token_idx;
      auto& decode = *std::get<std::unique_ptr<ElasticDecode<T>>>(slot.step);
      decode.run_layer(kv, q.as<const T>(), reinterpret_cast<const T*>(layers_[layer_idx].anchors.data()),
                       output.as<T>(), attn_lse.as<float>(), stream, step, layer_idx);
      slot.selected.insert(owner);
      last_elastic_ = key;
    });
  }

  // Whether attn may attend exactly where elastic attention cannot pay at the batch's
  // longest sequence (ExactFallback::kAuto, the default; ElasticProblem::attends_exactly),
  // or selects whenever pick_block_num >= 0 (kNever).
  void set_exact_fallback(ExactFallback fallback) { exact_fallback_ = fallback; }
  ExactFallback exact_fallback() const { return exact_fallback_; }
  // Whether the last attn attended exactly: asked to (pick_block_num < 0), or fell back.
  bool last_attn_exact() const { return last_attn_exact_; }

  // The blocks the last attn read for (seq, kv_head): ascending logical blocks, every
  // block where it attended exactly (synchronizes the stream). Empty before any attn.
  std::vector<int> attended_blocks(int seq, int kv_head, const Stream& stream) const {
    if (last_attn_exact_) {
      std::vector<int> all(sequence_blocks(layers_[0].host_lengths[seq], config_.block_len));
      for (std::size_t b = 0; b < all.size(); ++b) all[b] = static_cast<int>(b);
      return all;
    }
    const auto it = elastic_.find(last_elastic_);
    if (it == elastic_.end()) return {};
    std::vector<int> out;
    std::visit(
        [&](const auto& step) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(step)>, std::monostate>) {
            const int max = step->max_attended();
            const int rows = step->problem().policy.config().retrieval == RetrievalType::kQHead
                                 ? config_.q_head_num
                                 : config_.kv_head_num;
            std::int32_t count = 0;
            const std::size_t row = static_cast<std::size_t>(seq) * rows + kv_head;
            EKV_CUDA_CHECK(cudaMemcpyAsync(&count, step->num_attended() + row, sizeof count, cudaMemcpyDeviceToHost,
                                           stream.get()),
                           "KVCache::attended_blocks");
            stream.synchronize();
            std::vector<std::int32_t> blocks(count);
            EKV_CUDA_CHECK(cudaMemcpyAsync(blocks.data(), step->attended() + row * max, count * sizeof(std::int32_t),
                                           cudaMemcpyDeviceToHost, stream.get()),
                           "KVCache::attended_blocks");
            stream.synchronize();
            out.assign(blocks.begin(), blocks.end());
          }
        },
        it->second.step);
    return out;
  }

  int get_cache_total_len(int seq = 0) const {
    args().seq("get_cache_total_len", seq);
    return layers_[0].host_lengths[seq];
  }
  // Sets every layer's token count of sequence seq; gives it the blocks it needs (throws,
  // changing nothing, where the pool cannot); recomputes the anchors of the blocks whose
  // tokens changed.
  void update_cache_total_len(int cache_total_len, const Stream& stream, int seq = 0) {
    args().seq("update_cache_total_len", seq);
    args().total_len("update_cache_total_len", cache_total_len);
    std::vector<std::int32_t> grown(allocator_.lengths().begin(), allocator_.lengths().begin() + seq + 1);
    grown[seq] = std::max(grown[seq], cache_total_len);
    grow(grown, stream);
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& l = layers_[i];
      const int old = l.host_lengths[seq];
      l.host_lengths[seq] = cache_total_len;
      l.lengths.copy_from(l.host_lengths, stream);
      if (cache_total_len > 0 && old != cache_total_len) {
        refresh_anchors(i, seq, std::min(old, cache_total_len), stream);
      }
    }
    elastic_.clear();
  }

  // Returns sequence seq's blocks to the pool; every layer's count of it becomes 0.
  void free_sequence(int seq, const Stream& stream) {
    args().seq("free_sequence", seq);
    allocator_.free_sequence(seq);
    table_.copy_from(allocator_.tables(), stream);
    for (Layer& l : layers_) {
      l.host_lengths[seq] = 0;
      l.lengths.copy_from(l.host_lengths, stream);
    }
    stream.synchronize();  // the host vectors copied from may change next
    elastic_.clear();
  }

  // Pool block block_idx of layer layer_id; k, v kv_type [kv_head_num][block_len][head_dim]
  // (quantized kv_type: its block_row_bytes() stored bytes, every row's codes then scales)
  // in host or device memory. Synchronous.
  void get_kvcache_one_block(const TensorView& k, const TensorView& v, int layer_id, int block_idx,
                             const Stream& stream) const {
    args().block("get_kvcache_one_block", layer_id, block_idx);
    args().block_kv("get_kvcache_one_block", k, v);
    const std::size_t bytes = config_.block_row_bytes(), at = config_.block_bytes() * block_idx;
    copy(k.data, layers_[layer_id].k.data() + at, bytes, stream);
    copy(v.data, layers_[layer_id].v.data() + at, bytes, stream);
    stream.synchronize();
  }
  // Writes a pool block, then recomputes its anchors where a sequence holds it. Synchronous.
  void update_kvcache_one_block(const TensorView& k, const TensorView& v, int layer_id, int block_idx,
                                const Stream& stream) {
    args().block("update_kvcache_one_block", layer_id, block_idx);
    args().block_kv("update_kvcache_one_block", k, v);
    const std::size_t bytes = config_.block_row_bytes(), at = config_.block_bytes() * block_idx;
    copy(layers_[layer_id].k.data() + at, k.data, bytes, stream);
    copy(layers_[layer_id].v.data() + at, v.data, bytes, stream);
    refresh_block(layer_id, block_idx, stream);
    stream.synchronize();
  }
  // Token importance of a pool block: float [kv_head_num][block_len], host or device.
  void get_importance_one_block(const TensorView& importance, int layer_id, int block_idx,
                                const Stream& stream) const {
    args().block("get_importance_one_block", layer_id, block_idx);
    args().importance("get_importance_one_block", importance);
    const std::size_t n = std::size_t{1} * config_.kv_head_num * config_.block_len;
    copy(importance.data, layers_[layer_id].importance.data() + n * block_idx, n * sizeof(float), stream);
    stream.synchronize();
  }
  void update_importance_one_block(const TensorView& importance, int layer_id, int block_idx, const Stream& stream) {
    args().block("update_importance_one_block", layer_id, block_idx);
    args().importance("update_importance_one_block", importance);
    const std::size_t n = std::size_t{1} * config_.kv_head_num * config_.block_len;
    copy(layers_[layer_id].importance.data() + n * block_idx, importance.data, n * sizeof(float), stream);
    if (dynamic()) refresh_block(layer_id, block_idx, stream);
    stream.synchronize();
  }
  // Anchors of a pool block: value_type() [kv_head_num][anchor_values], host or device.
  void get_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx, const Stream& stream) const {
    args().block("get_anchor_one_block", layer_id, block_idx);
    args().anchor("get_anchor_one_block", anchor);
    copy(anchor.data, layers_[layer_id].anchors.data() + anchor_bytes() * block_idx, anchor_bytes(), stream);
    stream.synchronize();
  }
  void update_anchor_one_block(const TensorView& anchor, int layer_id, int block_idx, const Stream& stream) {
    args().block("update_anchor_one_block", layer_id, block_idx);
    args().anchor("update_anchor_one_block", anchor);
    copy(layers_[layer_id].anchors.data() + anchor_bytes() * block_idx, anchor.data, anchor_bytes(), stream);
    stream.synchronize();
  }

  KVCacheMemory memory() const { return kv_cache_memory(config_, allocator_); }

  // Writes the whole cache to a file, atomically (cache/kv_cache_file.hpp), streamed
  // through 128 MiB of pinned host memory and checksummed on one thread per core while
  // it is written; synchronous.
  void dump_kvcache(const std::string& path, const Stream& stream) const {
    std::vector<KVCacheLayerBytes> layers;
    std::vector<std::int32_t> lengths;
    for (const Layer& l : layers_) {
      layers.push_back({l.k.data(), l.v.data(), l.anchors.data(), l.importance.data()});
      lengths.insert(lengths.end(), l.host_lengths.begin(), l.host_lengths.end());
    }
    // the pools pass through two pinned halves, 64 MiB each, while the file is written
    PinnedBuffer<unsigned char> staging(kFileStaging);
    const auto to_host = [&](void* dst, const void* src, std::size_t n) {
      copy(dst, src, n, stream);
      stream.synchronize();
    };
    write_kv_cache_file(path, config_, layers, lengths, allocator_, 0, to_host, staging.data(), kFileStaging);
  }

  // Reads a dump_kvcache file (of either backend) into this cache: everything is checked
  // first (read_kv_cache_file), and the cache is unchanged where anything fails.
  void load_kvcache(const std::string& path, const Stream& stream) {
    const KVCacheLayerSizes size(config_);
    // Where the device has room for a second set of pools, the file streams into device
    // staging through two pinned halves as it is read, and is copied over the pools once
    // all of it checked; otherwise it is read into host memory first. Either way the
    // pools keep their addresses (graphs captured before stay valid).
    const std::size_t pools = std::size_t{1} * config_.layer_num * (2 * size.kv + size.anchors + size.importance);
    std::size_t free_bytes = 0, total_bytes = 0;
    EKV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes), "KVCache::load_kvcache");
    DeviceBuffer<unsigned char> staged;
    PinnedBuffer<unsigned char> pinned;
    std::map<std::string, std::pair<unsigned char*, std::size_t>> staged_at;  // by tensor: where, bytes
    SafetensorsSink sink;
    if (free_bytes > pools + (std::size_t{1} << 30)) {
      staged = DeviceBuffer<unsigned char>(pools);
      pinned = PinnedBuffer<unsigned char>(kFileStaging);
      unsigned char* at = staged.data();
      for (int i = 0; i < config_.layer_num; ++i) {
        const std::string p = "layer." + std::to_string(i) + ".";
        for (const auto& [name, bytes] : {std::pair<const char*, std::size_t>{"k", size.kv}, {"v", size.kv},
                                          {"anchors", size.anchors}, {"importance", size.importance}}) {
          staged_at[p + name] = {at, bytes};
          at += bytes;
        }
      }
      sink.take = [&](const std::string& name, const SafetensorsTensor& t) {
        const auto it = staged_at.find(name);
        return it != staged_at.end() && t.end - t.begin == it->second.second;  // else checked, and refused, later
      };
      sink.put = [&](const std::string& name, std::size_t offset, const unsigned char* bytes, std::size_t n) {
        copy(staged_at.at(name).first + offset, bytes, n, stream);
        stream.synchronize();  // the pinned half is read again two chunks on
      };
      sink.staging = pinned.data();
      sink.staging_bytes = kFileStaging;
    }
    KVCacheFileContents file = read_kv_cache_file(path, config_, allocator_, "KVCache::load_kvcache", 0,
                                                  staged.size() != 0 ? &sink : nullptr);
    for (int i = 0; i < config_.layer_num; ++i) {
      Layer& l = layers_[i];
      const std::string p = "layer." + std::to_string(i) + ".";
      const auto from = [&](const char* name, const void* host) -> const void* {
        return staged.size() != 0 ? staged_at.at(p + name).first : host;
      };
      copy(l.k.data(), from("k", file.layers[i].k), size.kv, stream);
      copy(l.v.data(), from("v", file.layers[i].v), size.kv, stream);
      copy(l.anchors.data(), from("anchors", file.layers[i].anchors), size.anchors, stream);
      copy(l.importance.data(), from("importance", file.layers[i].importance), size.importance, stream);
      const auto first = file.lengths.begin() + std::ptrdiff_t{1} * i * config_.max_batch_size;
      std::copy(first, first + config_.max_batch_size, l.host_lengths.begin());
      l.lengths.copy_from(l.host_lengths, stream);
    }
    allocator_ = std::move(file.allocator);
    table_.copy_from(allocator_.tables(), stream);
    stream.synchronize();  // file's memory is freed on return
    elastic_.clear();
  }

 private:
  static constexpr std::size_t kFileStaging = std::size_t{128} << 20;  // pinned bytes dump and load stream through

  struct Layer {
    DeviceBuffer<unsigned char> k, v, anchors;
    DeviceBuffer<float> importance;
    DeviceBuffer<std::int32_t> lengths;     // [max_batch_size], what kernels read
    std::vector<std::int32_t> host_lengths;  // the same, kept on the host
  };
  struct Exact {
    DecodePlan plan;
    DeviceBuffer<unsigned char> workspace;
  };
  struct Elastic {
    std::variant<std::monostate, std::unique_ptr<ElasticDecode<float>>, std::unique_ptr<ElasticDecode<__half>>,
                 std::unique_ptr<ElasticDecode<__nv_bfloat16>>>
        step;
    std::set<int> selected;  // layers that have selected through this object
  };

  // f(TypeTag<value type>, view of layer layer_idx's first `batch` sequences): a KVView
  // for dense storage, a QuantKVView for quantized.
  template <typename F>
  void with_view(int layer_idx, int batch, F&& f) const {
    Layer& l = const_cast<Layer&>(layers_[layer_idx]);  // views hold non-const pointers; attention only reads
    with_kv_cache_view(config_, l.k.data(), l.v.data(), table_.data(), l.lengths.data(), batch, "KVCache",
                       std::forward<F>(f));
  }

  bool dynamic() const { return config_.anchor_type == AnchorKind::kDynamic; }

  // The exact plan for the batch's longest sequence, rounded up to a power of two (at
  // least 4096 tokens, at most max_seq_len()): a plan for the pool's whole length splits a
  // short sequence too little (1 x 32K: 258 us planned for 256K, against 42 for 32K on the
  // H200). A longer sequence plans anew, once per doubling (the call allocates then);
  // lengths past a captured graph's plan stay correct.
  Exact& exact_plan(int batch, const std::vector<std::int32_t>& lengths, const Stream& stream) {
    const int longest = *std::max_element(lengths.begin(), lengths.begin() + batch);
    int planned = 4096;
    while (planned < longest && planned < config_.max_seq_len()) planned *= 2;
    planned = std::min(planned, config_.max_seq_len());
    const std::pair<int, int> key{batch, planned};
    auto it = exact_.find(key);
    if (it == exact_.end()) {
      DecodeProblem problem = config_.decode_problem(batch);
      problem.max_seq_len = planned;
      const DecodePlan plan = config_.quantized() ? plan_quant_decode(problem, config_.storage(), device_)
                                                  : plan_decode(problem, device_);
      it = exact_.emplace(key, Exact{plan, make_decode_workspace(plan, stream)}).first;
    }
    return it->second;
  }
  // Gives the first new_lengths.size() sequences their blocks; copies the table to the device if it changed.
  void grow(const std::vector<std::int32_t>& new_lengths, const Stream& stream) {
    const int used = allocator_.used_blocks();
    allocator_.grow(new_lengths);
    if (allocator_.used_blocks() != used) {
      table_.copy_from(allocator_.tables(), stream);
      stream.synchronize();  // the host table may change at the next grow
    }
  }
  // Anchors of sequence seq's blocks holding tokens from `from` on, in layer layer_idx,
  // from the importance they hold (not new tokens: nothing is zeroed, as on the host).
  void refresh_anchors(int layer_idx, int seq, int from, const Stream& stream) {
    Layer& l = layers_[layer_idx];
    std::vector<std::int32_t> starts(l.host_lengths.begin(), l.host_lengths.begin() + seq + 1);
    starts[seq] = from;  // the others: their lengths, nothing to do
    from_.copy_from(starts, stream);
    const int tokens = std::max(1, l.host_lengths[seq] - from);
    with_view(layer_idx, seq + 1, [&](auto tag, const auto& kv) {
      using T = typename decltype(tag)::type;
      update_anchors<T>(kv, reinterpret_cast<T*>(l.anchors.data()), config_.elastic_config(), from_.data(), tokens,
                        stream, dynamic() ? l.importance.data() : nullptr, false);
    });
    stream.synchronize();  // starts is freed on return
  }
  // The anchors of pool block `physical` where a sequence holds it, from the importance it
  // holds (update_importance_one_block's: kept, not zeroed as an append's new tokens are).
  void refresh_block(int layer_idx, int physical, const Stream& stream) {
    for (int s = 0; s < config_.max_batch_size; ++s) {
      const int held = sequence_blocks(layers_[layer_idx].host_lengths[s], config_.block_len);
      for (int b = 0; b < held; ++b) {
        if (allocator_.tables()[static_cast<std::size_t>(s) * config_.max_seq_block_num() + b] == physical) {
          // from the block's first token to its last: update_anchors recomputes the block
          // (and, at most, the next one, unchanged)
          Layer& l = layers_[layer_idx];
          const int end = std::min(l.host_lengths[s], (b + 1) * config_.block_len);
          std::vector<std::int32_t> starts(l.host_lengths.begin(), l.host_lengths.begin() + s + 1);
          starts[s] = b * config_.block_len;
          from_.copy_from(starts, stream);
          with_view(layer_idx, s + 1, [&](auto tag, const auto& kv) {
            using T = typename decltype(tag)::type;
            update_anchors<T>(kv, reinterpret_cast<T*>(l.anchors.data()), config_.elastic_config(), from_.data(),
                              std::max(1, end - b * config_.block_len), stream,
                              dynamic() ? l.importance.data() : nullptr, false);
          });
          stream.synchronize();
          return;
        }
      }
    }
  }
  static void copy(void* dst, const void* src, std::size_t bytes, const Stream& stream) {
    EKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream.get()), "KVCache: copy");
  }
  std::size_t anchor_bytes() const {
    return std::size_t{1} * config_.kv_head_num * config_.anchor_values() * dtype_size(config_.value_type());
  }
  KVCacheArgs args() const { return {config_, "KVCache", "KVCache::attn", DeviceKind::kCuda, true}; }

  KVCacheConfig config_;
  DeviceInfo device_;
  std::vector<Layer> layers_;
  BlockAllocator allocator_;
  DeviceBuffer<std::int32_t> table_;  // allocator_'s tables, on the device
  DeviceBuffer<std::int32_t> from_;   // lengths before an append, for update_anchors
  std::map<std::pair<int, int>, Exact> exact_;  // by batch and planned length
  using ElasticKey = std::array<int, 4>;  // batch, init, local and pick block counts
  std::map<ElasticKey, Elastic> elastic_;
  ElasticKey last_elastic_{};
  ExactFallback exact_fallback_ = ExactFallback::kAuto;
  bool last_attn_exact_ = false;
};

}  // namespace ekv
