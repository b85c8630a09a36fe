#pragma once
// The views a KV cache's layer is read and written through, for every backend: a KVView<T>
// over a dense pool, a QuantKVView over a quantized one (kv_cache_config.hpp's block
// layout: each pool block's code rows, then its scale rows, block_bytes() apart). The
// pools are one layer's K and V, `table` the allocator's block tables, `lengths` the
// layer's token counts, wherever they live (host or device memory).

#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/core/dispatch.hpp"

namespace ekv {

template <typename T>
KVView<T> kv_cache_view(const KVCacheConfig& c, unsigned char* k, unsigned char* v, const std::int32_t* table,
                        std::int32_t* lengths) {
  return paged_kv<T>(reinterpret_cast<T*>(k), reinterpret_cast<T*>(v), table, lengths, c.max_batch_size,
                     c.kv_head_num, c.head_dim, c.block_len, c.max_seq_block_num());
}

// FP8's per-head scales are 1 (none given).
inline QuantKVView kv_cache_quant_view(const KVCacheConfig& c, unsigned char* k, unsigned char* v,
                                       const std::int32_t* table, std::int32_t* lengths) {
  const KVStorage s = c.storage();
  const int code_bytes = static_cast<int>(kv_code_bytes(s, c.head_dim));
  const int groups = static_cast<int>(kv_scale_bytes(s, c.head_dim) / sizeof(__half));
  const auto block = static_cast<std::int64_t>(c.block_bytes());
  KVView<std::uint8_t> codes = paged_kv<std::uint8_t>(k, v, table, lengths, c.max_batch_size, c.kv_head_num,
                                                      code_bytes, c.block_len, c.max_seq_block_num());
  codes.block_stride = block;
  const std::size_t at = c.block_code_bytes();  // where a block's scales start, 16-byte aligned
  KVView<__half> scales =
      paged_kv<__half>(reinterpret_cast<__half*>(k + at), reinterpret_cast<__half*>(v + at), table, lengths,
                       c.max_batch_size, c.kv_head_num, groups, c.block_len, c.max_seq_block_num());
  scales.block_stride = block / static_cast<std::int64_t>(sizeof(__half));
  return detail::quant_view_from(s, c.head_dim, codes, scales);
}

// f(TypeTag<value type>, view of the first `batch` sequences): a KVView<T> for dense
// storage, a QuantKVView (with half queries) for quantized. `who` names the cache in the
// error for a kv_type no view exists for.
template <typename F>
void with_kv_cache_view(const KVCacheConfig& c, unsigned char* k, unsigned char* v, const std::int32_t* table,
                        std::int32_t* lengths, int batch, const char* who, F&& f) {
  if (c.quantized()) {
    QuantKVView kv = kv_cache_quant_view(c, k, v, table, lengths);
    kv.codes.batch = kv.scales.batch = batch;
    f(TypeTag<__half>{}, kv);
    return;
  }
  dispatch<kKVCacheDenseTypes>("kv_type", who, c.kv_type, [&](auto tag) {
    KVView<typename decltype(tag)::type> kv = kv_cache_view<typename decltype(tag)::type>(c, k, v, table, lengths);
    kv.batch = batch;
    f(tag, kv);
  });
}

}  // namespace ekv
