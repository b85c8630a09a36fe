// TieredKVCache (issue 20): elastic decode over a GPU tier under a budget and a pinned host
// tier, fp16, q_heads 32, kv_heads 8, head_dim 128, blocks of 64, batch 1, QUEST with one
// sink and one window block, compression C. Arguments: tokens, the GPU budget as
// 1/budget_inverse of the cache, C, the host path (0 auto, 1 copy-in, 2 CPU), retrieval
// (0 KVHEAD: each kv head its own blocks, and a GPU slot holds one kv head's block; 1
// LAYER: one selection for all heads, a slot holds a block with all its heads). Demotion
// after one idle step (min_idle_steps 1: at C = 8 the tier is as large as the selection).
// A decode loop: the query drifts a little each step (q += N(0, 0.02) per element, as
// consecutive decode queries do), 40 warm-up steps let promotions settle, then each
// timed step is one attn, wall clock from the call to its stream's completion (a tiered
// step waits on the host for its selection, so its host time is part of it).
// Beside it, in the same process: all-GPU elastic (ElasticDecode over one GPU pool
// holding every block, the same anchors and query), timed by CUDA events, median of 20;
// and the relative L2 error of the tiered step's O against all-GPU elastic's at the last
// query (the same blocks attended: only rounding differs).
// Counters: step_us (median), all_gpu_us, ratio = step / all-GPU, host_share (units not
// resident at their step), copy_MB (copied in for the step, in-step promotions included),
// in_step_MB (of it into slots of their own), cpu_MB (attended on the CPU) and promo_MB
// (promotions after the step) per step, no_copy_share (steps with no host unit),
// cpu_steps (steps that used the CPU), split_steps (steps that used both the copy and the
// CPU), resident (GPU slots in use at the end), tokens_per_s (1e6 / step_us, one layer),
// rel_err; the step part by part (means, TieredStepReport's): wait_us, plan_us (book_us,
// launch_us), select_us, copy_us, decode_us, tail_us, cpu_us, and predicted_us (the cost
// model's extra cost of the host units).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "ekv/cpu/tiered_cache.cuh"
#include "harness/random_fill.cuh"

namespace {

using T = __half;
constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlockLen = 64;

ekv::CPUInfer& pool() {
  static ekv::CPUInfer p(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return p;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x.empty() ? 0 : x[x.size() / 2];
}

void run_tiered(benchmark::State& state) {
  const int tokens = static_cast<int>(state.range(0));
  const int budget_inverse = static_cast<int>(state.range(1));
  const double compression = static_cast<double>(state.range(2));
  const ekv::HostPath path = static_cast<ekv::HostPath>(state.range(3));
  const bool layer = state.range(4) != 0;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  const ekv::Stream stream;

  ekv::TieredConfig c;
  c.batch = 1;
  c.q_heads = kQHeads;
  c.kv_heads = kKvHeads;
  c.head_dim = kHeadDim;
  c.block_len = kBlockLen;
  c.max_seq_len = tokens + 1024;
  ekv::ElasticConfig e;
  e.retrieval = layer ? ekv::RetrievalType::kLayer : ekv::RetrievalType::kKvHead;
  c.policy = ekv::ElasticPolicy(e, ekv::ElasticBudget::ratio(compression));
  const std::size_t block_bytes = 2 * sizeof(T) * kKvHeads * kBlockLen * kHeadDim;
  const std::size_t blocks = static_cast<std::size_t>(ekv::sequence_blocks(tokens, kBlockLen));
  c.gpu_budget_bytes = blocks / budget_inverse * block_bytes;
  c.tiers.window_blocks = 1;
  c.tiers.max_moves_per_step = 256;
  c.tiers.min_idle_steps = 1;  // at C = 8 the tier is as large as a step's selection: what it leaves may go at once
  c.path = path;
  auto cache = std::make_unique<ekv::TieredKVCache<T>>(c, pool(), device, stream);
  const int mb = cache->max_blocks_per_seq();
  const std::size_t pool_elems = static_cast<std::size_t>(mb) * kKvHeads * kBlockLen * kHeadDim;

  // every block's K and V, random on the GPU: the all-GPU twin's pool and, copied, the host homes
  ekv::DeviceBuffer<T> k(pool_elems), v(pool_elems);
  ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 11, stream);
  ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 12, stream);
  const std::size_t unit_bytes = sizeof(T) * kBlockLen * kHeadDim;  // one kv head's block
  for (int h = 0; h < kKvHeads; ++h) {  // [block][kv head] here; the homes' order follows the retrieval
    const std::size_t pitch = cache->host_block_stride() * sizeof(T), from = static_cast<std::size_t>(h) * unit_bytes;
    EKV_CUDA_CHECK(cudaMemcpy2DAsync(cache->host_k(0, 0, h), pitch, reinterpret_cast<const char*>(k.data()) + from,
                                     kKvHeads * unit_bytes, unit_bytes, mb, cudaMemcpyDeviceToHost, stream.get()),
                   "tiered_bench: K to the host");
    EKV_CUDA_CHECK(cudaMemcpy2DAsync(cache->host_v(0, 0, h), pitch, reinterpret_cast<const char*>(v.data()) + from,
                                     kKvHeads * unit_bytes, unit_bytes, mb, cudaMemcpyDeviceToHost, stream.get()),
                   "tiered_bench: V to the host");
  }
  stream.synchronize();
  const std::vector<std::int32_t> lengths = {tokens};
  cache->place(lengths, stream);

