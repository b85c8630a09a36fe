#pragma once
// append_kv: writes new tokens' K and V into a cache (paged or contiguous) for a whole
// batch and advances the lengths, on a stream: the write half of a decode step.

#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/vec.cuh"

namespace ekv {
namespace detail {

// One CTA per sequence: it alone reads and advances lengths[seq], so lengths may be
// updated in place. 16-byte chunks, strided over the CTA.
template <typename T>
__global__ void append_kv_kernel(KVView<T> kv, const T* __restrict__ k_new, const T* __restrict__ v_new,
                                 int new_tokens, int* __restrict__ overflow) {
  constexpr int kChunk = 16 / static_cast<int>(sizeof(T));
  __shared__ int start;
  const int seq = blockIdx.x;
  if (threadIdx.x == 0) start = kv.lengths[seq];
  __syncthreads();
  const int fits = max(0, min(new_tokens, kv.capacity() - start));
  const int chunks_per_token = kv.kv_heads * kv.head_dim / kChunk;
  const std::int64_t src_base = static_cast<std::int64_t>(seq) * new_tokens * kv.kv_heads * kv.head_dim;
  const std::int64_t chunks = static_cast<std::int64_t>(fits) * chunks_per_token;
  for (std::int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    const int token = static_cast<int>(c / chunks_per_token);
    const int within = static_cast<int>(c % chunks_per_token) * kChunk;
    const int head = within / kv.head_dim, d = within % kv.head_dim;
    const std::int64_t src = src_base + static_cast<std::int64_t>(token) * kv.kv_heads * kv.head_dim + within;
    const std::int64_t dst = kv.offset(seq, head, start + token) + d;
    store<T, 16>(kv.k + dst, load<T, 16>(k_new + src));
    store<T, 16>(kv.v + dst, load<T, 16>(v_new + src));
  }
  __syncthreads();  // every thread has read `start` before it changes
  if (threadIdx.x == 0) {
    kv.lengths[seq] = start + fits;
    if (fits < new_tokens && overflow != nullptr) *overflow = 1;
  }
}

// One CTA per sequence, one thread per new row of K or V (token, kv head): each quantizes
// its row with quantize_row_from, as cpu_append_kv does.
template <typename T>
__global__ void append_quant_kv_kernel(QuantKVView kv, const T* __restrict__ k_new, const T* __restrict__ v_new,
                                       int new_tokens, int* __restrict__ overflow) {
  __shared__ int start;
  const int seq = blockIdx.x;
  if (threadIdx.x == 0) start = kv.codes.lengths[seq];
  __syncthreads();
  const int fits = max(0, min(new_tokens, kv.capacity() - start));
  const int heads = kv.kv_heads();
  const std::int64_t rows = 2 * static_cast<std::int64_t>(fits) * heads;
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const bool is_v = r % 2 == 1;
    const int token = static_cast<int>(r / 2 / heads), head = static_cast<int>(r / 2 % heads);
    const std::int64_t src = ((static_cast<std::int64_t>(seq) * new_tokens + token) * heads + head) * kv.head_dim;
    const int pos = start + token;
    quantize_row_from(kv.storage, (is_v ? v_new : k_new) + src, kv.head_dim, kv.row_codes(is_v, seq, head, pos),
                      kv.row_scales(is_v, seq, head, pos), kv.head_scale(is_v, head));
  }
  __syncthreads();  // every thread has read `start` before it changes
  if (threadIdx.x == 0) {
    kv.codes.lengths[seq] = start + fits;
    if (fits < new_tokens && overflow != nullptr) *overflow = 1;
  }
}

}  // namespace detail

// Appends `new_tokens` tokens to every sequence: k_new and v_new are
// [batch][new_tokens][kv_heads][head_dim] (the layout of a projection's output) and land
// at positions lengths[b] .. lengths[b] + new_tokens - 1; lengths[b] then grows by
// new_tokens. Lengths and block tables are read on the device, so the call can be
// captured in a CUDA Graph and replayed as the cache grows. Tokens past a sequence's
// capacity are not written, its length stops at the capacity, and *overflow (if given)
// is set to 1: size the cache (or grow the block table) so that it stays 0.
// Throws ekv::Error for bad arguments; K, V, k_new and v_new must be 16-byte aligned.
template <typename T>
void append_kv(const KVView<T>& kv, const T* k_new, const T* v_new, int new_tokens, const Stream& stream,
               int* overflow = nullptr) {
  if (new_tokens < 0) throw Error("append_kv: new_tokens=" + std::to_string(new_tokens) + " must be >= 0");
  if (kv.batch < 0) throw Error("append_kv: batch=" + std::to_string(kv.batch) + " must be >= 0");
  if (kv.head_dim * static_cast<int>(sizeof(T)) % 16 != 0) {
    throw Error("append_kv: head_dim=" + std::to_string(kv.head_dim) + " must fill whole 16-byte vectors");
  }
  if (kv.batch == 0 || new_tokens == 0) return;
  if (kv.k == nullptr || kv.v == nullptr || kv.lengths == nullptr || k_new == nullptr || v_new == nullptr) {
    throw Error("append_kv: null K, V, lengths or new tokens (a page-index view has no lengths to grow: "
                "append through paged_kv or paged_nhd_kv over the same pages)");
  }
  if (!is_aligned<16>(kv.k) || !is_aligned<16>(kv.v) || !is_aligned<16>(k_new) || !is_aligned<16>(v_new)) {
    throw Error("append_kv: K, V and the new tokens must be 16-byte aligned");
  }
  detail::append_kv_kernel<T><<<kv.batch, 256, 0, stream.get()>>>(kv, k_new, v_new, new_tokens, overflow);
  check_launch("append_kv", stream.get());
}

// The same into a quantized cache (QuantKVView): k_new and v_new T (float, half,
// bfloat16) [batch][new_tokens][kv_heads][head_dim], quantized on the device by the
// function cpu_append_kv runs, so both write the same bytes. Throws ekv::Error for bad
// arguments.
template <typename T>
void append_kv(const QuantKVView& kv, const T* k_new, const T* v_new, int new_tokens, const Stream& stream,
               int* overflow = nullptr) {
  if (new_tokens < 0) throw Error("append_kv: new_tokens=" + std::to_string(new_tokens) + " must be >= 0");
  if (kv.batch() < 0) throw Error("append_kv: batch=" + std::to_string(kv.batch()) + " must be >= 0");
  if (Support s = kv_storage_supports(kv.storage, kv.head_dim); !s) throw Error("append_kv: " + s.why);
  if (kv.batch() == 0 || new_tokens == 0) return;
  if (!kv.has_rows() || kv.codes.lengths == nullptr ||
      k_new == nullptr || v_new == nullptr) {
    throw Error("append_kv: null K or V codes, scales, lengths or new tokens");
  }
  detail::append_quant_kv_kernel<T><<<kv.batch(), 128, 0, stream.get()>>>(kv, k_new, v_new, new_tokens, overflow);
  check_launch("append_kv", stream.get());
}

}  // namespace ekv
