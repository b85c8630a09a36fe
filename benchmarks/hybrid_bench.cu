// Hybrid GPU + CPU decode over an offloaded paged cache (issue 6), fp16, q_heads 32,
// kv_heads 8, head_dim 128, blocks of 16 tokens, at batch 1 and 4 x 32K tokens:
//   hybrid    HybridDecode with host_percent of the blocks on the host (place_blocks: one
//             sink, an 8-block window, then the newest on the GPU). 50 is the hybrid step;
//             100 is all-CPU: cpu_decode over every block, with q and O, LSE over the bus
//             as a GPU engine pays them; 0 runs run_decode alone behind the host split
//   all_gpu   run_decode over the whole cache in GPU memory, without HybridDecode
// (cpu_bench times cpu_decode alone, from host memory to host memory.)
// Every iteration starts cold: the GPU's L2 and the host's caches are evicted outside
// the timed region (a model's other layers would have evicted them). Time from CUDA
// events on the caller's stream (so a hybrid step counts its host split, the transfers
// and the wait for the CPU), medians of repetitions.
// Counters: gpu_MB and host_MB (K and V bytes attended on each side), GB/s (both sides'
// bytes over the time), ideal_us = max(gpu bytes / the GPU's measured read bandwidth,
// host bytes / the host's measured read bandwidth): the step's time if both sides ran at
// their ceilings, fully overlapped.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ekv/attention/decode.cuh"
#include "ekv/cache/placement.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/hybrid_decode.cuh"
#include "gpu_bench.hpp"
#include "harness/cpu_bandwidth.hpp"
#include "harness/random.hpp"
#include "harness/random_fill.cuh"

namespace {

using T = __half;
constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlockLen = 16;
constexpr std::size_t kBlockElems = std::size_t{kKvHeads} * kBlockLen * kHeadDim;
constexpr std::size_t kBlockBytes = 2 * kBlockElems * sizeof(T);  // K and V
// past the H100 host's 300 MiB L3 (cpu_bench.cpp)
constexpr std::size_t kHostFlushBytes = std::size_t{1} << 30;

ekv::CPUInfer& pool() {
  static ekv::CPUInfer p(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return p;
}

double host_read_bytes_per_s() {
  static const double bytes_per_s = ekv::bench::measure_host_read_bandwidth(pool());
  return bytes_per_s;
}

// Evicts the host's caches by reading a buffer larger than its last level, on the pool's
// workers (the ones that run the CPU side), then the GPU's L2.
class ColdCaches {
 public:
  explicit ColdCaches(const ekv::DeviceInfo& device)
      : l2_(device), words_(kHostFlushBytes / sizeof(std::uint64_t)), sums_(slices()) {
    pool().parallel_for(0, slices(), [&](std::int64_t s) {
      std::iota(words_.begin() + s * kSliceWords, words_.begin() + std::min(words_.size(), (s + 1) * kSliceWords),
                std::uint64_t(s));
    });
  }
  void flush(const ekv::Stream& stream) {
    pool().parallel_for(0, slices(), [&](std::int64_t s) {
      const auto end = words_.begin() + std::min(words_.size(), (s + 1) * kSliceWords);
      sums_[s] = std::accumulate(words_.begin() + s * kSliceWords, end, std::uint64_t{0});
    });
    benchmark::DoNotOptimize(sums_.data());
    l2_.flush(stream);
  }

 private:
  static constexpr std::size_t kSliceWords = (std::size_t{16} << 20) / sizeof(std::uint64_t);
  std::int64_t slices() const { return static_cast<std::int64_t>((words_.size() + kSliceWords - 1) / kSliceWords); }

  ekv::bench::L2Flusher l2_;
  std::vector<std::uint64_t> words_;
  std::vector<std::uint64_t> sums_;
};

// A paged pool of `blocks` blocks, K and V random: on the device, or pinned on the host
// (filled on the device and copied over).
struct DevicePool {
  ekv::DeviceBuffer<T> k, v;
  DevicePool(std::size_t blocks, const ekv::Stream& stream) : k(blocks * kBlockElems), v(blocks * kBlockElems) {
    ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 1, stream);
    ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 2, stream);
    stream.synchronize();
  }
};
struct HostPool {
  ekv::PinnedBuffer<T> k, v;
  HostPool(std::size_t blocks, const ekv::Stream& stream) : k(blocks * kBlockElems), v(blocks * kBlockElems) {
    if (blocks == 0) return;
    const DevicePool filled(blocks, stream);
    filled.k.copy_to(k.span());
    filled.v.copy_to(v.span());
  }
};

struct Inputs {
  ekv::DeviceBuffer<T> q, o;
  ekv::DeviceBuffer<float> lse;
  std::vector<std::int32_t> lengths;
  explicit Inputs(int batch, int len)
      : q(static_cast<std::size_t>(batch) * kQHeads * kHeadDim), o(q.size()),
        lse(static_cast<std::size_t>(batch) * kQHeads), lengths(batch, len) {
    q.copy_from(ekv::bench::random_uniform<T>(q.size(), -1.0f, 1.0f, 7));
  }
};

double megabytes(std::int64_t tokens) { return 2.0 * tokens * kKvHeads * kHeadDim * sizeof(T) / 1e6; }

