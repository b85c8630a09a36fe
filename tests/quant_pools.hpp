#pragma once
// A float HostCache (decode_check.hpp) quantized for the CPU tests of quantized storage:
// its K and V pools' codes and scales, the values those decode to, and a QuantKVView.

#include <cuda_fp16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "decode_check.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/quant.hpp"

namespace ekv::test {

// A float cache's K and V pools, row by row (HND layouts: row r at r * head_dim),
// quantized into codes and scales, and the values those decode to.
struct QuantPools {
  std::vector<std::uint8_t> k_codes, v_codes;
  std::vector<__half> k_scales, v_scales;
  std::vector<float> k_values, v_values;  // dequantized, in the float pool's layout

  QuantPools(KVStorage s, const HostCache<float>& cache) {
    const int d = cache.shape.head_dim;
    const std::size_t rows = cache.k.size() / d;
    const std::size_t code_bytes = kv_code_bytes(s, d), groups = kv_scale_bytes(s, d) / sizeof(__half);
    k_codes.resize(rows * code_bytes);
    v_codes.resize(rows * code_bytes);
    k_scales.resize(std::max<std::size_t>(1, rows * groups));
    v_scales.resize(k_scales.size());
    k_values.resize(cache.k.size());
    v_values.resize(cache.v.size());
    for (std::size_t r = 0; r < rows; ++r) {
      quantize_row(s, cache.k.data() + r * d, d, k_codes.data() + r * code_bytes, k_scales.data() + r * groups);
      quantize_row(s, cache.v.data() + r * d, d, v_codes.data() + r * code_bytes, v_scales.data() + r * groups);
      dequantize_row(s, k_codes.data() + r * code_bytes, k_scales.data() + r * groups, d, k_values.data() + r * d);
      dequantize_row(s, v_codes.data() + r * code_bytes, v_scales.data() + r * groups, d, v_values.data() + r * d);
    }
  }
  QuantKVPool pool() { return {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()}; }
};

// The view over p for the cache's layout, with the cache's lengths or `lengths`.
inline QuantKVView quant_view(KVStorage s, QuantPools& p, HostCache<float>& cache, std::int32_t* lengths = nullptr) {
  const CacheShape& c = cache.shape;
  std::int32_t* len = lengths != nullptr ? lengths : cache.lengths.data();
  if (c.layout == Layout::kPaged) {
    return paged_quant_kv(s, p.pool(), cache.table.data(), len, c.batch(), c.kv_heads, c.head_dim, cache.block_len,
                          cache.blocks_per_seq);
  }
  return contiguous_hnd_quant_kv(s, p.pool(), len, c.batch(), c.kv_heads, c.head_dim, cache.block_len);
}

}  // namespace ekv::test
