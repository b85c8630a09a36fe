// Exact decode attention, fp16, q_heads 32, kv_heads 8, head_dim 128: the shapes of
// issues 4 and 16, contiguous and paged (blocks of 16 and of 64 tokens, ekv's cache
// default), cold L2, GPU time from CUDA events; and the same over quantized storage
// (issue 17: FP8, Q8_0, Q4_0, paged 64).
// Bytes counted: K and V of every attended token (q and o are under 0.1% and left out),
// with a quantized row's codes and scales.

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_quant.cuh"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "gpu_bench.hpp"
#include "harness/random.hpp"
#include "harness/random_fill.cuh"

namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128;

// forced_splits 0: the plan's choice; paged_block 0: contiguous
void run_case(benchmark::State& state, int batch, int len, int paged_block, bool graph, int forced_splits,
              ekv::DecodeCopy copy = ekv::DecodeCopy::kAuto) {
  using T = __half;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const bool paged = paged_block > 0;
  const int block_len = paged ? paged_block : len;
  const int blocks_per_seq = (len + block_len - 1) / block_len;
  const std::size_t pool = static_cast<std::size_t>(batch) * blocks_per_seq * kKvHeads * block_len * kHeadDim;
  ekv::DeviceBuffer<T> k(pool), v(pool), q(static_cast<std::size_t>(batch) * kQHeads * kHeadDim), o(q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(batch) * kQHeads);
  ekv::DeviceBuffer<std::int32_t> lengths(batch), table(static_cast<std::size_t>(batch) * blocks_per_seq);
  ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 1, stream);
  ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 2, stream);
  q.copy_from(ekv::bench::random_uniform<T>(q.size(), -1.0f, 1.0f, 7));
  lengths.copy_from(std::vector<std::int32_t>(batch, len));
  std::vector<std::int32_t> host_table(table.size());
  std::iota(host_table.begin(), host_table.end(), 0);
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937(3));
  table.copy_from(host_table);
  const ekv::KVView<T> view =
      paged ? ekv::paged_kv<T>(k.data(), v.data(), table.data(), lengths.data(), batch, kKvHeads, kHeadDim, block_len,
                               blocks_per_seq)
            : ekv::contiguous_hnd_kv<T>(k.data(), v.data(), lengths.data(), batch, kKvHeads, kHeadDim, len);

  const ekv::DecodeProblem problem{ekv::DType::kFloat16, batch, kQHeads, kKvHeads, kHeadDim, len};
  const ekv::DecodePlan plan = ekv::plan_decode(problem, device, forced_splits, copy);
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  auto issue = [&](const ekv::Stream& s) {
    ekv::run_decode<T>(plan, view, q.data(), o.data(), lse.data(), workspace.data(), s);
  };
  ekv::Graph g;
  if (graph) g = ekv::Graph::capture(stream, issue);
  ekv::bench::L2Flusher flusher(device);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    if (graph) {
      g.launch(st);
    } else {
      issue(st);
    }
  }, &flusher);
  ekv::bench::report_bandwidth(state, 2.0 * batch * kKvHeads * static_cast<double>(len) * kHeadDim * sizeof(T), s);
  state.counters["splits"] = plan.num_splits;
  state.SetLabel(ekv::to_string(plan.copy));
}

// state.range: batch, length, paged block (0: contiguous), graph replay (0/1), copy
// (DecodeCopy: 0 the plan's choice, 1 cp.async, 2 bulk copies)
void decode(benchmark::State& state) {
  run_case(state, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
           static_cast<int>(state.range(2)), state.range(3) != 0, 0, static_cast<ekv::DecodeCopy>(state.range(4)));
}

