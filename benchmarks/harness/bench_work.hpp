#pragma once
// The work of the decode steps ekv-bench times, per step and for the whole batch: the
// bytes really read and the flops, for exact and for elastic attention.

#include <cstddef>

#include "ekv/core/dtype.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/elastic/policy.hpp"
#include "harness/bench_options.hpp"

namespace ekv::bench {

struct StepWork {
  double bytes = 0;  // K and V of the attended tokens, plus anchors scanned for scoring
  double flops = 0;  // 4 x head_dim per (query head, attended token): q.k and p.v; 2 per anchor value per query head
};

struct BenchWork {
  StepWork exact, elastic;
};

// Means over the steps of one timed sample: single-step mode times inner_loops steps at
// --seq tokens, the elastic ones refreshing where ElasticConfig::refreshes_selection says
// (step 0 always); --inference times decode_tokens steps at seq + 1 ... seq +
// decode_tokens tokens (each step appends first). Elastic counts come from the policy at
// each step's length: a step that reuses a selection reads the blocks selected at the
// last refresh plus those appended since, which the policy's count at the current length
// matches up to the blocks appended. anchor_value_bytes: bytes per stored anchor value
// (the cache's dtype on the GPU, dtype_size(o.dtype); float64 on the CPU path).
inline BenchWork bench_work(const BenchOptions& o, const ElasticPolicy& policy, std::size_t anchor_value_bytes) {
  const int steps = o.inference ? o.decode_tokens : o.inner_loops;
  const double group = static_cast<double>(o.q_heads()) / o.kv_head_count();
  // K and V, all kv heads, as stored (a quantized row counts its codes and scales)
  const double token_bytes = 2.0 * o.kv_head_count() * kv_row_bytes(o.kv_storage(), o.dim);
  const double token_flops = 4.0 * o.dim * o.q_heads();
  BenchWork w;
  StepWork& exact = w.exact;
  StepWork& elastic = w.elastic;
  for (int s = 0; s < steps; ++s) {
    const int len = o.inference ? o.seq + s + 1 : o.seq;
    exact.bytes += len * token_bytes;
    exact.flops += len * token_flops;
    const BytesRead read = policy.bytes_read(len, o.block_len, o.kv_head_count(), o.dim, o.kv_storage(), o.dtype);
    // the policy counts anchors in the cache's dtype
    const double anchor_values =
        policy.config().refreshes_selection(s) ? static_cast<double>(read.anchors) / dtype_size(o.dtype) : 0.0;
    elastic.bytes += read.kv + anchor_values * anchor_value_bytes;
    elastic.flops += read.kv / token_bytes * token_flops + 2.0 * group * anchor_values;
  }
  for (StepWork* v : {&exact, &elastic}) {
    v->bytes *= static_cast<double>(o.batch) / steps;
    v->flops *= static_cast<double>(o.batch) / steps;
  }
  return w;
}

}  // namespace ekv::bench
