// KVCache::attn against the raw call it wraps (run_decode for exact, ElasticDecode::run for
// elastic at C=8), fp16, 32/8 heads, dim 128, block 64, one layer, at 1 x 32K and 16 x 32K.
// Both read pools of the same shape and random contents; paired, interleaved samples of
// one step each, L2 evicted before every step, CUDA events around the direct call (so the
// cache's host work, its argument checks and lookups, is inside the interval when the GPU
// waits for it). Prints median microseconds per step and the cache's overhead.
// Then the cache per kv_type (fp16, fp8, q8_0, q4_0) at 16 x 32K: its memory report, its
// exact and elastic (C=8) attn, and the quantized outputs' error against the fp16 cache's
// on the same appended tokens and query.
// Usage: ekv_kv_cache_bench [samples]

#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include <ekv/ekv.cuh>

#include "harness/paired_samples.hpp"
#include "harness/random_fill.cuh"
#include "harness/sample_timer.cuh"
#include "harness/statistics.hpp"

namespace {

using T = __half;
constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kBlockLen = 64, kSeq = 32768, kMaxBatch = 16;
constexpr int kBlocksPerSeq = kSeq / kBlockLen, kCompress = 8;

// One KVCache per kv_type, the same tokens appended to each (uniform in [-1, 1)).
void storage_table(int samples, const ekv::DeviceInfo& device, const ekv::Stream& stream) {
  const int batch = kMaxBatch, pick = kBlocksPerSeq / kCompress - 2;
  const std::size_t n = std::size_t{1} * batch * kSeq * kKvHeads * kDim;
  ekv::DeviceBuffer<T> k(n), v(n), q(std::size_t{1} * batch * kQHeads * kDim), o(q.size());
  ekv::DeviceBuffer<float> lse(std::size_t{1} * batch * kQHeads);
  ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 11, stream);
  ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 12, stream);
  ekv::bench::random_uniform_fill<T>(q.span(), -1.0f, 1.0f, 13, stream);
  const auto tq = ekv::TensorView::of(q.data(), {batch, kQHeads, kDim}, ekv::DeviceKind::kCuda);
  const auto to = ekv::TensorView::of(o.data(), {batch, kQHeads, kDim}, ekv::DeviceKind::kCuda);
  const auto tl = ekv::TensorView::of(lse.data(), {batch, kQHeads}, ekv::DeviceKind::kCuda);
  const auto shape = {std::int64_t{batch}, std::int64_t{kSeq}, std::int64_t{kKvHeads}, std::int64_t{kDim}};
  ekv::bench::SampleTimer timer(device);
  std::vector<T> fp16_exact(o.size()), out(o.size());
  std::printf("\nKVCache per kv_type, %dx32K, one layer: memory report, median us per attn, error against the fp16 "
              "cache's exact output\n", batch);
  std::printf("%-6s %14s %16s %10s %10s %12s\n", "kv", "bytes/token", "MiB/layer", "exact", "elastic8",
              "exact error");
  for (const char* type : {"fp16", "fp8", "q8_0", "q4_0"}) {
    ekv::KVCacheConfig config = ekv::parse_kv_cache_config(
        std::string("layer_num=1 kv_head_num=8 q_head_num=32 head_dim=128 block_len=64 anchor_type=quest kv_type=") +
        type);
    config.max_block_num = batch * kBlocksPerSeq;
    config.max_batch_size = batch;
    ekv::KVCache cache(config, device, stream);
    cache.set_exact_fallback(ekv::ExactFallback::kNever);
    cache.append(0, ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kCuda),
                 ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kCuda), stream);
    double median[2];
    for (int elastic = 0; elastic < 2; ++elastic) {
      std::vector<double> s;
      for (int i = 0; i < samples + 5; ++i) {
        const double t = timer.seconds(stream, [&](const ekv::Stream& st) {
          cache.attn(tq, to, tl, 0, 0, st, elastic ? pick : -1, 1, 1);
        });
        if (i >= 5) s.push_back(t);
      }
      median[elastic] = ekv::bench::summarize(s).median * 1e6;
    }
    cache.attn(tq, to, tl, 0, 0, stream);  // exact, for the error
    o.copy_to(out, stream);
    stream.synchronize();
    if (std::string(type) == "fp16") fp16_exact = out;
    const ekv::L2Error error = ekv::relative_l2_error(out.data(), fp16_exact.data(), batch * kQHeads, kDim);
    const ekv::KVCacheMemory m = cache.memory();
    std::printf("%-6s %14zu %16.1f %10.1f %10.1f %12.2e\n", type, m.bytes_per_token,
                static_cast<double>(m.bytes_per_layer) / (1 << 20), median[0], median[1], error.pooled);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (ekv::device_count() == 0) {
    std::printf("kv_cache_bench: no CUDA GPU found\n");
    return 0;
  }
  const int samples = argc > 1 ? std::atoi(argv[1]) : 30;
  const ekv::Stream stream;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::KVCacheConfig config = ekv::parse_kv_cache_config(
      "layer_num=1 kv_head_num=8 q_head_num=32 head_dim=128 block_len=64 anchor_type=quest kv_type=fp16");
  config.max_block_num = kMaxBatch * kBlocksPerSeq;
  config.max_batch_size = kMaxBatch;
  ekv::KVCache cache(config, device, stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);
  {  // prefill every sequence, one at a time for memory's sake
    const std::size_t n = std::size_t{1} * kSeq * kKvHeads * kDim;
    ekv::DeviceBuffer<T> k(n * kMaxBatch), v(n * kMaxBatch);
    ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 1, stream);
    ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 2, stream);
    const auto shape = {std::int64_t{kMaxBatch}, std::int64_t{kSeq}, std::int64_t{kKvHeads}, std::int64_t{kDim}};
    cache.append(0, ekv::TensorView::contiguous(k.data(), ekv::DType::kFloat16, shape, ekv::DeviceKind::kCuda),
                 ekv::TensorView::contiguous(v.data(), ekv::DType::kFloat16, shape, ekv::DeviceKind::kCuda), stream);
    stream.synchronize();
  }
  // the raw calls' own pool of the same shape, blocks in order
  const std::size_t pool = std::size_t{1} * config.max_block_num * config.block_elems();
  ekv::DeviceBuffer<T> k(pool), v(pool);
  ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 3, stream);
  ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 4, stream);
  // rows as long as the cache's (max_seq_block_num), so that both plan for the same length
  const int row = config.max_seq_block_num();
  std::vector<std::int32_t> table(std::size_t{1} * kMaxBatch * row, 0);
  for (int b = 0; b < kMaxBatch; ++b) {
    std::iota(table.begin() + b * row, table.begin() + b * row + kBlocksPerSeq, b * kBlocksPerSeq);
  }
  ekv::DeviceBuffer<std::int32_t> table_dev(table.size()), lengths(kMaxBatch);
  table_dev.copy_from(table);
  lengths.copy_from(std::vector<std::int32_t>(kMaxBatch, kSeq));
  ekv::bench::SampleTimer timer(device);
  std::printf("kv_cache_bench on %s: fp16, heads 32/8, dim 128, block 64, %d samples, median us per step\n",
              device.name.c_str(), samples);
  std::printf("%-10s %-8s %10s %10s %10s\n", "shape", "variant", "raw", "KVCache", "overhead");
  for (int batch : {1, kMaxBatch}) {
    const auto kv = ekv::paged_kv<T>(k.data(), v.data(), table_dev.data(), lengths.data(), batch, kKvHeads, kDim,
                                     kBlockLen, row);
    ekv::DeviceBuffer<T> q(std::size_t{1} * batch * kQHeads * kDim), o(q.size());
    ekv::DeviceBuffer<float> lse(std::size_t{1} * batch * kQHeads);
    ekv::bench::random_uniform_fill<T>(q.span(), -1.0f, 1.0f, 5, stream);
    const auto tq = ekv::TensorView::of(q.data(), {batch, kQHeads, kDim}, ekv::DeviceKind::kCuda);
    const auto to = ekv::TensorView::of(o.data(), {batch, kQHeads, kDim}, ekv::DeviceKind::kCuda);
    const auto tl = ekv::TensorView::of(lse.data(), {batch, kQHeads}, ekv::DeviceKind::kCuda);
    // exact
    ekv::DecodeProblem problem = config.decode_problem(batch);
    ekv::DecodeProblem exact_problem = problem;  // as KVCache plans exact: the longest, to a power of two
    exact_problem.max_seq_len = kSeq;
    const ekv::DecodePlan plan = ekv::plan_decode(exact_problem, device);
    const auto workspace = ekv::make_decode_workspace(plan, stream);
    // elastic at C=8: sinks 1, window 1, the rest picked
    const int pick = kBlocksPerSeq / kCompress - 2;
    ekv::ElasticConfig e = config.elastic_config();
    e.pick_block_num = pick;
    ekv::ElasticProblem ep;
    ep.decode = problem;
    ep.block_len = kBlockLen;
    ep.policy = ekv::ElasticPolicy(e);
    ep.exact_fallback = ekv::ExactFallback::kNever;  // the elastic path, on both sides
    ekv::ElasticDecode<T> step(ep, device, stream);
    ekv::DeviceBuffer<T> anchors(step.anchor_elems(config.max_block_num));
    ekv::build_anchors<T>(kv, anchors.data(), e, stream);
    for (int elastic = 0; elastic < 2; ++elastic) {
      const auto raw = [&] {
        return timer.seconds(stream, [&](const ekv::Stream& s) {
          if (elastic) step.run(kv, q.data(), anchors.data(), o.data(), lse.data(), s, 0);
          else ekv::run_decode<T>(plan, kv, q.data(), o.data(), lse.data(), workspace.data(), s);
        });
      };
      const auto wrapped = [&] {
        return timer.seconds(stream, [&](const ekv::Stream& s) {
          cache.attn(tq, to, tl, 0, 0, s, elastic ? pick : -1, 1, 1);
        });
      };
      const ekv::bench::PairedSamples p = ekv::bench::paired_samples(5, samples, true, raw, wrapped, [] {});
      const double a = ekv::bench::summarize(p.a).median * 1e6, b = ekv::bench::summarize(p.b).median * 1e6;
      std::printf("%-10s %-8s %10.2f %10.2f %9.1f%%\n", (std::to_string(batch) + "x32K").c_str(),
                  elastic ? "elastic" : "exact", a, b, 100.0 * (b - a) / a);
    }
  }
  storage_table(samples, device, stream);
  return 0;
}
