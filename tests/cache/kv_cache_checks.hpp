#pragma once
// What the KV cache tests of both backends share: a small config, the cache's tokens kept
// apart in a pool of their own (the shadow), and the checks of an attention output
// against the float64 reference over the shadow: exact, and elastic over the blocks the
// cache says it read. Tolerances per head, relative L2 against float64: float 1e-5, half
// 2e-3, bfloat16 1.6e-2 (the outputs' rounding: 2^-24, 2^-11, 2^-8 relative, with margin).
// A quantized cache's shadow holds the values its storage decodes to (stored_values), in
// float, so its outputs (half) are held to half's tolerance against float64 over those.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/reference.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/block_sparse_view.hpp"
#include "ekv/elastic/policy.hpp"

namespace ekv::test {

template <typename T>
double tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, __half>) return 2e-3;
  else return 1.6e-2;
}

inline ekv::KVCacheConfig small_config(ekv::DType dtype) {
  ekv::KVCacheConfig c;
  c.layer_num = 3;
  c.kv_head_num = 2;
  c.q_head_num = 8;
  c.head_dim = 64;
  c.block_len = 16;
  c.kv_type = dtype;
  c.max_block_num = 40;
  c.max_batch_size = 3;
  c.max_thread_num = 2;
  return c;
}

// The cache's tokens kept apart, per layer, in a pool whose table is the identity: what
// the reference attends over, independent of the cache's allocator.
template <typename T>
struct Shadow {
  Shadow(const ekv::KVCacheConfig& c, int max_blocks)
      : config(c), max_blocks(max_blocks), table(static_cast<std::size_t>(c.max_batch_size) * max_blocks) {
    for (std::size_t i = 0; i < table.size(); ++i) table[i] = static_cast<std::int32_t>(i);
    const std::size_t pool = table.size() * c.block_elems();
    for (int l = 0; l < c.layer_num; ++l) {
      k.emplace_back(pool);
      v.emplace_back(pool);
      lengths.emplace_back(c.max_batch_size, 0);
    }
  }
  ekv::KVView<T> view(int layer, int batch) {
    return ekv::paged_kv<T>(k[layer].data(), v[layer].data(), table.data(), lengths[layer].data(), batch,
                            config.kv_head_num, config.head_dim, config.block_len, max_blocks);
  }
  ekv::KVCacheConfig config;
  int max_blocks;
  std::vector<std::int32_t> table;
  std::vector<std::vector<T>> k, v;
  std::vector<std::vector<std::int32_t>> lengths;
};

// Rows of T [n][head_dim] as storage s keeps them, decoded to float: quantize_row_from (what
// both backends' appends run, FP8 with a head scale of 1), then dequantize_row.
template <typename T>
std::vector<float> stored_values(ekv::KVStorage s, const std::vector<T>& x, int head_dim) {
  const std::size_t rows = x.size() / head_dim;
  std::vector<unsigned char> codes(ekv::kv_code_bytes(s, head_dim));
  std::vector<__half> scales(head_dim / ekv::kQuantGroup + 1);
  std::vector<float> out(x.size());
  for (std::size_t r = 0; r < rows; ++r) {
    ekv::quantize_row_from<T>(s, x.data() + r * head_dim, head_dim, codes.data(), scales.data());
    ekv::dequantize_row(s, codes.data(), scales.data(), head_dim, out.data() + r * head_dim);
  }
  return out;
}

// Values of type From as To (exactly, for half and bfloat16 to float).
template <typename To, typename From>
std::vector<To> converted(const std::vector<From>& x) {
  std::vector<To> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    out[i] = ekv::DTypeTraits<To>::from_float(ekv::DTypeTraits<From>::to_float(x[i]));
  }
  return out;
}

// o: the cache's output, O (T, or half over a quantized cache's float shadow).
template <typename T, typename O = T>
void check_exact(Shadow<T>& shadow, int layer, int batch, const T* q, const O* o, const float* lse) {
  const ekv::KVCacheConfig& c = shadow.config;
  const auto reference = ekv::reference_decode(shadow.view(layer, batch), q, c.q_head_num,
                                               1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  const ekv::L2Error error = ekv::relative_l2_error(o, reference, c.head_dim);
  INFO("layer " << layer << ": pooled " << error.pooled << ", worst head " << error.worst);
  CHECK(error.worst < tolerance<O>());
  for (std::size_t r = 0; r < reference.size(); ++r) CHECK(std::abs(lse[r] - reference[r].lse) < 1e-2);
}

// elastic with pick, init and local blocks: the blocks read are the policy's count, and
// the output is exact over them
template <typename T, typename Read, typename O = T>
void check_elastic(Shadow<T>& shadow, int layer, int batch, const T* q, const O* o, int pick, Read&& attended,
                   int init = 1, int local = 1) {
  const ekv::KVCacheConfig& c = shadow.config;
  ekv::ElasticConfig e = c.elastic_config();
  e.pick_block_num = pick;
  e.init_block_num = init;
  e.local_block_num = local;
  const ekv::ElasticPolicy policy(e);
  std::vector<std::int32_t> tables(static_cast<std::size_t>(batch) * c.kv_head_num * shadow.max_blocks);
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(batch) * c.kv_head_num);
  const ekv::KVView<T> base = shadow.view(layer, batch);
  for (int b = 0; b < batch; ++b) {
    const int len = shadow.lengths[layer][b], blocks = ekv::sequence_blocks(len, c.block_len);
    for (int h = 0; h < c.kv_head_num; ++h) {
      const std::vector<int> read = attended(b, h);
      INFO("layer " << layer << " sequence " << b << " kv head " << h);
      CHECK(static_cast<int>(read.size()) == policy.counts(blocks).total());
      const std::size_t row = static_cast<std::size_t>(b) * c.kv_head_num + h;
      lengths[row] = 0;
      for (std::size_t i = 0; i < read.size(); ++i) {
        REQUIRE(read[i] < blocks);
        tables[row * shadow.max_blocks + i] = static_cast<std::int32_t>(base.block_id(b, h, read[i]));
        lengths[row] += ekv::block_valid_tokens(len, c.block_len, read[i]);
      }
    }
  }
  const auto sparse = ekv::block_sparse_view<T>(base, tables.data(), lengths.data(), shadow.max_blocks);
  const auto reference =
      ekv::reference_decode(sparse, q, c.q_head_num, 1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  const ekv::L2Error error = ekv::relative_l2_error(o, reference, c.head_dim);
  INFO("elastic layer " << layer << ": pooled " << error.pooled << ", worst head " << error.worst);
  CHECK(error.worst < tolerance<O>());
}

}  // namespace ekv::test
