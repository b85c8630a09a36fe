#pragma once
// The argument checks every KV cache backend makes, with messages that name the class,
// the call, the argument, what it got and what is supported. `memory` is where the
// backend's attention arguments live (host for HostKVCache, cuda for KVCache); the block
// accessors take host or device memory where the backend allows (any_memory).

#include <cstdint>
#include <string>
#include <utility>

#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/error.hpp"

namespace ekv {

struct KVCacheArgs {
  const KVCacheConfig& c;
  const char* cls;        // "KVCache", "HostKVCache"
  const char* attn_call;  // "<cls>::attn", so that attn builds no string on every step
  DeviceKind memory;      // where attn's and append's tensors must be
  bool any_memory;        // whether the block accessors also take the other memory

  std::string where(const char* call) const { return std::string(cls) + "::" + call; }

  void layer(const char* call, int layer) const {
    if (layer < 0 || layer >= c.layer_num) {
      throw Error(where(call) + ": layer " + std::to_string(layer) +
                  " not supported; supported: 0 to layer_num - 1 = " +
                  std::to_string(c.layer_num - 1));
    }
  }
  void seq(const char* call, int seq) const {
    if (seq < 0 || seq >= c.max_batch_size) {
      throw Error(where(call) + ": sequence " + std::to_string(seq) +
                  " not supported; supported: 0 to max_batch_size - 1 = " + std::to_string(c.max_batch_size - 1));
    }
  }
  void block(const char* call, int layer_idx, int block_idx) const {
    layer(call, layer_idx);
    if (block_idx < 0 || block_idx >= c.max_block_num) {
      throw Error(where(call) + ": block_idx " + std::to_string(block_idx) +
                  " not supported; supported: 0 to max_block_num - 1 = " + std::to_string(c.max_block_num - 1));
    }
  }
  void total_len(const char* call, int len) const {
    if (len < 0 || len > c.max_seq_len()) {
      throw Error(where(call) + ": cache_total_len=" + std::to_string(len) + " not supported; supported: 0 to " +
                  std::to_string(c.max_seq_len()));
    }
  }

  // append's k_new and v_new, [batch][new_tokens][kv_head_num][head_dim]: {batch, new_tokens}.
  std::pair<int, int> append(const TensorView& k_new, const TensorView& v_new) const {
    const std::int64_t batch = k_new.ndim == 4 ? k_new.shape[0] : -1;
    const std::int64_t tokens = k_new.ndim == 4 ? k_new.shape[1] : -1;
    if (batch < 1 || batch > c.max_batch_size || tokens < 1 || tokens > c.max_seq_len()) {
      throw Error(where("append") + ": k_new has shape " + k_new.shape_string() +
                  "; needs [batch, new_tokens, kv_head_num, head_dim] with batch 1 to max_batch_size=" +
                  std::to_string(c.max_batch_size) + " and new_tokens 1 to " + std::to_string(c.max_seq_len()));
    }
    for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"k_new", k_new}, {"v_new", v_new}}) {
      t.check(where("append").c_str(), name, c.value_type(), {batch, tokens, c.kv_head_num, c.head_dim},
              "[batch, new_tokens, kv_head_num, head_dim]", memory);
    }
    return {static_cast<int>(batch), static_cast<int>(tokens)};
  }
  // Whether sequences of `lengths` can take `tokens` more each.
  void append_fits(const std::int32_t* lengths, int batch, int tokens) const {
    for (int b = 0; b < batch; ++b) {
      if (std::int64_t{lengths[b]} + tokens > c.max_seq_len()) {
        throw Error(where("append") + ": sequence " + std::to_string(b) + " of " + std::to_string(lengths[b]) +
                    " tokens cannot take " + std::to_string(tokens) + " more; a sequence holds up to " +
                    std::to_string(c.max_seq_len()) + " (max_seq_block_num() x block_len)");
      }
    }
  }

  // attn's q, output [batch][q_head_num][head_dim] and attn_lse float [batch][q_head_num],
  // and that the first `batch` sequences of the layer hold tokens: batch.
  int attn(const TensorView& q, const TensorView& output, const TensorView& lse, int layer_idx,
           int generate_token_idx, const std::int32_t* lengths) const {
    layer("attn", layer_idx);
    const std::int64_t batch = q.ndim == 3 ? q.shape[0] : -1;
    if (batch < 1 || batch > c.max_batch_size) {
      throw Error(where("attn") + ": q has shape " + q.shape_string() +
                  "; needs [batch, q_head_num, head_dim] with batch 1 to max_batch_size=" +
                  std::to_string(c.max_batch_size));
    }
    const char* call = attn_call;
    q.check(call, "q", c.value_type(), {batch, c.q_head_num, c.head_dim}, "[batch, q_head_num, head_dim]", memory);
    output.check(call, "output", c.value_type(), {batch, c.q_head_num, c.head_dim},
                 "[batch, q_head_num, head_dim]", memory);
    lse.check(call, "attn_lse", DType::kFloat32, {batch, c.q_head_num}, "[batch, q_head_num]", memory);
    if (generate_token_idx < 0) {
      throw Error(where("attn") + ": generate_token_idx=" + std::to_string(generate_token_idx) + " must be >= 0");
    }
    for (int b = 0; b < batch; ++b) {
      if (lengths[b] < 1) {
        throw Error(where("attn") + ": sequence " + std::to_string(b) + " of layer " + std::to_string(layer_idx) +
                    " holds no tokens; append before attending");
      }
    }
    return static_cast<int>(batch);
  }
  // The ElasticConfig of an elastic attn call: the config's, with the call's counts.
  ElasticConfig elastic(int pick_block_num, int init_block_num, int local_block_num) const {
    ElasticConfig e = c.elastic_config();
    e.pick_block_num = pick_block_num;
    e.init_block_num = init_block_num;
    e.local_block_num = local_block_num;
    if (Support s = e.validate(); !s) throw Error(where("attn") + ": " + s.why);
    return e;
  }
  [[noreturn]] void owner_first(int layer_idx, int owner) const {
    throw Error(where("attn") + ": layer " + std::to_string(layer_idx) + " shares layer " + std::to_string(owner) +
                "'s selection (layer_step=" + std::to_string(c.layer_step) +
                "), which has not selected with these counts and batch: attend layer " + std::to_string(owner) +
                " first in each step");
  }

  // A block's k and v kv_type [kv_head_num][block_len][head_dim] (quantized: the block's
  // stored rows, block_row_bytes() bytes: codes, then scales), its importance float
  // [kv_head_num][block_len] and its anchors value_type() [kv_head_num][anchor_values].
  void block_kv(const char* call, const TensorView& k, const TensorView& v) const {
    for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"k", k}, {"v", v}}) {
      t.check(where(call).c_str(), name, c.kv_type, {c.kv_head_num, c.block_len, c.head_dim},
              "[kv_head_num, block_len, head_dim]", accessor_memory(t));
    }
  }
  void importance(const char* call, const TensorView& t) const {
    t.check(where(call).c_str(), "importance", DType::kFloat32, {c.kv_head_num, c.block_len},
            "[kv_head_num, block_len]", accessor_memory(t));
  }
  void anchor(const char* call, const TensorView& t) const {
    t.check(where(call).c_str(), "anchor", c.value_type(), {c.kv_head_num, c.anchor_values()},
            "[kv_head_num, anchor_values]", accessor_memory(t));
  }
  DeviceKind accessor_memory(const TensorView& t) const { return any_memory ? t.device : memory; }
};

}  // namespace ekv