// A quantized paged pool (blocks of 64) and its half twin holding the same tokens:
// uniform random half tokens in [-1, 1] appended a chunk at a time to both (quantized on
// the device by append_kv); FP8's per-head scales are 1 / 448. Queries uniform in [-1, 1].
struct QuantBenchPools {
  using T = __half;
  static constexpr int kBlockLen = 64;
  int batch, len, blocks_per_seq;
  ekv::DeviceBuffer<std::uint8_t> k, v;
  ekv::DeviceBuffer<__half> ks, vs;
  ekv::DeviceBuffer<float> head_scales;
  ekv::DeviceBuffer<T> q, dense_k, dense_v;
  ekv::DeviceBuffer<std::int32_t> lengths, dense_lengths, table;
  ekv::QuantKVView view;
  ekv::KVView<T> dense;

  QuantBenchPools(int b, int n, ekv::KVStorage storage, const ekv::Stream& stream)
      : batch(b), len(n), blocks_per_seq((n + kBlockLen - 1) / kBlockLen) {
    const std::size_t rows = static_cast<std::size_t>(batch) * blocks_per_seq * kKvHeads * kBlockLen;
    const std::size_t groups = ekv::kv_scale_bytes(storage, kHeadDim) / sizeof(__half);
    k = ekv::DeviceBuffer<std::uint8_t>(rows * ekv::kv_code_bytes(storage, kHeadDim));
    v = ekv::DeviceBuffer<std::uint8_t>(k.size());
    ks = ekv::DeviceBuffer<__half>(std::max<std::size_t>(1, rows * groups));
    vs = ekv::DeviceBuffer<__half>(ks.size());
    head_scales = ekv::DeviceBuffer<float>(kKvHeads);
    head_scales.copy_from(std::vector<float>(kKvHeads, 1.0f / 448.0f));
    q = ekv::DeviceBuffer<T>(static_cast<std::size_t>(batch) * kQHeads * kHeadDim);
    q.copy_from(ekv::bench::random_uniform<T>(q.size(), -1.0f, 1.0f, 7));
    lengths = ekv::DeviceBuffer<std::int32_t>(batch);
    dense_lengths = ekv::DeviceBuffer<std::int32_t>(batch);
    table = ekv::DeviceBuffer<std::int32_t>(static_cast<std::size_t>(batch) * blocks_per_seq);
    std::vector<std::int32_t> host_table(table.size());
    std::iota(host_table.begin(), host_table.end(), 0);
    std::shuffle(host_table.begin(), host_table.end(), std::mt19937(3));
    table.copy_from(host_table);
    lengths.copy_from(std::vector<std::int32_t>(batch, 0));
    dense_lengths.copy_from(std::vector<std::int32_t>(batch, 0));
    view = ekv::paged_quant_kv(storage, {k.data(), v.data(), ks.data(), vs.data()}, table.data(), lengths.data(),
                               batch, kKvHeads, kHeadDim, kBlockLen, blocks_per_seq);
    view.k_head_scales = head_scales.data();
    view.v_head_scales = head_scales.data();
    dense_k = ekv::DeviceBuffer<T>(rows * kHeadDim);
    dense_v = ekv::DeviceBuffer<T>(dense_k.size());
    dense = ekv::paged_kv<T>(dense_k.data(), dense_v.data(), table.data(), dense_lengths.data(), batch, kKvHeads,
                             kHeadDim, kBlockLen, blocks_per_seq);
    const int chunk = std::min(len, 4096);
    ekv::DeviceBuffer<T> k_new(static_cast<std::size_t>(batch) * chunk * kKvHeads * kHeadDim), v_new(k_new.size());
    for (int done = 0, i = 0; done < len; done += chunk, ++i) {
      const int m = std::min(chunk, len - done);
      ekv::bench::random_uniform_fill<T>(k_new.span(), -1.0f, 1.0f, 11 + 2 * i, stream);
      ekv::bench::random_uniform_fill<T>(v_new.span(), -1.0f, 1.0f, 12 + 2 * i, stream);
      ekv::append_kv<T>(view, k_new.data(), v_new.data(), m, stream);
      ekv::append_kv<T>(dense, k_new.data(), v_new.data(), m, stream);
    }
    stream.synchronize();
  }
  ekv::DecodeProblem problem() const { return {ekv::DType::kFloat16, batch, kQHeads, kKvHeads, kHeadDim, len}; }

