#pragma once
// ekv_inference_cycle and ekv_inference_cycle_ex: a decode loop over ekv's KVCache, built
// from the caller's tokens, timed once exact and once elastic, and the elastic output's
// error against the exact one (c_api.h states the layout and the rules).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/caller_memory.hpp"
#include "ekv/c_api/gpu.hpp"
#include "ekv/cache/kv_cache.cuh"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/budget.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/policy.hpp"

namespace ekv::capi {

// head_dim 128, the common one of LLMs, where it divides hidden_size, else 64; 0 where
// neither does. Both are in kDecodeHeadDims.
inline int cycle_head_dim(int hidden_size) {
  if (hidden_size % 128 == 0) return 128;
  return hidden_size % 64 == 0 ? 64 : 0;
}

// One layer, heads = hidden_size / head_dim query and kv heads, float32, ekv's default
// elastic settings (QUEST anchors, per kv head, block_len 64), room for every token.
inline KVCacheConfig cycle_config(int seq_length, int hidden_size, int decode_steps) {
  KVCacheConfig c;
  c.layer_num = 1;
  c.head_dim = cycle_head_dim(hidden_size);
  c.kv_head_num = c.q_head_num = hidden_size / c.head_dim;
  c.kv_type = DType::kFloat32;
  c.max_batch_size = 1;
  const std::int64_t tokens = std::int64_t{seq_length} + decode_steps;
  const std::int64_t most = std::int64_t{kSelectMaxBlocks} * c.block_len;
  if (tokens > most) {
    reject("seq_length + decode_steps = " + std::to_string(tokens) + " tokens not supported; supported: at most " +
           std::to_string(most) + " (" + std::to_string(kSelectMaxBlocks) + " blocks of " +
           std::to_string(c.block_len) + ")");
  }
  c.max_block_num = sequence_blocks(static_cast<int>(tokens), c.block_len);
  if (Support s = c.validate(); !s) reject("no KV cache for these sizes: " + s.why);
  return c;
}

inline void check_cycle_arguments(const float* kv_cache, const float* compressed_cache, int seq_length,
                                  int hidden_size, int decode_steps, float threshold_elastic,
                                  const float* baseline_total_ms, const float* elastic_total_ms) {
  require_pointer(kv_cache, "kv_cache", "seq_length * hidden_size floats");
  require_pointer(compressed_cache, "compressed_cache", "room for hidden_size floats");
  require_pointer(baseline_total_ms, "baseline_total_ms", "a float");
  require_pointer(elastic_total_ms, "elastic_total_ms", "a float");
  require_at_least(seq_length, 1, "seq_length");
  require_at_least(hidden_size, 1, "hidden_size");
  require_at_least(decode_steps, 1, "decode_steps");
  int_product(seq_length, "seq_length", hidden_size, "hidden_size", "the tokens' elements count in int");
  if (cycle_head_dim(hidden_size) == 0) {
    reject("hidden_size=" + std::to_string(hidden_size) +
           " not supported; supported: a multiple of 64 (heads x head_dim, head_dim 128 or 64)");
  }
  if (!(threshold_elastic >= 1.0f) || std::isinf(threshold_elastic)) {
    reject("threshold_elastic=" + std::to_string(threshold_elastic) +
           " not supported; supported: a finite compression ratio C >= 1");
  }
}

// Prefills a cache with the `seq_length` tokens at `tokens` (device, [seq_length][heads]
// [head_dim], keys and values alike), attends once untimed (the first call plans and
// allocates), then times `decode_steps` steps of append + attn: step s appends token
// s % seq_length and attends with it as the query, exactly or elastic with `counts`
// (KVCache::attn falls back to exact where they cannot pay). Leaves the last step's
// output in `out` (device, [heads][head_dim]).
inline float timed_decode_loop(const KVCacheConfig& c, const DeviceInfo& device, const float* tokens, int seq_length,
                               int decode_steps, BlockCounts counts, bool exact, float* out, const Stream& stream) {
  KVCache cache(c, device, stream);
  const std::int64_t heads = c.kv_head_num, dim = c.head_dim, hidden = heads * dim;
  const auto rows = [&](int first, int count) {
    return TensorView::of(tokens + first * hidden, {1, count, heads, dim}, DeviceKind::kCuda);
  };
  DeviceBuffer<float> lse(static_cast<std::size_t>(heads), stream);
  const auto attend = [&](int row, int step) {
    const TensorView q = TensorView::of(tokens + row * hidden, {1, heads, dim}, DeviceKind::kCuda);
    const TensorView o = TensorView::of(out, {1, heads, dim}, DeviceKind::kCuda);
    const TensorView l = TensorView::of(lse.data(), {1, heads}, DeviceKind::kCuda);
    if (exact) {
      cache.attn(q, o, l, 0, step, stream);
    } else {
      cache.attn(q, o, l, 0, step, stream, counts.pick, counts.init, counts.local);
    }
  };
  cache.append(0, rows(0, seq_length), rows(0, seq_length), stream);
  attend(seq_length - 1, 0);
  Event start, stop;
  start.record(stream);
  for (int s = 0; s < decode_steps; ++s) {
    const int row = s % seq_length;
    cache.append(0, rows(row, 1), rows(row, 1), stream);
    attend(row, s);
  }
  stop.record(stream);
  stop.synchronize();
  return Event::elapsed_ms(start, stop);
}

// Both loops, on checked arguments; relative_error may be nullptr (not asked for).
inline void run_inference_cycle(const float* kv_cache, float* compressed_cache, int seq_length, int hidden_size,
                                int decode_steps, float threshold_elastic, float* baseline_total_ms,
                                float* elastic_total_ms, float* relative_error) {
  const KVCacheConfig c = cycle_config(seq_length, hidden_size, decode_steps);
  const int device = require_gpu();
  const DeviceInfo info = DeviceInfo::query(device);
  const auto n = static_cast<std::size_t>(seq_length) * hidden_size;
  Stream stream;  // before the stream-ordered buffers, which it must outlive
  DeviceSide<const float> tokens(kv_cache, n, "kv_cache", device, stream);
  DeviceSide<float> out(compressed_cache, static_cast<std::size_t>(hidden_size), "compressed_cache", device, stream);
  tokens.copy_in(n, stream);
  // 1 sink block, 1 window block, picks for the rest of ceil(blocks / C) of the prefilled
  // cache, kept for the whole loop (a new count would plan a new elastic step)
  const ElasticPolicy policy(c.elastic_config(), ElasticBudget::ratio(threshold_elastic));
  const BlockCounts counts = policy.counts(sequence_blocks(seq_length, c.block_len));
  const auto hidden = static_cast<std::size_t>(hidden_size);
  DeviceBuffer<float> exact_out(hidden, stream);
  const float exact_ms = timed_decode_loop(c, info, tokens.data(), seq_length, decode_steps, counts, true,
                                           exact_out.data(), stream);
  const float elastic_ms = timed_decode_loop(c, info, tokens.data(), seq_length, decode_steps, counts, false,
                                             out.data(), stream);
  if (relative_error != nullptr) {
    std::vector<float> exact_host(hidden), elastic_host(hidden);
    exact_out.copy_to(exact_host, stream);
    EKV_CUDA_CHECK(cudaMemcpyAsync(elastic_host.data(), out.data(), hidden * sizeof(float), cudaMemcpyDeviceToHost,
                                   stream.get()),
                   "cannot copy the elastic output back");
    stream.synchronize();
    *relative_error = static_cast<float>(
        relative_l2_error(elastic_host.data(), exact_host.data(), c.q_head_num, c.head_dim).worst);
  }
  out.copy_out(hidden, stream);
  stream.synchronize();
  *baseline_total_ms = exact_ms;
  *elastic_total_ms = elastic_ms;
}

inline void inference_cycle(const float* kv_cache, float* compressed_cache, int* /*indices: unused*/,
                            int seq_length, int hidden_size, int decode_steps, float threshold_elastic,
                            float* baseline_total_ms, float* elastic_total_ms) {
  check_cycle_arguments(kv_cache, compressed_cache, seq_length, hidden_size, decode_steps, threshold_elastic,
                        baseline_total_ms, elastic_total_ms);
  run_inference_cycle(kv_cache, compressed_cache, seq_length, hidden_size, decode_steps, threshold_elastic,
                      baseline_total_ms, elastic_total_ms, nullptr);
}

inline void inference_cycle_ex(const float* kv_cache, float* compressed_cache, int* /*indices: unused*/,
                               int seq_length, int hidden_size, int decode_steps, float threshold_elastic,
                               float* baseline_total_ms, float* elastic_total_ms, float* relative_error) {
  check_cycle_arguments(kv_cache, compressed_cache, seq_length, hidden_size, decode_steps, threshold_elastic,
                        baseline_total_ms, elastic_total_ms);
  require_pointer(relative_error, "relative_error", "a float");
  run_inference_cycle(kv_cache, compressed_cache, seq_length, hidden_size, decode_steps, threshold_elastic,
                      baseline_total_ms, elastic_total_ms, relative_error);
}

}  // namespace ekv::capi
