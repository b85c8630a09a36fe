#pragma once
// cpu_decode: decode attention over a host-resident KV cache, on a CPUInfer, with the
// semantics of the GPU's run_decode. Work items are (sequence, kv head, chunk of tokens),
// claimed by the pool's workers; a sequence longer than a chunk is split, and its chunks'
// states are merged through their LSE.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ekv/attention/decode_support.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/attend_range.hpp"
#include "ekv/cpu/merge_states.hpp"
#include "ekv/cpu/thread_pool.hpp"

namespace ekv {

inline constexpr DType kCpuDecodeDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
// head_dim must be a multiple of this: the width of detail::dot's partial sums.
inline constexpr int kCpuDecodeHeadDimMultiple = 8;
// Automatic chunks aim at this many work items per worker, so that uneven items
// balance (untuned)...
inline constexpr int kCpuDecodeItemsPerThread = 4;
// ...and are never shorter than this: a chunk's partial state (group x head_dim floats,
// written and read back by the merge) stays under 2% of its K and V bytes (untuned).
inline constexpr int kCpuDecodeMinChunkTokens = 256;

template <typename T>
constexpr bool cpu_decode_has_dtype() {
  for (DType d : kCpuDecodeDTypes) {
    if (d == kDTypeOf<T>) return true;
  }
  return false;
}

// Never throws: ok, or the message cpu_decode would throw. Reads dtype, batch (0 is an
// empty step), q_heads, kv_heads, head_dim and scale; any group size and length go.
inline Support cpu_decode_supports(const DecodeProblem& p) {
  if (Support s = check_supported<kCpuDecodeDTypes>("dtype", "cpu decode", p.dtype); !s) return s;
  if (p.head_dim < kCpuDecodeHeadDimMultiple || p.head_dim % kCpuDecodeHeadDimMultiple != 0) {
    return {false, "head_dim=" + std::to_string(p.head_dim) + " not supported by cpu decode; supported: positive " +
                       "multiples of " + std::to_string(kCpuDecodeHeadDimMultiple)};
  }
  if (p.batch < 0) {
    return {false, "batch=" + std::to_string(p.batch) + " not supported by cpu decode; it must be >= 0"};
  }
  if (p.kv_heads < 1 || p.q_heads < 1 || p.q_heads % p.kv_heads != 0) {
    return {false, "q_heads=" + std::to_string(p.q_heads) + ", kv_heads=" + std::to_string(p.kv_heads) +
                       " not supported by cpu decode; q_heads must be a positive multiple of kv_heads"};
  }
  if (!(p.scale >= 0.0f && p.scale < INFINITY)) {
    return {false, "scale=" + std::to_string(p.scale) +
                       " not supported by cpu decode; supported: finite and positive, or 0 for 1/sqrt(head_dim)"};
  }
  return {};
}

namespace detail {

// Each worker's scratch, kept between calls so that a decode step allocates nothing per item.
inline AttendState& thread_attend_state() {
  thread_local AttendState state;
  return state;
}

inline int cpu_decode_chunk_tokens(std::int64_t token_heads, int num_threads) {
  const std::int64_t items = std::int64_t{kCpuDecodeItemsPerThread} * num_threads;
  std::int64_t chunk = std::max<std::int64_t>(kCpuDecodeMinChunkTokens, (token_heads + items - 1) / items);
  chunk = (chunk + kAttendTileTokens - 1) / kAttendTileTokens * kAttendTileTokens;
  return static_cast<int>(std::min<std::int64_t>(chunk, std::numeric_limits<int>::max() / 2));
}

}  // namespace detail

namespace detail {

// cpu_decode's work over any view with length(), capacity() and an attend_range: the
// split into (sequence, kv head, chunk) items, the items on the pool, the merge.
template <typename T, typename View>
void cpu_decode_view(CPUInfer& pool, const View& kv, int batch, int kv_heads, int d, const T* q, int q_heads, T* o,
                     float* lse, float scale, int chunk_tokens) {
  const int group = q_heads / kv_heads;
  const float softmax_scale = scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(d));

