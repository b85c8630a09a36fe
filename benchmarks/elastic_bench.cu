// Elastic against exact decode on the same paged cache: fp16, q_heads 32, kv_heads 8,
// head_dim 128, blocks of 64 tokens, QUEST anchors (half) with one kv-head selection, one sink
// and one window block, compression C. Both timed by graph replay on cold L2 in the same
// benchmark; a refreshing elastic step includes scoring, selection and the gather, a
// reusing one (between refreshes, ElasticConfig::token_step) only the gather. Accuracy: the
// relative L2 error of elastic O against exact O (both from the GPU), and at batch 1 the
// attention mass the selection captured (float64, host). Data: random, or random with
// planted needles (a few blocks per kv head whose keys point along the query).

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/attention/decode.cuh"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/random.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/kernels/random_fill.cuh"
#include "ekv/bench/statistics.hpp"
#include "gpu_bench.hpp"

namespace {

using T = __half;
constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlockLen = 64, kNeedles = 4;

// state.range: batch, length, compression, needles (0/1)
void elastic(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0)), len = static_cast<int>(state.range(1));
  const double compression = static_cast<double>(state.range(2));
  const bool needles = state.range(3) != 0;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const int blocks = (len + kBlockLen - 1) / kBlockLen;
  const std::size_t block_elems = static_cast<std::size_t>(kKvHeads) * kBlockLen * kHeadDim;
  const std::size_t pool = static_cast<std::size_t>(batch) * blocks * block_elems;
  ekv::DeviceBuffer<T> k(pool), v(pool), q(static_cast<std::size_t>(batch) * kQHeads * kHeadDim);
  ekv::DeviceBuffer<T> o_exact(q.size()), o_elastic(q.size());
  ekv::DeviceBuffer<float> lse_exact(static_cast<std::size_t>(batch) * kQHeads), lse_elastic(lse_exact.size());
  ekv::DeviceBuffer<std::int32_t> lengths(batch), table(static_cast<std::size_t>(batch) * blocks);
  ekv::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 1, stream);
  ekv::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 2, stream);
  const std::vector<T> host_q = ekv::random_uniform<T>(q.size(), -1.0f, 1.0f, 7);
  q.copy_from(host_q);
  lengths.copy_from(std::vector<std::int32_t>(batch, len));
  std::vector<std::int32_t> host_table(table.size());
  std::iota(host_table.begin(), host_table.end(), 0);
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937(3));
  table.copy_from(host_table);
  stream.synchronize();
  if (needles) {
    // kNeedles blocks per (sequence, kv head), keys along the group's first query head
    std::mt19937 rng(11);
    for (int b = 0; b < batch; ++b) {
      for (int h = 0; h < kKvHeads; ++h) {
        const T* qh = host_q.data() + (static_cast<std::size_t>(b) * kQHeads + h * (kQHeads / kKvHeads)) * kHeadDim;
        double norm = 0;
        for (int c = 0; c < kHeadDim; ++c) norm += std::pow(__half2float(qh[c]), 2);
        std::vector<T> rows(static_cast<std::size_t>(kBlockLen) * kHeadDim);
        for (int t = 0; t < kBlockLen; ++t) {
          for (int c = 0; c < kHeadDim; ++c) {
            rows[t * kHeadDim + c] = __float2half(static_cast<float>(__half2float(qh[c]) * 12.0 / std::sqrt(norm)) +
                                                  std::uniform_real_distribution<float>(-0.1f, 0.1f)(rng));
          }
        }
        for (int n = 0; n < kNeedles; ++n) {
          const int logical = std::uniform_int_distribution<int>(1, blocks - 2)(rng);
          const std::size_t physical = host_table[static_cast<std::size_t>(b) * blocks + logical];
          EKV_CUDA_CHECK(cudaMemcpy(k.data() + physical * block_elems + static_cast<std::size_t>(h) * kBlockLen * kHeadDim,
                                    rows.data(), rows.size() * sizeof(T), cudaMemcpyHostToDevice));
        }
      }
    }
  }
  const ekv::KVView<T> view =
      ekv::paged_kv<T>(k.data(), v.data(), table.data(), lengths.data(), batch, kKvHeads, kHeadDim, kBlockLen, blocks);

  const ekv::DecodeProblem problem{ekv::DType::kFloat16, batch, kQHeads, kKvHeads, kHeadDim, len};
  const ekv::DecodePlan exact = ekv::plan_decode(problem, device);
  ekv::DeviceBuffer<unsigned char> exact_workspace = ekv::make_decode_workspace(exact, stream);
  ekv::ElasticConfig config;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(compression));
  ekv::ElasticDecode<T> elastic_step(problem, kBlockLen, policy, device, stream);
  ekv::DeviceBuffer<T> anchors(static_cast<std::size_t>(batch) * blocks * kKvHeads *
                               ekv::anchor_values(config.anchor, config.anchor_num, kHeadDim));
  ekv::build_anchors<T>(view, anchors.data(), config, stream);

  auto run_exact = [&](const ekv::Stream& s) {
    ekv::run_decode<T>(exact, view, q.data(), o_exact.data(), lse_exact.data(), exact_workspace.data(), s);
  };
  auto run_elastic = [&](const ekv::Stream& s) {
    elastic_step.run(view, q.data(), anchors.data(), o_elastic.data(), lse_elastic.data(), s);
  };
  auto run_selection = [&](const ekv::Stream& s) { elastic_step.select(view, q.data(), anchors.data(), s); };
  auto run_reuse = [&](const ekv::Stream& s) {  // a step between refreshes
    elastic_step.attend(view, q.data(), o_elastic.data(), lse_elastic.data(), s);
  };
  ekv::Graph exact_graph = ekv::Graph::capture(stream, run_exact);
  ekv::Graph elastic_graph = ekv::Graph::capture(stream, run_elastic);
  ekv::Graph selection_graph = ekv::Graph::capture(stream, run_selection);
  ekv::Graph reuse_graph = ekv::Graph::capture(stream, run_reuse);
  ekv::L2Flusher flusher(device);
  ekv::Event start, stop;
  auto sample = [&](ekv::Graph& graph) {
    flusher.flush(stream);
    start.record(stream);
    graph.launch(stream);
    stop.record(stream);
    stop.synchronize();
    return ekv::Event::elapsed_ms(start, stop) * 1e-3;
  };
  // interleaved: each iteration times an exact step, a refreshing elastic step, the
  // selection alone and a step that reuses the selection
  std::vector<double> exact_s, elastic_s, selection_s, reuse_s;
  for (auto _ : state) {
    exact_s.push_back(sample(exact_graph));
    elastic_s.push_back(sample(elastic_graph));
    selection_s.push_back(sample(selection_graph));
    reuse_s.push_back(sample(reuse_graph));
    state.SetIterationTime(elastic_s.back());
  }
  const double exact_median = ekv::summarize(exact_s).median;
  const double elastic_median = ekv::summarize(elastic_s).median;
  const double selection_median = ekv::summarize(selection_s).median;
  const double reuse_median = ekv::summarize(reuse_s).median;
  elastic_graph.launch(stream);  // the outputs compared below
  stream.synchronize();
  std::vector<T> exact_o(o_exact.size()), elastic_o(o_elastic.size());
  o_exact.copy_to(exact_o);
  o_elastic.copy_to(elastic_o);
  std::vector<double> reference(exact_o.size());
  for (std::size_t i = 0; i < exact_o.size(); ++i) reference[i] = __half2float(exact_o[i]);
  const ekv::L2Error error = ekv::relative_l2_error(elastic_o.data(), reference.data(), batch * kQHeads, kHeadDim);

  const ekv::BytesRead bytes = elastic_step.bytes_read(len);
  const double exact_bytes = 2.0 * len * kKvHeads * kHeadDim * sizeof(T);
  state.counters["exact_us"] = exact_median * 1e6;
  state.counters["elastic_us"] = elastic_median * 1e6;
  state.counters["select_us"] = selection_median * 1e6;
  state.counters["speedup"] = exact_median / elastic_median;
  state.counters["reuse_us"] = reuse_median * 1e6;
  state.counters["speedup_reuse"] = exact_median / reuse_median;
  state.counters["bytes_ratio"] = exact_bytes / static_cast<double>(bytes.total());
  state.counters["rel_err"] = error.pooled;
  state.counters["rel_err_worst"] = error.worst;
  state.counters["blocks"] = elastic_step.counts().total();
  if (batch == 1) {
    // attention mass captured, averaged over query heads, from the host copy of the cache
    std::vector<T> host_k(pool), host_v(pool);
    std::vector<std::int32_t> host_lengths(batch, len), selected(static_cast<std::size_t>(kKvHeads) * elastic_step.max_attended()),
        counts(kKvHeads);
    k.copy_to(host_k);
    v.copy_to(host_v);
    EKV_CUDA_CHECK(cudaMemcpy(selected.data(), elastic_step.attended(), selected.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost));
    EKV_CUDA_CHECK(cudaMemcpy(counts.data(), elastic_step.num_attended(), counts.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost));
    const ekv::KVView<T> host = ekv::paged_kv<T>(host_k.data(), host_v.data(), host_table.data(), host_lengths.data(), 1,
                                                 kKvHeads, kHeadDim, kBlockLen, blocks);
    double mass = 0;
    for (int qh = 0; qh < kQHeads; ++qh) {
      const int h = qh / (kQHeads / kKvHeads);
      const std::vector<int> chosen(selected.begin() + static_cast<std::ptrdiff_t>(h) * elastic_step.max_attended(),
                                    selected.begin() + static_cast<std::ptrdiff_t>(h) * elastic_step.max_attended() + counts[h]);
      mass += ekv::attention_mass_captured(host, host_q.data() + static_cast<std::size_t>(qh) * kHeadDim, 0, h, chosen,
                                           1.0 / std::sqrt(static_cast<double>(kHeadDim)));
    }
    state.counters["mass"] = mass / kQHeads;
  }
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int needles : {0, 1}) {
    for (int c : {2, 4, 8, 16}) {
      for (int batch : {1, 16}) {
        for (int len : {32768, 131072}) b->Args({batch, len, c, needles});
      }
    }
  }
  b->ArgNames({"batch", "len", "C", "needles"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30)->Repetitions(1);
}

}  // namespace

BENCHMARK(elastic)->Apply(shapes);

int main(int argc, char** argv) { return ekv::bench::main(argc, argv); }