void report(benchmark::State& state, std::int64_t gpu_tokens, std::int64_t host_tokens, double total_s) {
  const double seconds = total_s / static_cast<double>(state.iterations());
  state.counters["gpu_MB"] = megabytes(gpu_tokens);
  state.counters["host_MB"] = megabytes(host_tokens);
  state.counters["GB/s"] = (megabytes(gpu_tokens) + megabytes(host_tokens)) / 1e3 / seconds;
  state.counters["host_read_GBps"] = host_read_bytes_per_s() / 1e9;
  state.counters["ideal_us"] = 1e6 * std::max(megabytes(gpu_tokens) * 1e6 / ekv::bench::ceilings().read_bytes_per_s,
                                              megabytes(host_tokens) * 1e6 / host_read_bytes_per_s());
}

// state.range: batch, length, percent of the blocks on the host
void hybrid(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0)), len = static_cast<int>(state.range(1));
  const int host_percent = static_cast<int>(state.range(2));
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  Inputs in(batch, len);
  const int blocks_per_seq = ekv::sequence_blocks(len, kBlockLen);
  const int blocks = batch * blocks_per_seq;
  const int gpu_budget_blocks = blocks - blocks * host_percent / 100;
  const ekv::Placement placement = ekv::place_blocks({1, 8}, in.lengths, kBlockLen, blocks_per_seq, kBlockBytes,
                                                     kBlockBytes * gpu_budget_blocks);
  const std::vector<std::int32_t> table = ekv::number_hybrid_blocks(placement, in.lengths, kBlockLen, blocks_per_seq);
  const DevicePool gpu(placement.gpu_blocks, stream);
  const HostPool host(placement.host_blocks, stream);
  ekv::HybridKV<T> kv;
  kv.gpu_k = gpu.k.data();
  kv.gpu_v = gpu.v.data();
  kv.host_k = host.k.data();
  kv.host_v = host.v.data();
  kv.block_table = table.data();
  kv.lengths = in.lengths.data();
  kv.gpu_blocks = placement.gpu_blocks;
  kv.host_blocks = placement.host_blocks;
  kv.batch = batch;
  kv.kv_heads = kKvHeads;
  kv.head_dim = kHeadDim;
  kv.block_len = kBlockLen;
  kv.max_blocks_per_seq = blocks_per_seq;

  const ekv::DecodeProblem problem{ekv::DType::kFloat16, batch, kQHeads, kKvHeads, kHeadDim, len};
  // the GPU side's share of a sequence sizes its split-KV plan
  const int gpu_tokens_per_seq = std::max(1, gpu_budget_blocks / batch) * kBlockLen;
  ekv::HybridDecode<T> step(problem, kBlockLen, blocks_per_seq, pool(), device, stream, gpu_tokens_per_seq);
  ekv::HybridSplit split;
  auto issue = [&](const ekv::Stream& s) { split = step.run(kv, in.q.data(), in.o.data(), in.lse.data(), s); };
  issue(stream);  // warm-up: first touch of the pinned staging, the pool's threads awake
  pool().sync_with_cuda_stream(stream);
  ColdCaches cold(device);
  const double s = ekv::bench::run_timed(state, stream, issue, &cold);
  pool().sync_with_cuda_stream(stream);  // rethrows what the CPU side threw
  report(state, split.gpu_tokens, split.host_tokens, s);
  state.counters["splits"] = step.plan().num_splits;
}

// state.range: batch, length
void all_gpu(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0)), len = static_cast<int>(state.range(1));
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  Inputs in(batch, len);
  const int blocks_per_seq = ekv::sequence_blocks(len, kBlockLen);
  const DevicePool gpu(static_cast<std::size_t>(batch) * blocks_per_seq, stream);
  std::vector<std::int32_t> host_table(static_cast<std::size_t>(batch) * blocks_per_seq);
  std::iota(host_table.begin(), host_table.end(), 0);
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937(3));
  ekv::DeviceBuffer<std::int32_t> table(host_table.size()), lengths(batch);
  table.copy_from(host_table);
  lengths.copy_from(in.lengths);
  const ekv::KVView<T> view = ekv::paged_kv<T>(gpu.k.data(), gpu.v.data(), table.data(), lengths.data(), batch,
                                               kKvHeads, kHeadDim, kBlockLen, blocks_per_seq);
  const ekv::DecodePlan plan =
      ekv::plan_decode(ekv::DecodeProblem{ekv::DType::kFloat16, batch, kQHeads, kKvHeads, kHeadDim, len}, device);
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  ekv::bench::L2Flusher flusher(device);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    ekv::run_decode<T>(plan, view, in.q.data(), in.o.data(), in.lse.data(), workspace.data(), st);
  }, &flusher);
  report(state, std::int64_t{batch} * len, 0, s);
  state.counters["splits"] = plan.num_splits;
}

void hybrid_shapes(benchmark::internal::Benchmark* b) {
  for (int batch : {1, 4}) {
    for (int host_percent : {0, 50, 100}) b->Args({batch, 32768, host_percent});
  }
  b->ArgNames({"batch", "len", "host_percent"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5)->Repetitions(10)->ReportAggregatesOnly(true);
}

void whole_shapes(benchmark::internal::Benchmark* b) {
  b->Args({1, 32768})->Args({4, 32768})->ArgNames({"batch", "len"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5)->Repetitions(10)->ReportAggregatesOnly(true);
}

}  // namespace

BENCHMARK(hybrid)->Apply(hybrid_shapes);
BENCHMARK(all_gpu)->Apply(whole_shapes);

int main(int argc, char** argv) {
  benchmark::AddCustomContext("cpu_threads", std::to_string(pool().num_threads()));
  return ekv::bench::main(argc, argv);
}