  std::vector<std::int32_t> ids(mb);
  for (int i = 0; i < mb; ++i) ids[i] = i;
  ekv::DeviceBuffer<std::int32_t> table(mb), lens(1);
  table.copy_from(ids, stream);
  lens.copy_from(lengths, stream);
  const ekv::KVView<T> view = ekv::paged_kv<T>(k.data(), v.data(), table.data(), lens.data(), 1, kKvHeads, kHeadDim,
                                               kBlockLen, mb);
  const ekv::DecodeProblem dense{ekv::DType::kFloat16, 1, kQHeads, kKvHeads, kHeadDim, c.max_seq_len};
  ekv::ElasticDecode<T> all_gpu(ekv::ElasticProblem{dense, kBlockLen, c.policy, 1, ekv::ExactFallback::kNever}, device,
                                stream);

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::normal_distribution<float> drift(0.0f, 0.02f);
  std::vector<float> qf(static_cast<std::size_t>(kQHeads) * kHeadDim);
  for (float& x : qf) x = uniform(rng);
  std::vector<T> qh(qf.size());
  ekv::DeviceBuffer<T> q(qf.size()), o(qf.size()), o_ref(qf.size());
  ekv::DeviceBuffer<float> lse(kQHeads), lse_ref(kQHeads);
  const auto next_query = [&] {
    for (std::size_t i = 0; i < qf.size(); ++i) {
      qf[i] += drift(rng);
      qh[i] = __float2half(qf[i]);
    }
    q.copy_from(qh, stream);
  };

  std::int64_t step = 0;
  for (int w = 0; w < 40; ++w, ++step) {
    next_query();
    cache->attn(q.data(), o.data(), lse.data(), stream, step);
  }
  stream.synchronize();
  pool().sync();

  std::vector<double> times;
  double host_units = 0, units = 0, copy_bytes = 0, promo_bytes = 0, no_copy = 0, cpu_steps = 0, steps = 0;
  double in_step_bytes = 0, split_steps = 0, cpu_bytes = 0;
  // the step's time, part by part (TieredStepReport's; GPU parts of the step before)
  double wait_us = 0, plan_us = 0, book_us = 0, launch_us = 0;
  double select_us = 0, copy_us = 0, decode_us = 0, tail_us = 0, cpu_us = 0;
  double predicted_us = 0;
  for (auto _ : state) {
    next_query();
    stream.synchronize();
    const auto start = std::chrono::steady_clock::now();
    const ekv::TieredStepReport r = cache->attn(q.data(), o.data(), lse.data(), stream, step++);
    stream.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(s);
    times.push_back(1e6 * s);
    host_units += r.host_units;
    units += r.units;
    copy_bytes += static_cast<double>(r.copy_in_bytes);
    in_step_bytes += static_cast<double>(r.promoted_units) * unit_bytes * 2;
    split_steps += r.cpu_units > 0 && r.copied_units > 0;
    cpu_bytes += static_cast<double>(r.cpu_units) * unit_bytes * 2;
    promo_bytes += static_cast<double>(r.promotion_bytes);
    no_copy += r.host_units == 0;
    cpu_steps += r.cpu_units > 0;
    steps += 1;
    wait_us += r.wait_us;
    plan_us += r.plan_us;
    book_us += r.book_us;
    launch_us += r.launch_us;
    select_us += r.select_us;
    copy_us += r.copy_us;
    decode_us += r.decode_us;
    tail_us += r.tail_us;
    cpu_us += r.cpu_us;
    predicted_us += r.predicted_us;
  }
  pool().sync();

