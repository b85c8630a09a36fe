#pragma once
// KVCacheConfig: the shape and policy of a multi-layer paged KV cache, with the field names
// of the older KVCache config (KTransformers' kvcache): layer_num, kv_head_num, ... Enum
// fields are ekv's own (AnchorType is AnchorKind, GGMLType is DType; their text forms
// accept the older spellings QUEST, FP16, KVHEAD).
//
// kv_type is how K and V are stored: float32, float16, bfloat16 as they are, or quantized
// (core/quant.hpp): float8_e4m3 (FP8 with a scale of 1 per kv head), q8_0, q4_0 (GGML's
// groups of 32, head_dim a multiple of 32). Queries, outputs and anchors are value_type():
// kv_type where it is dense, float16 for quantized storage (KTransformers' attn takes fp16
// queries with its quantized kv types too); the anchors come from the dequantized keys.
// A pool block of K (or V) is block_bytes(): dense, [kv_head_num][block_len][head_dim]
// values; quantized, every row's codes [kv_head_num][block_len][code bytes], then (Q8_0,
// Q4_0) every row's float16 scales [kv_head_num][block_len][head_dim / 32], padded to 16
// bytes so that the next block's codes stay aligned for vector loads. validate() never throws and names the
// field, its value and what is supported; to_string() and parse_kv_cache_config() are the
// text form for CLIs, logs and the cache file's metadata.

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>

#include "ekv/attention/decode_support.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/elastic_problem.hpp"

namespace ekv {

using AnchorType = AnchorKind;  // FIXED, DYNAMIC, QUEST, BLOCK_MEAN, BLOCK_MAX
using GGMLType = DType;         // FP32, FP16, BF16, FP8 (E4M3), Q8_0, Q4_0

// The storage types a KVCache keeps K and V in, and the dense ones (queries' types too).
inline constexpr DType kKVCacheTypes[] = {DType::kFloat32,    DType::kFloat16, DType::kBFloat16,
                                          DType::kFloat8E4M3, DType::kQ8_0,    DType::kQ4_0};
inline constexpr DType kKVCacheDenseTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

struct KVCacheConfig {
  int layer_num = 1;
  int kv_head_num = 8;
  int q_head_num = 32;
  int head_dim = 128;
  int block_len = 64;  // tokens per block
  int anchor_num = 1;  // anchors per block for FIXED and DYNAMIC
  AnchorType anchor_type = AnchorKind::kQuest;
  GGMLType kv_type = DType::kFloat16;
  RetrievalType retrieval_type = RetrievalType::kKvHead;
  int layer_step = 1;    // layers sharing one selection
  int token_step = 1;    // decode steps sharing one selection
  int layer_offset = 0;  // the first layer that shares
  int max_block_num = 1024;  // blocks in each layer's pool, shared by all sequences
  int max_batch_size = 1;    // sequences the cache holds at once
  int max_thread_num = 1;    // CPU threads (the host backend's CPUInfer)

  // Blocks one sequence may hold: the whole pool, up to what GPU selection supports.
  int max_seq_block_num() const { return std::min(max_block_num, kSelectMaxBlocks); }
  int max_seq_len() const { return max_seq_block_num() * block_len; }
  int group() const { return q_head_num / kv_head_num; }
  // Anchor values per block and kv head, in value_type().
  int anchor_values() const { return ekv::anchor_values(anchor_type, anchor_num, head_dim); }
  // Elements of one block of K (or V) over all kv heads, in one layer.
  std::int64_t block_elems() const { return std::int64_t{kv_head_num} * block_len * head_dim; }

  // How K and V are stored, and whether quantized.
  KVStorage storage() const { return kv_storage_of(kv_type); }
  bool quantized() const { return is_quantized(storage()); }
  // The type of queries, outputs and anchors: kv_type where dense, float16 where quantized.
  DType value_type() const { return quantized() ? DType::kFloat16 : kv_type; }
  // Bytes of one stored row (a token's head_dim values of one kv head), scales included.
  std::size_t row_bytes() const { return kv_row_bytes(storage(), head_dim); }
  // Bytes of a block's rows (what the block accessors copy), of its codes alone (where its
  // scales start), and of a pool block (the rows padded to 16 bytes).
  std::size_t block_row_bytes() const { return static_cast<std::size_t>(kv_head_num) * block_len * row_bytes(); }
  std::size_t block_code_bytes() const {
    return static_cast<std::size_t>(kv_head_num) * block_len * kv_code_bytes(storage(), head_dim);
  }
  std::size_t block_bytes() const { return (block_row_bytes() + 15) / 16 * 16; }

