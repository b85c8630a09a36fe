#pragma once
// cpu_append_kv: append_kv's semantics on a host-resident cache: new tokens' K and V
// written at each sequence's length, which then grows.

#include <algorithm>
#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/quant.hpp"

namespace ekv {

// k_new and v_new: [batch][new_tokens][kv_heads][head_dim]. Tokens past a sequence's
// capacity are not written and its length stops there; returns false if any was dropped.
// Every kv head shares the sequence's length (lengths[seq]). Throws ekv::Error for null
// pointers or new_tokens < 0.
template <typename T>
bool cpu_append_kv(const KVView<T>& kv, const T* k_new, const T* v_new, int new_tokens) {
  if (new_tokens < 0) throw Error("cpu_append_kv: new_tokens=" + std::to_string(new_tokens) + " must be >= 0");
  if (kv.k == nullptr || kv.v == nullptr || kv.lengths == nullptr || k_new == nullptr || v_new == nullptr) {
    throw Error("cpu_append_kv: null K, V, lengths or new tokens (a page-index view has no lengths to grow: "
                "append through paged_kv or paged_nhd_kv over the same pages)");
  }
  bool all = true;
  const std::size_t token_elems = static_cast<std::size_t>(kv.kv_heads) * kv.head_dim;
  for (int b = 0; b < kv.batch; ++b) {
    const int start = kv.lengths[b];
    const int fits = std::max(0, std::min(new_tokens, kv.capacity() - start));
    for (int t = 0; t < fits; ++t) {
      for (int h = 0; h < kv.kv_heads; ++h) {
        const std::size_t src = (static_cast<std::size_t>(b) * new_tokens + t) * token_elems +
                                static_cast<std::size_t>(h) * kv.head_dim;
        const std::int64_t dst = kv.offset(b, h, start + t);
        std::copy(k_new + src, k_new + src + kv.head_dim, kv.k + dst);
        std::copy(v_new + src, v_new + src + kv.head_dim, kv.v + dst);
      }
    }
    kv.lengths[b] = start + fits;
    all = all && fits == new_tokens;
  }
  return all;
}

// The same into a quantized cache: each new row (T: float, half or bfloat16) quantized
// with quantize_row_from, the function the GPU's append_kv runs, so both write the same
// bytes. FP8 divides by the view's per-head scales.
template <typename T>
bool cpu_append_kv(const QuantKVView& kv, const T* k_new, const T* v_new, int new_tokens) {
  if (new_tokens < 0) throw Error("cpu_append_kv: new_tokens=" + std::to_string(new_tokens) + " must be >= 0");
  if (Support s = kv_storage_supports(kv.storage, kv.head_dim); !s) throw Error("cpu_append_kv: " + s.why);
  if (!kv.has_rows() || kv.codes.lengths == nullptr ||
      k_new == nullptr || v_new == nullptr) {
    throw Error("cpu_append_kv: null K or V codes, scales, lengths or new tokens");
  }
  bool all = true;
  const std::size_t token_elems = static_cast<std::size_t>(kv.kv_heads()) * kv.head_dim;
  for (int b = 0; b < kv.batch(); ++b) {
    const int start = kv.codes.lengths[b];
    const int fits = std::max(0, std::min(new_tokens, kv.capacity() - start));
    for (int t = 0; t < fits; ++t) {
      for (int h = 0; h < kv.kv_heads(); ++h) {
        const std::size_t src = (static_cast<std::size_t>(b) * new_tokens + t) * token_elems +
                                static_cast<std::size_t>(h) * kv.head_dim;
        quantize_row_from(kv.storage, k_new + src, kv.head_dim, kv.row_codes(false, b, h, start + t),
                          kv.row_scales(false, b, h, start + t), kv.head_scale(false, h));
        quantize_row_from(kv.storage, v_new + src, kv.head_dim, kv.row_codes(true, b, h, start + t),
                          kv.row_scales(true, b, h, start + t), kv.head_scale(true, h));
      }
    }
    kv.codes.lengths[b] = start + fits;
    all = all && fits == new_tokens;
  }
  return all;
}

}  // namespace ekv