  // a block-sparse view's heads differ in length: chunks follow each sequence's longest
  const auto length = [&](int b, int h) { return std::clamp(kv.length(b, h), 0, kv.capacity()); };
  std::vector<int> lengths(batch, 0);
  std::int64_t token_heads = 0;
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < kv_heads; ++h) {
      lengths[b] = std::max(lengths[b], length(b, h));
      token_heads += length(b, h);
    }
  }
  const int chunk = chunk_tokens > 0 ? chunk_tokens : detail::cpu_decode_chunk_tokens(token_heads, pool.num_threads());

  struct Item {
    int seq, kv_head, chunk;
  };
  std::vector<Item> items;
  std::vector<int> chunks(batch);
  // a split sequence b's partial states: float [q_heads][chunks[b]][head_dim] from states[b]
  std::vector<std::int64_t> states(batch + 1, 0);
  for (int b = 0; b < batch; ++b) {
    chunks[b] = static_cast<int>(std::max<std::int64_t>(1, (std::int64_t{lengths[b]} + chunk - 1) / chunk));
    states[b + 1] = states[b] + (chunks[b] > 1 ? std::int64_t{q_heads} * chunks[b] : 0);
    for (int c = 0; c < chunks[b]; ++c) {
      for (int h = 0; h < kv_heads; ++h) items.push_back({b, h, c});  // a chunk's heads together: NHD rows share lines
    }
  }
  std::vector<float> partial_o(static_cast<std::size_t>(states.back()) * d);
  std::vector<float> partial_lse(static_cast<std::size_t>(states.back()));

  pool.parallel_for(0, static_cast<std::int64_t>(items.size()), [&](std::int64_t i) {
    const Item& it = items[i];
    const std::int64_t row = std::int64_t{it.seq} * q_heads + std::int64_t{it.kv_head} * group;  // the group's first
    AttendState& state = detail::thread_attend_state();
    state.begin(q + row * d, group, d, softmax_scale);
    const int begin = it.chunk * chunk;  // below the sequence's longest length, so in range
    const std::int64_t end = std::min<std::int64_t>(length(it.seq, it.kv_head), std::int64_t{begin} + chunk);
    attend_range(kv, it.seq, it.kv_head, begin, static_cast<int>(std::max<std::int64_t>(begin, end)), state);
    if (chunks[it.seq] == 1) {
      state.write(o + row * d, d, lse + row, 1);
    } else {
      const std::int64_t n = chunks[it.seq];
      const std::int64_t first = states[it.seq] + std::int64_t{it.kv_head} * group * n + it.chunk;
      state.write(partial_o.data() + first * d, n * d, partial_lse.data() + first, n);
    }
  });
  if (states.back() == 0) return;
  pool.parallel_for(0, batch, [&](std::int64_t b) {
    if (chunks[b] == 1) return;
    for (int h = 0; h < q_heads; ++h) {
      const std::int64_t first = states[b] + std::int64_t{h} * chunks[b];
      const std::int64_t row = b * q_heads + h;
      merge_row_host(partial_o.data() + first * d, partial_lse.data() + first, chunks[b], d, o + row * d, lse + row);
    }
  });
}

template <typename T>
DecodeProblem cpu_decode_problem(int batch, int q_heads, int kv_heads, int head_dim, float scale) {
  return DecodeProblem{kDTypeOf<T>, batch, q_heads, kv_heads, head_dim, 0, scale};
}

}  // namespace detail

// Decode attention, one query token per sequence, on `pool`; returns when done. q and o:
// T [batch][q_heads][head_dim]; lse: float [batch][q_heads], the natural log of
// sum(exp(scale * q.k)); K, V, lengths and block table in host memory, as a KVView.
// Query head h reads kv head h / (q_heads / kv_heads); T is float, half or bfloat16,
// accumulated in float; head_dim any positive multiple of 8; scale 0 means
// 1 / sqrt(head_dim). Lengths are clamped to the view's capacity, as on the GPU; a
// sequence of length 0 gives o = 0 and lse = -inf. chunk_tokens > 0 forces the split
// length (tests, tuning); 0 picks it from the work and the pool's size. Throws ekv::Error
// for an unsupported problem or a null pointer, and rethrows what a worker threw.
template <typename T>
void cpu_decode(CPUInfer& pool, const KVView<T>& kv, const T* q, int q_heads, T* o, float* lse, float scale = 0.0f,
                int chunk_tokens = 0) {
  static_assert(cpu_decode_has_dtype<T>(), "cpu_decode: T must be float, half or bfloat16");
  const DecodeProblem problem = detail::cpu_decode_problem<T>(kv.batch, q_heads, kv.kv_heads, kv.head_dim, scale);
  if (Support s = cpu_decode_supports(problem); !s) throw Error(s.why);
  if (kv.batch == 0) return;
  if (kv.k == nullptr || kv.v == nullptr || !kv.has_lengths() || q == nullptr || o == nullptr || lse == nullptr) {
    throw Error("cpu_decode: null K, V, lengths, q, o or lse");
  }
  if (kv.block_table != nullptr && kv.block_len < 1) {
    throw Error("cpu_decode: a paged view needs block_len >= 1, got " + std::to_string(kv.block_len));
  }
  detail::cpu_decode_view(pool, kv, kv.batch, kv.kv_heads, kv.head_dim, q, q_heads, o, lse, scale, chunk_tokens);
}

// Decode attention over a quantized cache (QuantKVView: FP8, Q8_0, Q4_0 or the float
// formats as stored rows), with cpu_decode's semantics; each row is dequantized to float
// as it is read. q, o: T [batch][q_heads][head_dim] (float, half or bfloat16). Throws
// ekv::Error for an unsupported problem or storage, or a null pointer.
template <typename T>
void cpu_decode(CPUInfer& pool, const QuantKVView& kv, const T* q, int q_heads, T* o, float* lse,
                float scale = 0.0f, int chunk_tokens = 0) {
  static_assert(cpu_decode_has_dtype<T>(), "cpu_decode: T must be float, half or bfloat16");
  const DecodeProblem problem = detail::cpu_decode_problem<T>(kv.batch(), q_heads, kv.kv_heads(), kv.head_dim, scale);
  if (Support s = cpu_decode_supports(problem); !s) throw Error(s.why);
  if (Support s = kv_storage_supports(kv.storage, kv.head_dim); !s) throw Error("cpu_decode: " + s.why);
  if (kv.batch() == 0) return;
  if (!kv.has_rows() || !kv.codes.has_lengths() || q == nullptr ||
      o == nullptr || lse == nullptr) {
    throw Error("cpu_decode: null K or V codes, scales, lengths, q, o or lse");
  }
  if (kv.codes.block_table != nullptr && kv.codes.block_len < 1) {
    throw Error("cpu_decode: a paged view needs block_len >= 1, got " + std::to_string(kv.codes.block_len));
  }
  detail::cpu_decode_view(pool, kv, kv.batch(), kv.kv_heads(), kv.head_dim, q, q_heads, o, lse, scale, chunk_tokens);
}

}  // namespace ekv