  // The elastic policy's fields of this config; the block counts come per call.
  ElasticConfig elastic_config() const {
    ElasticConfig c;
    c.anchor = anchor_type;
    c.anchor_num = anchor_num;
    c.retrieval = retrieval_type;
    c.token_step = token_step;
    c.layer_step = layer_step;
    c.layer_offset = layer_offset;
    return c;
  }
  // The decode problem of one layer at the longest sequence.
  DecodeProblem decode_problem(int batch) const {
    return DecodeProblem{value_type(), batch, q_head_num, kv_head_num, head_dim, max_seq_len()};
  }

  // Never throws: ok, or the first problem: "KVCacheConfig: <field>=<value> ..., supported: ...".
  Support validate() const {
    const auto fail = [](const std::string& why) { return Support{false, "KVCacheConfig: " + why}; };
    const auto at_least = [&](const char* field, int value, int lo) -> Support {
      if (value >= lo) return {};
      return fail(std::string(field) + "=" + std::to_string(value) + " not supported; supported: " +
                  std::to_string(lo) + " or more");
    };
    const std::pair<const char*, int> positive[] = {
        {"layer_num", layer_num},   {"kv_head_num", kv_head_num},     {"q_head_num", q_head_num},
        {"block_len", block_len},   {"anchor_num", anchor_num},       {"layer_step", layer_step},
        {"token_step", token_step}, {"max_block_num", max_block_num}, {"max_batch_size", max_batch_size},
        {"max_thread_num", max_thread_num}};
    for (const auto& [field, value] : positive) {
      if (Support s = at_least(field, value, 1); !s) return s;
    }
    if (q_head_num % kv_head_num != 0) {
      return fail("q_head_num=" + std::to_string(q_head_num) + " not supported with kv_head_num=" +
                  std::to_string(kv_head_num) + "; supported: a multiple of kv_head_num");
    }
    if (Support s = check_supported<kDecodeHeadDims>("head_dim", "KVCache", head_dim); !s) return fail(s.why);
    if (Support s = check_supported<kKVCacheTypes>("kv_type", "KVCache", kv_type); !s) return fail(s.why);
    if (Support s = kv_storage_supports(storage(), head_dim); !s) return fail(s.why);
    if (layer_offset < 0 || layer_offset >= layer_step) {
      return fail("layer_offset=" + std::to_string(layer_offset) + " not supported; supported: 0 to layer_step - 1 = " +
                  std::to_string(layer_step - 1));
    }
    // tokens of a layer's pool, and elements of its K, must be countable
    if (std::int64_t{max_block_num} * block_len > std::numeric_limits<std::int32_t>::max()) {
      return fail("max_block_num=" + std::to_string(max_block_num) + " x block_len=" + std::to_string(block_len) +
                  " tokens per layer not supported; supported: up to 2^31 - 1");
    }
    if (Support s = elastic_config().validate(); !s) return fail(s.why);
    ElasticProblem elastic;
    elastic.decode = decode_problem(max_batch_size);
    elastic.block_len = block_len;
    elastic.policy = ElasticPolicy(elastic_config());
    if (quantized()) elastic.kv_storage = storage();
    if (Support s = supports(elastic); !s) return fail(s.why);
    // (supports() bounds anchor_num, so anchor_values() is an int.) A layer's pools
    // (cache/kv_cache_file.hpp's KVCacheLayerSizes) are sized in std::size_t: a product past
    // it would overflow (UBSan on tests/fuzz's kv_cache_config)
    const double layer_bytes = static_cast<double>(max_block_num) *
                               (2.0 * static_cast<double>(block_bytes()) +
                                static_cast<double>(kv_head_num) * anchor_values() * dtype_size(value_type()) +
                                static_cast<double>(kv_head_num) * block_len * sizeof(float));
    if (layer_bytes > 0x1p62) {
      char bytes[32];
      std::snprintf(bytes, sizeof bytes, "%.3g", layer_bytes);
      return fail("max_block_num=" + std::to_string(max_block_num) + " blocks of kv_head_num=" +
                  std::to_string(kv_head_num) + " heads, " + bytes +
                  " bytes per layer (K, V, anchors, importance) not supported; supported: up to 2^62 bytes");
    }
    return {};
  }
};

inline constexpr const char* kKVCacheConfigFields =
    "layer_num, kv_head_num, q_head_num, head_dim, block_len, anchor_num, anchor_type, kv_type, retrieval_type, "
    "layer_step, token_step, layer_offset, max_block_num, max_batch_size, max_thread_num";

// "layer_num=32 kv_head_num=8 ... max_thread_num=16": every field, in the order above.
inline std::string to_string(const KVCacheConfig& c) {
  std::ostringstream out;
  out << "layer_num=" << c.layer_num << " kv_head_num=" << c.kv_head_num << " q_head_num=" << c.q_head_num
      << " head_dim=" << c.head_dim << " block_len=" << c.block_len << " anchor_num=" << c.anchor_num
      << " anchor_type=" << to_string(c.anchor_type) << " kv_type=" << to_string(c.kv_type)
      << " retrieval_type=" << to_string(c.retrieval_type) << " layer_step=" << c.layer_step
      << " token_step=" << c.token_step << " layer_offset=" << c.layer_offset << " max_block_num=" << c.max_block_num
      << " max_batch_size=" << c.max_batch_size << " max_thread_num=" << c.max_thread_num;
  return out.str();
}

// Fields as key=value, separated by spaces or commas, in any order; fields not given keep
// `base`'s values. Throws ekv::Error naming an unknown field (and the known ones), a value
// that is not a whole number or a name of its enum. Does not validate: call validate().
inline KVCacheConfig parse_kv_cache_config(const std::string& text, KVCacheConfig base = {}) {
  std::string spaced = text;
  std::replace(spaced.begin(), spaced.end(), ',', ' ');
  std::istringstream in(spaced);
  std::string item;
  while (in >> item) {
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      throw Error("KVCacheConfig: '" + item + "' is not field=value; fields: " + kKVCacheConfigFields);
    }
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    const auto whole = [&](int& field) {
      std::size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != value.size() || v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
        throw Error("KVCacheConfig: " + key + "=" + value + " is not a whole number");
      }
      field = static_cast<int>(v);
    };
    std::string lower = value;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (key == "layer_num") whole(base.layer_num);
    else if (key == "kv_head_num") whole(base.kv_head_num);
    else if (key == "q_head_num") whole(base.q_head_num);
    else if (key == "head_dim") whole(base.head_dim);
    else if (key == "block_len") whole(base.block_len);
    else if (key == "anchor_num") whole(base.anchor_num);
    else if (key == "anchor_type") base.anchor_type = parse_anchor_kind(value);
    else if (key == "kv_type") base.kv_type = parse_dtype(lower);
    else if (key == "retrieval_type") base.retrieval_type = parse_retrieval_type(value);
    else if (key == "layer_step") whole(base.layer_step);
    else if (key == "token_step") whole(base.token_step);
    else if (key == "layer_offset") whole(base.layer_offset);
    else if (key == "max_block_num") whole(base.max_block_num);
    else if (key == "max_batch_size") whole(base.max_batch_size);
    else if (key == "max_thread_num") whole(base.max_thread_num);
    else throw Error("KVCacheConfig: unknown field '" + key + "'; fields: " + kKVCacheConfigFields);
  }
  return base;
}

inline bool operator==(const KVCacheConfig& a, const KVCacheConfig& b) { return to_string(a) == to_string(b); }
inline bool operator!=(const KVCacheConfig& a, const KVCacheConfig& b) { return !(a == b); }

}  // namespace ekv
