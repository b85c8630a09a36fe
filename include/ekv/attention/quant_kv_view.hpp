#pragma once
// QuantKVView: a KV cache stored in one of quant.hpp's formats, as pointers and strides.
// Two KVViews share the block table and lengths: `codes`, over bytes (a row is
// kv_code_bytes(storage, head_dim) bytes; strides in bytes), and `scales`, over float16
// (a row is head_dim / 32 scales for Q8_0 and Q4_0; unused otherwise), so a token's codes
// and scales are found by the same block arithmetic. FP8's scales are per kv head.
// A view owns nothing and is taken by value, for device and host memory alike; attention
// only reads through it, append writes codes, scales and lengths.

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"
#include "ekv/core/quant.hpp"

namespace ekv {

struct QuantKVView {
  KVStorage storage = KVStorage::kQ8_0;
  int head_dim = 0;                     // values per row
  KVView<std::uint8_t> codes;  // head_dim there: code bytes per row
  KVView<__half> scales;       // head_dim there: scales per row (0 where none)
  const float* k_head_scales = nullptr;  // FP8: [kv_heads], null for 1
  const float* v_head_scales = nullptr;

  EKV_HOST_DEVICE int batch() const { return codes.batch; }
  EKV_HOST_DEVICE int kv_heads() const { return codes.kv_heads; }
  EKV_HOST_DEVICE int length(int seq, int head) const { return codes.length(seq, head); }
  EKV_HOST_DEVICE int capacity() const { return codes.capacity(); }

  // Where K's (or V's) row of token pos of (seq, head) keeps its codes and scales (null
  // for formats without per-row scales).
  EKV_HOST_DEVICE std::uint8_t* row_codes(bool is_v, int seq, int head, int pos) const {
    return (is_v ? codes.v : codes.k) + codes.offset(seq, head, pos);
  }
  EKV_HOST_DEVICE __half* row_scales(bool is_v, int seq, int head, int pos) const {
    return scales.k == nullptr ? nullptr : (is_v ? scales.v : scales.k) + scales.offset(seq, head, pos);
  }

  // Value i of K's (or V's) row of token pos of (seq, head).
  EKV_HOST_DEVICE float value(bool is_v, int seq, int head, int pos, int i) const {
    return dequantize_value(storage, row_codes(is_v, seq, head, pos), row_scales(is_v, seq, head, pos), i,
                            head_scale(is_v, head));
  }
  // The whole row as float, into out [head_dim].
  EKV_HOST_DEVICE void row(bool is_v, int seq, int head, int pos, float* out) const {
    dequantize_row(storage, row_codes(is_v, seq, head, pos), row_scales(is_v, seq, head, pos), head_dim, out,
                   head_scale(is_v, head));
  }
  // Whether K's and V's codes, and the scales the format has, are all given.
  bool has_rows() const {
    const bool scaled = kv_scale_bytes(storage, head_dim) > 0;
    return codes.k != nullptr && codes.v != nullptr && (!scaled || (scales.k != nullptr && scales.v != nullptr));
  }
  EKV_HOST_DEVICE float head_scale(bool is_v, int head) const {
    const float* s = is_v ? v_head_scales : k_head_scales;
    return s != nullptr ? s[head] : 1.0f;
  }
};

// Where a quantized pool's rows live: K's and V's codes and (Q8_0, Q4_0) scales.
struct QuantKVPool {
  std::uint8_t* k_codes = nullptr;
  std::uint8_t* v_codes = nullptr;
  __half* k_scales = nullptr;
  __half* v_scales = nullptr;
};

namespace detail {

inline void check_quant_view_args(KVStorage storage, const QuantKVPool& pool, int head_dim, const char* who) {
  if (Support s = kv_storage_supports(storage, head_dim); !s) throw Error(std::string(who) + ": " + s.why);
  if (pool.k_codes == nullptr || pool.v_codes == nullptr) throw Error(std::string(who) + ": null K or V codes");
  if (kv_scale_bytes(storage, head_dim) > 0 && (pool.k_scales == nullptr || pool.v_scales == nullptr)) {
    throw Error(std::string(who) + ": storage " + to_string(storage) + " needs K and V scales");
  }
}

inline QuantKVView quant_view_from(KVStorage storage, int head_dim, const KVView<std::uint8_t>& codes,
                                   const KVView<__half>& scales) {
  QuantKVView view;
  view.storage = storage;
  view.head_dim = head_dim;
  view.codes = codes;
  view.scales = scales;
  if (kv_scale_bytes(storage, head_dim) == 0) view.scales.k = view.scales.v = nullptr;
  return view;
}

}  // namespace detail

// Paged pool: codes [num_blocks][kv_heads][block_len][code bytes], scales
// [num_blocks][kv_heads][block_len][head_dim / 32] (each block's code rows first, in their
// own array, so code rows stay aligned as their byte count is), block_table int32
// [batch][max_blocks_per_seq], lengths int32 [batch].
inline QuantKVView paged_quant_kv(KVStorage storage, const QuantKVPool& pool, const std::int32_t* block_table,
                                  std::int32_t* lengths, int batch, int kv_heads, int head_dim, int block_len,
                                  int max_blocks_per_seq) {
  detail::check_quant_view_args(storage, pool, head_dim, "paged_quant_kv");
  const int code_bytes = static_cast<int>(kv_code_bytes(storage, head_dim));
  const int groups = static_cast<int>(kv_scale_bytes(storage, head_dim) / sizeof(__half));
  return detail::quant_view_from(
      storage, head_dim,
      paged_kv<std::uint8_t>(pool.k_codes, pool.v_codes, block_table, lengths, batch, kv_heads, code_bytes,
                                   block_len, max_blocks_per_seq),
      paged_kv<__half>(pool.k_scales, pool.v_scales, block_table, lengths, batch, kv_heads, groups, block_len,
                             max_blocks_per_seq));
}

// Contiguous, codes [batch][kv_heads][capacity][code bytes], scales
// [batch][kv_heads][capacity][head_dim / 32] ("HND").
inline QuantKVView contiguous_hnd_quant_kv(KVStorage storage, const QuantKVPool& pool, std::int32_t* lengths,
                                           int batch, int kv_heads, int head_dim, int capacity) {
  detail::check_quant_view_args(storage, pool, head_dim, "contiguous_hnd_quant_kv");
  const int code_bytes = static_cast<int>(kv_code_bytes(storage, head_dim));
  const int groups = static_cast<int>(kv_scale_bytes(storage, head_dim) / sizeof(__half));
  return detail::quant_view_from(
      storage, head_dim,
      contiguous_hnd_kv<std::uint8_t>(pool.k_codes, pool.v_codes, lengths, batch, kv_heads, code_bytes,
                                            capacity),
      contiguous_hnd_kv<__half>(pool.k_scales, pool.v_scales, lengths, batch, kv_heads, groups, capacity));
}

}  // namespace ekv
