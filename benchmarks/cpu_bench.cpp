// CPU decode attention (issue 6) on all hardware threads, no GPU needed: q_heads 32,
// kv_heads 8, head_dim 128, fp16 at batch 1 x 32K and batch 4 x 8K tokens (contiguous HND
// and paged with blocks of 16 tokens, vLLM's page), bfloat16 and float at batch 1 x 32K.
// K and V (128 MiB in fp16) are 4x the 2-core AMD EPYC's L3; a host with a larger L3 (the
// H100 host's Xeon reports 300 MiB) may keep part of them there between steps, so fp16 (both
// layouts) and bfloat16 also run at batch 8 x 32K: 1 GiB of K and V, larger than any of
// these hosts' L3. Paged fp16 runs with blocks of 64 tokens too (KVCacheConfig's default): a
// block's rows of one kv head are 16 KiB apart from the next block's instead of 4 KiB, so a
// jump of the block table (a new page for the TLB, a cold start for the hardware prefetcher)
// comes a quarter as often.
// Bytes counted: K and V of every attended token (q and o are under 0.1% and left out).
// of_read: the fraction of the host's read bandwidth, measured first in the same run over
// the same pool (median of 7 passes over 1 GiB). Wall time per step, as the caller waits.
// cpu_decode_quant: the fp16 shapes over quantized storage (issue 17: FP8, Q8_0, Q4_0),
// fp16 queries, bytes with the rows' scales.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "harness/cpu_bandwidth.hpp"
#include "harness/random.hpp"

namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128;

ekv::CPUInfer& pool() {
  static ekv::CPUInfer p(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return p;
}

double& read_bytes_per_s() {
  static double bytes_per_s = 0;
  return bytes_per_s;
}

// Runs `step` once per iteration, timed by the wall clock (as the caller waits), and
// reports GB/s and the fraction of the host's read bandwidth for `bytes` a step: Google
// Benchmark's rate counters divide by CPU time, and the caller's thread only waits.
template <typename Step>
void time_steps(benchmark::State& state, double bytes, Step&& step) {
  double total_s = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    step();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    state.SetIterationTime(elapsed.count());
    total_s += elapsed.count();
  }
  const double bytes_per_s = bytes * static_cast<double>(state.iterations()) / total_s;
  state.counters["GB/s"] = bytes_per_s / 1e9;
  state.counters["of_read"] = bytes_per_s / read_bytes_per_s();
}

// state.range: batch, length, the paged layout's block length (0: contiguous)
template <typename T>
void cpu_decode(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int len = static_cast<int>(state.range(1));
  const bool paged = state.range(2) != 0;
  const int block_len = paged ? static_cast<int>(state.range(2)) : len;
  const int blocks_per_seq = (len + block_len - 1) / block_len;
  const std::size_t pool_size = static_cast<std::size_t>(batch) * blocks_per_seq * kKvHeads * block_len * kHeadDim;
  std::vector<T> k = ekv::bench::random_uniform<T>(pool_size, -1.0f, 1.0f, 1);
  std::vector<T> v = ekv::bench::random_uniform<T>(pool_size, -1.0f, 1.0f, 2);
  const std::vector<T> q = ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * kQHeads * kHeadDim, -1.0f, 1.0f, 7);
  std::vector<T> o(q.size());
  std::vector<float> lse(static_cast<std::size_t>(batch) * kQHeads);
  std::vector<std::int32_t> lengths(batch, len), table(static_cast<std::size_t>(batch) * blocks_per_seq);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  const ekv::KVView<T> view =
      paged ? ekv::paged_kv<T>(k.data(), v.data(), table.data(), lengths.data(), batch, kKvHeads, kHeadDim, block_len,
                               blocks_per_seq)
            : ekv::contiguous_hnd_kv<T>(k.data(), v.data(), lengths.data(), batch, kKvHeads, kHeadDim, len);
  time_steps(state, 2.0 * batch * kKvHeads * static_cast<double>(len) * kHeadDim * sizeof(T),
             [&] { ekv::cpu_decode<T>(pool(), view, q.data(), kQHeads, o.data(), lse.data()); });
  benchmark::DoNotOptimize(o.data());
}