  // The relative L2 error of o against fp16 exact decode over the half twin, the worst
  // row's (err_worst) and pooled over rows (err_pooled), into the state's counters.
  void report_error(benchmark::State& state, const ekv::DeviceBuffer<T>& o, const ekv::DeviceInfo& device,
                    const ekv::Stream& stream) const {
    const ekv::DecodePlan exact = ekv::plan_decode(problem(), device);
    ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(exact, stream);
    ekv::DeviceBuffer<T> o_exact(o.size());
    ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(batch) * kQHeads);
    ekv::run_decode<T>(exact, dense, q.data(), o_exact.data(), lse.data(), workspace.data(), stream);
    std::vector<T> got(o.size()), want(o.size());
    o.copy_to(got, stream);
    o_exact.copy_to(want, stream);
    stream.synchronize();
    const ekv::L2Error err = ekv::relative_l2_error(got.data(), want.data(), batch * kQHeads, kHeadDim);
    state.counters["err_worst"] = err.worst;
    state.counters["err_pooled"] = err.pooled;
  }
};

// state.range: batch, length, storage (KVStorage: 3 FP8, 4 Q8_0, 5 Q4_0), paged block 64
// (QuantBenchPools). After the timing, the accuracy cost against fp16 exact decode.
void decode_quant(benchmark::State& state) {
  using T = __half;
  const auto storage = static_cast<ekv::KVStorage>(state.range(2));
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const QuantBenchPools pools(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), storage, stream);
  const ekv::DecodePlan plan = ekv::plan_quant_decode(pools.problem(), storage, device);
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  ekv::DeviceBuffer<T> o(pools.q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(pools.batch) * kQHeads);
  ekv::bench::L2Flusher flusher(device);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    ekv::run_decode<T>(plan, pools.view, pools.q.data(), o.data(), lse.data(), workspace.data(), st);
  }, &flusher);
  ekv::bench::report_bandwidth(state, 2.0 * pools.batch * kKvHeads * static_cast<double>(pools.len) *
                                          ekv::kv_row_bytes(storage, kHeadDim), s);
  state.counters["splits"] = plan.num_splits;
  state.SetLabel(ekv::to_string(storage));
  pools.report_error(state, o, device, stream);
}

// state.range: batch, length, storage (0: fp16, the half twin; 3 FP8, 4 Q8_0, 5 Q4_0).
// Elastic decode at C = 8 (one sink and one window block, the rest of an eighth of the
// blocks picked per kv head, every step refreshing), anchors (QUEST) from the half twin's
// keys for every storage; the whole step timed (scoring, selection, gather, sparse
// decode). Bytes: what ElasticDecode::bytes_read counts (K and V read, anchors scored).
void elastic_quant(benchmark::State& state) {
  using T = __half;
  const int storage_arg = static_cast<int>(state.range(2));
  const auto storage = storage_arg == 0 ? ekv::KVStorage::kQ8_0 : static_cast<ekv::KVStorage>(storage_arg);
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const QuantBenchPools pools(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), storage, stream);
  ekv::ElasticConfig config;
  config.pick_block_num = std::max(1, pools.blocks_per_seq / 8 - 2);
  ekv::ElasticProblem problem{pools.problem(), QuantBenchPools::kBlockLen, ekv::ElasticPolicy(config), 1,
                              ekv::ExactFallback::kNever};
  if (storage_arg != 0) problem.kv_storage = storage;
  ekv::ElasticDecode<T> step(problem, device, stream);
  ekv::DeviceBuffer<T> anchors(step.anchor_elems(pools.table.size()));
  ekv::build_anchors<T>(pools.dense, anchors.data(), config, stream);
  ekv::DeviceBuffer<T> o(pools.q.size());
  ekv::DeviceBuffer<float> lse(static_cast<std::size_t>(pools.batch) * kQHeads);
  auto run = [&](const ekv::Stream& st) {
    if (storage_arg == 0) {
      step.run(pools.dense, pools.q.data(), anchors.data(), o.data(), lse.data(), st, 0);
    } else {
      step.run(pools.view, pools.q.data(), anchors.data(), o.data(), lse.data(), st, 0);
    }
  };
  ekv::bench::L2Flusher flusher(device);
  const double s = ekv::bench::run_timed(state, stream, run, &flusher);
  const ekv::BytesRead bytes = step.bytes_read(pools.len);
  ekv::bench::report_bandwidth(state, static_cast<double>(pools.batch) * (bytes.kv + bytes.anchors), s);
  state.SetLabel(storage_arg == 0 ? "fp16" : ekv::to_string(storage));
  run(stream);
  pools.report_error(state, o, device, stream);
}

