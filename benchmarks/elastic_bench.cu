// Elastic against exact decode on the same paged cache: fp16, q_heads 32, kv_heads 8,
// head_dim 128, blocks of 64 tokens, QUEST anchors (half) with one kv-head selection, one sink
// and one window block, compression C. Both timed by graph replay on cold L2 in the same
// benchmark; a refreshing elastic step is scoring, selection, a gather and decode over the
// gathered blocks, a reusing one (between refreshes, ElasticConfig::token_step) the gather
// and decode. Stages alone: select_us (ElasticDecode::select: score_blocks, select_blocks),
// score_us (score_blocks), decode_us (decode over the gathered rows), and the selections
// that write the sparse rows themselves: rows_select_us (score_blocks, then select_blocks
// with sparse rows) and fused_select_us (score_and_select_blocks, one launch);
// select_share = select / step. Accuracy: the
// relative L2 error of elastic O against exact O (both from the GPU), and at batch 1 the
// attention mass the selection captured (float64, host). Data: random, or random with
// planted needles (a few blocks per kv head whose keys point along the query).

#include <algorithm>
#include <cmath>
#include <vector>

#include "ekv/attention/decode.cuh"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "gpu_bench.hpp"
#include "harness/device_bench_cache.cuh"
#include "harness/sample_timer.cuh"
#include "harness/statistics.hpp"

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
  const ekv::bench::BenchShape shape{batch, kQHeads, kKvHeads, kHeadDim, kBlockLen, blocks};
  ekv::bench::DeviceBenchCache<T> cache(shape, len, ekv::bench::BenchSeeds(1), needles ? kNeedles : 0, stream);
  const ekv::KVView<T> view = cache.view();
  ekv::DeviceBuffer<T> o_exact(shape.q_elems()), o_elastic(shape.q_elems());
  ekv::DeviceBuffer<float> lse_exact(static_cast<std::size_t>(batch) * kQHeads), lse_elastic(lse_exact.size());
  const T* q = cache.q.data();

  const ekv::DecodeProblem problem{ekv::DType::kFloat16, batch, kQHeads, kKvHeads, kHeadDim, len};
  const ekv::DecodePlan exact = ekv::plan_decode(problem, device);
  ekv::DeviceBuffer<unsigned char> exact_workspace = ekv::make_decode_workspace(exact, stream);
  ekv::ElasticConfig config;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(compression));
  // the elastic path itself, also where ElasticDecode would attend exactly (the fallback
  // threshold comes from these rows)
  ekv::ElasticDecode<T> elastic_step(problem, kBlockLen, policy, device, stream, 1, ekv::ExactFallback::kNever);
  ekv::DeviceBuffer<T> anchors(elastic_step.anchor_elems(static_cast<std::size_t>(batch) * blocks));
  ekv::build_anchors<T>(view, anchors.data(), config, stream);

  auto run_exact = [&](const ekv::Stream& s) {
    ekv::run_decode<T>(exact, view, q, o_exact.data(), lse_exact.data(), exact_workspace.data(), s);
  };
  auto run_elastic = [&](const ekv::Stream& s) {
    elastic_step.run(view, q, anchors.data(), o_elastic.data(), lse_elastic.data(), s);
  };
  auto run_selection = [&](const ekv::Stream& s) { elastic_step.select(view, q, anchors.data(), s); };
  // the stages alone: scoring without selection (score_blocks into a scratch buffer), and
  // the decode over the selection's sparse rows without a gather
  ekv::DeviceBuffer<float> scratch_scores(static_cast<std::size_t>(batch) * kKvHeads * blocks);
  auto run_scoring = [&](const ekv::Stream& s) {
    ekv::score_blocks<T>(view, q, kQHeads, anchors.data(), config, scratch_scores.data(), device, s);
  };
  // the selection writing the sparse rows itself: in two launches (score_blocks, then
  // select_blocks with sparse rows) and in one (score_and_select_blocks)
  const int max_selected = policy.counts(blocks).total();
  const std::size_t rows = static_cast<std::size_t>(batch) * kKvHeads;
  ekv::DeviceBuffer<std::int32_t> u_selected(rows * max_selected), u_counts(rows), u_then(rows),
      u_tables(rows * max_selected), u_lengths(rows), u_attended(rows * max_selected), u_num(rows);
  ekv::SelectionOut unfused_out;
  unfused_out.selected = u_selected.data();
  unfused_out.num_selected = u_counts.data();
  unfused_out.max_selected = max_selected;
  unfused_out.blocks_then = u_then.data();
  unfused_out.sparse = {u_tables.data(), u_lengths.data(), max_selected, false, u_attended.data(), u_num.data()};
  auto run_unfused = [&](const ekv::Stream& s) {
    run_scoring(s);
    ekv::select_blocks<T>(view, kQHeads, scratch_scores.data(), policy, unfused_out, s);
  };
  ekv::DeviceBuffer<int> arrivals(rows);
  arrivals.fill_bytes(0, stream);
  auto run_fused = [&](const ekv::Stream& s) {
    ekv::score_and_select_blocks<T>(view, q, kQHeads, anchors.data(), policy, scratch_scores.data(), arrivals.data(),
                                    unfused_out, device, s);
  };
  auto run_decode_selection = [&](const ekv::Stream& s) {
    elastic_step.decode_selection(view, q, o_elastic.data(), lse_elastic.data(), s);
  };
  auto run_reuse = [&](const ekv::Stream& s) {  // a step between refreshes
    elastic_step.attend(view, q, o_elastic.data(), lse_elastic.data(), s);
  };
  ekv::Graph exact_graph = ekv::Graph::capture(stream, run_exact);
  ekv::Graph elastic_graph = ekv::Graph::capture(stream, run_elastic);
  ekv::Graph selection_graph = ekv::Graph::capture(stream, run_selection);
  ekv::Graph reuse_graph = ekv::Graph::capture(stream, run_reuse);
  ekv::Graph scoring_graph = ekv::Graph::capture(stream, run_scoring);
  ekv::Graph decode_graph = ekv::Graph::capture(stream, run_decode_selection);
  ekv::Graph unfused_graph = ekv::Graph::capture(stream, run_unfused);
  ekv::Graph fused_graph = ekv::Graph::capture(stream, run_fused);
  ekv::bench::SampleTimer timer(device);
  auto sample = [&](ekv::Graph& graph) { return timer.seconds(stream, [&](const ekv::Stream& s) { graph.launch(s); }); };
  // interleaved: each iteration times an exact step, a refreshing elastic step, the
  // selection alone and a step that reuses the selection
  std::vector<double> exact_s, elastic_s, selection_s, reuse_s, scoring_s, decode_s, unfused_s, fused_s;
  for (auto _ : state) {
    exact_s.push_back(sample(exact_graph));
    elastic_s.push_back(sample(elastic_graph));
    selection_s.push_back(sample(selection_graph));
    reuse_s.push_back(sample(reuse_graph));
    scoring_s.push_back(sample(scoring_graph));
    decode_s.push_back(sample(decode_graph));
    unfused_s.push_back(sample(unfused_graph));
    fused_s.push_back(sample(fused_graph));
    state.SetIterationTime(elastic_s.back());
  }
  const double exact_median = ekv::bench::summarize(exact_s).median;
  const double elastic_median = ekv::bench::summarize(elastic_s).median;
  const double selection_median = ekv::bench::summarize(selection_s).median;
  const double reuse_median = ekv::bench::summarize(reuse_s).median;
  elastic_graph.launch(stream);  // the outputs compared below
  stream.synchronize();
  std::vector<T> exact_o(o_exact.size()), elastic_o(o_elastic.size());
  o_exact.copy_to(exact_o);
  o_elastic.copy_to(elastic_o);
  const ekv::L2Error error = ekv::relative_l2_error(elastic_o.data(), exact_o.data(), batch * kQHeads, kHeadDim);

  const ekv::BytesRead bytes = elastic_step.bytes_read(len);
  const double exact_bytes = 2.0 * len * kKvHeads * kHeadDim * sizeof(T);
  state.counters["exact_us"] = exact_median * 1e6;
  state.counters["elastic_us"] = elastic_median * 1e6;
  state.counters["select_us"] = selection_median * 1e6;
  state.counters["score_us"] = ekv::bench::summarize(scoring_s).median * 1e6;
  state.counters["decode_us"] = ekv::bench::summarize(decode_s).median * 1e6;
  state.counters["rows_select_us"] = ekv::bench::summarize(unfused_s).median * 1e6;
  state.counters["fused_select_us"] = ekv::bench::summarize(fused_s).median * 1e6;
  state.counters["select_share"] = selection_median / elastic_median;
  state.counters["speedup"] = exact_median / elastic_median;
  state.counters["reuse_us"] = reuse_median * 1e6;
  state.counters["speedup_reuse"] = exact_median / reuse_median;
  state.counters["bytes_ratio"] = exact_bytes / static_cast<double>(bytes.total());
  state.counters["rel_err"] = error.pooled;
  state.counters["rel_err_worst"] = error.worst;
  state.counters["blocks"] = elastic_step.counts().total();
  if (batch == 1) {
    // attention mass captured, averaged over query heads, from the host copy of the cache
    std::vector<T> host_k(shape.pool_elems()), host_v(shape.pool_elems());
    std::vector<std::int32_t> host_lengths(batch, len), selected(static_cast<std::size_t>(kKvHeads) * elastic_step.max_attended()),
        counts(kKvHeads);
    cache.k.copy_to(host_k);
    cache.v.copy_to(host_v);
    EKV_CUDA_CHECK(cudaMemcpy(selected.data(), elastic_step.attended(), selected.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost));
    EKV_CUDA_CHECK(cudaMemcpy(counts.data(), elastic_step.num_attended(), counts.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost));
    const ekv::KVView<T> host = ekv::paged_kv<T>(host_k.data(), host_v.data(), cache.host.table.data(), host_lengths.data(),
                                                 1, kKvHeads, kHeadDim, kBlockLen, blocks);
    const auto chosen = [&](int, int h) {
      const auto first = selected.begin() + static_cast<std::ptrdiff_t>(h) * elastic_step.max_attended();
      return std::vector<int>(first, first + counts[h]);
    };
    state.counters["mass"] = ekv::attention_mass_of_selection(host, cache.host.q.data(), kQHeads, 1, chosen,
                                                              1.0 / std::sqrt(static_cast<double>(kHeadDim))).mean;
    if (needles) {  // the fraction of the planted needle blocks the step read
      int planted = 0, read = 0;
      for (int h = 0; h < kKvHeads; ++h) {
        const std::vector<int> got = chosen(0, h);
        for (int block : cache.needle_blocks[h]) {
          ++planted;
          read += std::binary_search(got.begin(), got.end(), block) ? 1 : 0;
        }
      }
      state.counters["needle_recall"] = static_cast<double>(read) / planted;
    }
  }
}

// With needles (random keys make the error meaningless): batch 1 from 4K tokens (where
// the exact fallback's break-even lies) to 1M, and batch 16 at 32K and 128K.
void shapes(benchmark::internal::Benchmark* b) {
  for (int c : {2, 4, 8, 16}) {
    for (int len : {4096, 8192, 16384, 32768, 131072, 1 << 20}) b->Args({1, len, c, 1});
    for (int len : {32768, 131072}) b->Args({16, len, c, 1});
  }
  b->ArgNames({"batch", "len", "C", "needles"});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30)->Repetitions(1);
}

}  // namespace

BENCHMARK(elastic)->Apply(shapes);

int main(int argc, char** argv) { return ekv::bench::main(argc, argv); }