// state.range: batch, length, the paged layout's block length (0: contiguous), storage
// (KVStorage: 3 FP8, 4 Q8_0, 5 Q4_0). K and V quantized from uniform values in [-1, 1];
// FP8's per-head scales 1 / 448.
void cpu_decode_quant(benchmark::State& state) {
  using T = __half;
  const int batch = static_cast<int>(state.range(0));
  const int len = static_cast<int>(state.range(1));
  const bool paged = state.range(2) != 0;
  const auto storage = static_cast<ekv::KVStorage>(state.range(3));
  const int block_len = paged ? static_cast<int>(state.range(2)) : len;
  const int blocks_per_seq = (len + block_len - 1) / block_len;
  const std::size_t rows = static_cast<std::size_t>(batch) * blocks_per_seq * kKvHeads * block_len;
  const std::size_t code_bytes = ekv::kv_code_bytes(storage, kHeadDim);
  const std::size_t groups = ekv::kv_scale_bytes(storage, kHeadDim) / sizeof(__half);
  std::vector<std::uint8_t> k(rows * code_bytes), v(rows * code_bytes);
  std::vector<__half> ks(std::max<std::size_t>(1, rows * groups)), vs(ks.size());
  const std::vector<float> head_scales(kKvHeads, 1.0f / 448.0f);
  for (std::size_t r = 0; r < rows; r += 4096) {  // a chunk of random rows at a time
    const std::size_t n = std::min<std::size_t>(4096, rows - r);
    const std::vector<float> x = ekv::bench::random_uniform<float>(2 * n * kHeadDim, -1.0f, 1.0f, 11 + r);
    for (std::size_t i = 0; i < n; ++i) {
      ekv::quantize_row(storage, x.data() + i * kHeadDim, kHeadDim, k.data() + (r + i) * code_bytes,
                        ks.data() + (r + i) * groups, head_scales[0]);
      ekv::quantize_row(storage, x.data() + (n + i) * kHeadDim, kHeadDim, v.data() + (r + i) * code_bytes,
                        vs.data() + (r + i) * groups, head_scales[0]);
    }
  }
  const std::vector<T> q = ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * kQHeads * kHeadDim, -1.0f,
                                                         1.0f, 7);
  std::vector<T> o(q.size());
  std::vector<float> lse(static_cast<std::size_t>(batch) * kQHeads);
  std::vector<std::int32_t> lengths(batch, len), table(static_cast<std::size_t>(batch) * blocks_per_seq);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  const ekv::QuantKVPool qpool{k.data(), v.data(), ks.data(), vs.data()};
  ekv::QuantKVView view =
      paged ? ekv::paged_quant_kv(storage, qpool, table.data(), lengths.data(), batch, kKvHeads, kHeadDim, block_len,
                                  blocks_per_seq)
            : ekv::contiguous_hnd_quant_kv(storage, qpool, lengths.data(), batch, kKvHeads, kHeadDim, len);
  view.k_head_scales = head_scales.data();
  view.v_head_scales = head_scales.data();
  time_steps(state, 2.0 * batch * kKvHeads * static_cast<double>(len) * ekv::kv_row_bytes(storage, kHeadDim),
             [&] { ekv::cpu_decode<T>(pool(), view, q.data(), kQHeads, o.data(), lse.data()); });
  benchmark::DoNotOptimize(o.data());
  state.SetLabel(ekv::to_string(storage));
}

void fp16_shapes(benchmark::internal::Benchmark* b) {
  for (int block : {0, 16}) b->Args({1, 32768, block})->Args({4, 8192, block})->Args({8, 32768, block});
  b->Args({1, 32768, 64})->Args({8, 32768, 64});
}

BENCHMARK_TEMPLATE(cpu_decode, __half)->Apply(fp16_shapes)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(cpu_decode, __nv_bfloat16)
    ->Args({1, 32768, 0})
    ->Args({8, 32768, 0})
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(cpu_decode, float)->Args({1, 32768, 0})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(cpu_decode_quant)
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int storage : {3, 4, 5}) b->Args({1, 32768, 0, storage})->Args({4, 8192, 16, storage});
    })
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  read_bytes_per_s() = ekv::bench::measure_host_read_bandwidth(pool());
  benchmark::AddCustomContext("cpu_threads", std::to_string(pool().num_threads()));
  benchmark::AddCustomContext("host_read_GBps", std::to_string(read_bytes_per_s() / 1e9));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