// state.range: batch, length, graph replay (0/1), split count
void decode_split_sweep(benchmark::State& state) {
  run_case(state, static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), 0, state.range(2) != 0,
           static_cast<int>(state.range(3)));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int paged : {0, 64, 16}) {
    for (int copy : {1, 2}) {
      b->Args({1, 4096, paged, 0, copy})->Args({1, 4096, paged, 1, copy});
      b->Args({1, 32768, paged, 0, copy})->Args({1, 32768, paged, 1, copy})->Args({1, 131072, paged, 0, copy});
      b->Args({16, 32768, paged, 0, copy})->Args({16, 131072, paged, 0, copy})->Args({64, 4096, paged, 0, copy});
      b->Args({1, 1 << 20, paged, 0, copy});
    }
  }
  b->ArgNames({"batch", "len", "paged", "graph", "copy"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5)->Repetitions(30)->ReportAggregatesOnly(true);
}

// Split count against shape, for tuning plan_decode. 33 and 66: with 128 or 8 CTA
// columns, the counts that fill whole waves of 132 SMs at one CTA per SM.
void split_sweep(benchmark::internal::Benchmark* b) {
  struct Shape {
    int batch, len;
    std::vector<int> splits;
  };
  const Shape shapes[] = {{1, 4096, {8, 16, 32}},
                          {1, 16384, {8, 16, 32, 33, 66}},  // the elastic step's decode at 1 x 128K, C = 8
                          {1, 32768, {8, 16, 32, 33, 66, 132}},
                          {1, 131072, {8, 16, 32, 33, 66, 132}},
                          {16, 32768, {1, 2, 4, 8, 33}},
                          {16, 131072, {1, 33}},
                          {64, 4096, {1, 2, 4, 8, 33}}};
  for (const Shape& shape : shapes) {
    for (int splits : shape.splits) b->Args({shape.batch, shape.len, shape.batch == 1 && shape.len == 4096, splits});
  }
  b->ArgNames({"batch", "len", "graph", "splits"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5)->Repetitions(15)->ReportAggregatesOnly(true);
}

}  // namespace

void quant_shapes(benchmark::internal::Benchmark* b) {
  for (int storage : {3, 4, 5}) {
    b->Args({1, 4096, storage})->Args({1, 32768, storage})->Args({1, 131072, storage});
    b->Args({16, 32768, storage})->Args({16, 131072, storage});
  }
  b->ArgNames({"batch", "len", "storage"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5)->Repetitions(20)->ReportAggregatesOnly(true);
}

BENCHMARK(decode)->Apply(shapes);
void elastic_quant_shapes(benchmark::internal::Benchmark* b) {
  for (int storage : {0, 3, 4, 5}) {
    b->Args({1, 32768, storage})->Args({1, 131072, storage})->Args({16, 32768, storage});
    b->Args({16, 131072, storage});
  }
  b->ArgNames({"batch", "len", "storage"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(5)->Repetitions(20)->ReportAggregatesOnly(true);
}

BENCHMARK(decode_quant)->Apply(quant_shapes);
BENCHMARK(elastic_quant)->Apply(elastic_quant_shapes);
BENCHMARK(decode_split_sweep)->Apply(split_sweep);

int main(int argc, char** argv) { return ekv::bench::main(argc, argv); }