  // all-GPU elastic at the last query, and the error against it
  ekv::DeviceBuffer<T> anchors(all_gpu.anchor_elems(mb));
  ekv::build_anchors<T>(view, anchors.data(), c.policy.config(), stream);
  std::vector<double> gpu_times;
  ekv::Event a, b;
  for (int i = 0; i < 21; ++i) {
    a.record(stream);
    all_gpu.run(view, q.data(), anchors.data(), o_ref.data(), lse_ref.data(), stream);
    b.record(stream);
    b.synchronize();
    float ms = 0;
    EKV_CUDA_CHECK(cudaEventElapsedTime(&ms, a.get(), b.get()), "tiered_bench: timing");
    if (i > 0) gpu_times.push_back(1e3 * ms);
  }
  cache->attn(q.data(), o.data(), lse.data(), stream, step++);
  stream.synchronize();
  pool().sync();
  std::vector<T> got(qh.size()), want(qh.size());
  o.copy_to(got, stream);
  o_ref.copy_to(want, stream);
  stream.synchronize();
  double e2 = 0, w2 = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = __half2float(got[i]), w = __half2float(want[i]);
    e2 += (g - w) * (g - w);
    w2 += w * w;
  }
  const double step_us = median(times), gpu_us = median(gpu_times);
  state.counters["step_us"] = step_us;
  state.counters["all_gpu_us"] = gpu_us;
  state.counters["ratio"] = gpu_us > 0 ? step_us / gpu_us : 0;
  state.counters["host_share"] = units > 0 ? host_units / units : 0;
  state.counters["copy_MB"] = steps > 0 ? copy_bytes / steps / 1e6 : 0;
  state.counters["in_step_MB"] = steps > 0 ? in_step_bytes / steps / 1e6 : 0;
  state.counters["cpu_MB"] = steps > 0 ? cpu_bytes / steps / 1e6 : 0;
  state.counters["promo_MB"] = steps > 0 ? promo_bytes / steps / 1e6 : 0;
  state.counters["split_steps"] = split_steps;
  state.counters["no_copy_share"] = steps > 0 ? no_copy / steps : 0;
  state.counters["cpu_steps"] = cpu_steps;
  state.counters["resident"] = cache->tiers().resident_blocks();
  state.counters["gpu_slots"] = cache->gpu_slots();
  state.counters["tokens_per_s"] = step_us > 0 ? 1e6 / step_us : 0;
  state.counters["rel_err"] = std::sqrt(e2 / std::max(w2, 1e-30));
  state.counters["copy_GBps"] = cache->copy_rate() / 1e9;
  state.counters["cpu_GBps"] = cache->cpu_rate() / 1e9;
  const auto mean = [&](double sum) { return steps > 0 ? sum / steps : 0; };
  state.counters["wait_us"] = mean(wait_us);
  state.counters["plan_us"] = mean(plan_us);
  state.counters["book_us"] = mean(book_us);
  state.counters["launch_us"] = mean(launch_us);
  state.counters["select_us"] = mean(select_us);
  state.counters["copy_us"] = mean(copy_us);
  state.counters["decode_us"] = mean(decode_us);
  state.counters["tail_us"] = mean(tail_us);
  state.counters["cpu_us"] = mean(cpu_us);
  state.counters["predicted_us"] = mean(predicted_us);
}

void BM_tiered(benchmark::State& state) {
  try {
    run_tiered(state);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

}  // namespace

// 1M tokens (4 GiB of K and V) with 1/8 on the GPU, C = 8, KVHEAD: auto, copy-in only,
// CPU only; LAYER at C = 8; both at C = 16; a cache 16x its GPU budget (8M tokens, 2 GiB on
// the GPU), KVHEAD and LAYER.
BENCHMARK(BM_tiered)
    ->ArgNames({"tokens", "budget_inv", "C", "path", "layer"})
    ->Args({1 << 20, 8, 8, 0, 0})
    ->Args({1 << 20, 8, 8, 1, 0})
    ->Args({1 << 20, 8, 8, 2, 0})
    ->Args({1 << 20, 8, 8, 0, 1})
    ->Args({1 << 20, 8, 16, 0, 0})
    ->Args({1 << 20, 8, 16, 0, 1})
    ->Args({8 << 20, 16, 8, 0, 0})
    ->Args({8 << 20, 16, 8, 0, 1})
    ->UseManualTime()
    ->Iterations(100)
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
