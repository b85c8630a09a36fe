#pragma once
// ekv-bench on the GPU: exact decode (run_decode over the whole cache) against elastic
// decode (ElasticDecode, anchors from build_anchors) on the same paged cache. Paired
// samples, each step timed with CUDA events after its own L2 eviction, by CUDA Graph
// replay unless --no-graphs; the device's read, copy and FMA roofs measured first in the
// same run.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/core/graph.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "harness/bench_accuracy.hpp"
#include "harness/bench_inputs.hpp"
#include "harness/bench_options.hpp"
#include "harness/bench_report.hpp"
#include "harness/ceilings.cuh"
#include "harness/device_bench_cache.cuh"
#include "harness/paired_samples.hpp"
#include "harness/sample_timer.cuh"

namespace ekv::bench {

// One decode step's work, replayed from a CUDA Graph captured once, or issued directly.
class StepLauncher {
 public:
  StepLauncher(const Stream& stream, std::function<void(const Stream&)> issue, bool graph) : issue_(std::move(issue)) {
    if (graph) graph_ = Graph::capture(stream, issue_);
  }
  void operator()(const Stream& stream) const {
    if (graph_.empty()) {
      issue_(stream);
    } else {
      graph_.launch(stream);
    }
  }

 private:
  std::function<void(const Stream&)> issue_;
  Graph graph_;
};

template <typename T>
BenchReport run_gpu_bench(const BenchOptions& o, std::ostream& progress) {
  const DeviceInfo device = DeviceInfo::current();
  Stream stream;
  BenchReport r;
  r.backend = BenchBackend::kCuda;
  r.options = o;
  r.device = device;
  if (o.roofs) {
    progress << "ekv-bench: measuring " << device.name << "'s read, copy and FMA roofs\n";
    const ReadCeiling read = measure_read_ceiling(stream);
    r.ceilings.read_bytes_per_s = read.bytes_per_s;
    r.ceilings.read_kernel = read.best;
    for (const auto& k : read.kernels) r.ceilings.read_kernels.emplace_back(k.name, k.bytes_per_s);
    r.ceilings.theoretical_read_bytes_per_s = read.theoretical_bytes_per_s;
    r.ceilings.copy_bytes_per_s = measure_copy_bandwidth(stream);
    r.ceilings.peak_flops_per_s = measure_fma_throughput(stream);
    r.ceilings.peak_flops_source =
        "float32 FMA chains on CUDA cores (harness/fma_throughput.cuh); half and bfloat16 decode runs on tensor "
        "cores, whose higher roof is not measured";
  } else {
    r.ceilings.peak_flops_source = "--no-roofs: nothing measured";
  }

  const BenchShape shape = bench_shape(o);
  const BenchSeeds seeds(o.seed);
  DeviceBenchCache<T> cache(shape, o.seq, seeds, o.needle_blocks(), stream);
  const KVView<T> kv = cache.view();
  const DecodeProblem problem{kDTypeOf<T>, o.batch, o.q_heads(), o.kv_head_count(), o.dim, o.capacity_tokens()};
  const DecodePlan plan = plan_decode(problem, device);
  DeviceBuffer<unsigned char> workspace = make_decode_workspace(plan, stream);
  const ElasticConfig config = o.elastic_config();
  ElasticDecode<T> elastic(problem, o.block_len, o.elastic_policy(), device, stream, 1,
                           o.exact_fallback ? ExactFallback::kAuto : ExactFallback::kNever);
  DeviceBuffer<T> anchors(elastic.anchor_elems(shape.batch * static_cast<std::size_t>(shape.blocks_per_seq)));
  build_anchors<T>(kv, anchors.data(), config, stream);
  DeviceBuffer<T> exact_o(shape.q_elems()), elastic_o(shape.q_elems());
  DeviceBuffer<float> exact_lse(static_cast<std::size_t>(o.batch) * o.q_heads()), elastic_lse(exact_lse.size());
  // the decode loop appends a fresh token per sequence and step (step s appends token s of
  // k_new and v_new); `before` holds the lengths before it, for update_anchors, and `last`
  // the token --seq - 1 (see reset)
  const std::size_t new_elems = static_cast<std::size_t>(o.batch) * shape.kv_heads * shape.head_dim;
  const int new_tokens = o.inference ? o.decode_tokens : 1;
  DeviceBuffer<T> k_new(new_elems * new_tokens), v_new(new_elems * new_tokens);
  random_uniform_fill<T>(k_new.span(), -1.0f, 1.0f, seeds.k + 100, stream);
  random_uniform_fill<T>(v_new.span(), -1.0f, 1.0f, seeds.v + 100, stream);
  DeviceBuffer<std::int32_t> before(o.batch), last(o.batch);
  last.copy_from(std::vector<std::int32_t>(o.batch, o.seq - 1));
  stream.synchronize();

  const auto append = [&](const Stream& s, int step) {
    if (o.inference) append_kv<T>(kv, k_new.data() + step * new_elems, v_new.data() + step * new_elems, 1, s);
  };
  const auto append_and_update = [&](const Stream& s, int step) {
    if (!o.inference) return;
    EKV_CUDA_CHECK(cudaMemcpyAsync(before.data(), kv.lengths, before.size_bytes(), cudaMemcpyDeviceToDevice, s.get()),
                   "ekv-bench: cannot keep the lengths before an append");
    append(s, step);
    update_anchors<T>(kv, anchors.data(), config, before.data(), 1, s);
  };
  // One launcher per distinct step: a decode loop's steps append different tokens; a
  // sample of --inner_loops steps repeats --refresh kinds (a refresh, then reuses).
  const int steps = o.inference ? o.decode_tokens : o.inner_loops;
  const int variants = o.inference ? steps : std::min(steps, o.refresh);
  // select() before any capture: attend() refuses to run (or be captured) before a selection
  elastic.select(kv, cache.q.data(), anchors.data(), stream);
  std::vector<StepLauncher> exact_steps, elastic_steps;
  exact_steps.reserve(variants);
  elastic_steps.reserve(variants);
  for (int v = 0; v < variants; ++v) {
    exact_steps.emplace_back(stream, [&, v](const Stream& s) {
      append(s, v);
      run_decode<T>(plan, kv, cache.q.data(), exact_o.data(), exact_lse.data(), workspace.data(), s);
    }, o.graphs);
    const bool refresh = config.refreshes_selection(v);
    elastic_steps.emplace_back(stream, [&, v, refresh](const Stream& s) {
      append_and_update(s, v);
      if (refresh) elastic.select(kv, cache.q.data(), anchors.data(), s);
      elastic.attend(kv, cache.q.data(), elastic_o.data(), elastic_lse.data(), s);
    }, o.graphs);
  }

  SampleTimer timer(device);
  // every step cold: L2 evicted before each, outside its timed region
  const auto exact_sample = [&] {
    return timer.seconds_of_steps(stream, steps, [&](const Stream& s, int i) { exact_steps[i % variants](s); });
  };
  const auto elastic_sample = [&] {
    return timer.seconds_of_steps(stream, steps, [&](const Stream& s, int i) { elastic_steps[i % variants](s); });
  };
  // the decode loop starts each sample from --seq tokens, the anchors of the block holding
  // token seq - 1 recomputed from the tokens valid then
  const auto reset = [&] {
    if (!o.inference) return;
    cache.set_lengths(o.seq);
    update_anchors<T>(kv, anchors.data(), config, last.data(), 1, stream);
  };
  progress << "ekv-bench: timing " << o.reps << " paired samples of " << steps << " step(s)"
           << (o.graphs ? ", CUDA Graph replay" : ", direct launches") << ", L2 evicted before each step\n";
  // anchors are stored in the cache's dtype
  record_timing(r, paired_samples(o.warmup, o.reps, o.paired_baseline, exact_sample, elastic_sample, reset), steps,
                dtype_size(o.dtype));
  if (elastic.attends_exactly()) {  // the fallback reads what exact reads
    r.elastic_attends_exactly = true;
    r.elastic.work = r.exact.work;
    r.elastic_blocks = r.blocks_per_sequence;
  }

  // both from the same inputs: the last samples' outputs, after the same appends
  reset();
  exact_sample();
  reset();
  elastic_sample();
  stream.synchronize();
  progress << "ekv-bench: computing the attention mass on the host (float64)\n";
  std::vector<T> host_k(cache.k.size()), host_v(cache.v.size()), exact_out(exact_o.size()), elastic_out(elastic_o.size());
  std::vector<std::int32_t> host_lengths(o.batch);
  const std::size_t rows = static_cast<std::size_t>(o.batch) * o.kv_head_count();
  std::vector<std::int32_t> attended(rows * elastic.max_attended()), counts(rows, 0);
  cache.k.copy_to(host_k);
  cache.v.copy_to(host_v);
  cache.lengths.copy_to(host_lengths);
  exact_o.copy_to(exact_out);
  elastic_o.copy_to(elastic_out);
  if (!elastic.attends_exactly()) {
    EKV_CUDA_CHECK(cudaMemcpy(attended.data(), elastic.attended(), attended.size() * sizeof(std::int32_t),
                              cudaMemcpyDeviceToHost), "ekv-bench: cannot read elastic's selection");
    EKV_CUDA_CHECK(cudaMemcpy(counts.data(), elastic.num_attended(), counts.size() * sizeof(std::int32_t),
                              cudaMemcpyDeviceToHost), "ekv-bench: cannot read elastic's selection");
  }
  const KVView<T> host = paged_kv<T>(host_k.data(), host_v.data(), cache.host.table.data(), host_lengths.data(),
                                     shape.batch, shape.kv_heads, shape.head_dim, shape.block_len, shape.blocks_per_seq);
  r.accuracy = bench_accuracy(host, cache.host.q.data(), o.q_heads(), exact_out.data(), elastic_out.data(),
                              [&](int seq, int head) {
                                if (elastic.attends_exactly()) {  // every block
                                  std::vector<int> all(sequence_blocks(host_lengths[seq], shape.block_len));
                                  for (std::size_t b = 0; b < all.size(); ++b) all[b] = static_cast<int>(b);
                                  return all;
                                }
                                const std::size_t row = static_cast<std::size_t>(seq) * o.kv_head_count() + head;
                                const auto first = attended.begin() + row * elastic.max_attended();
                                return std::vector<int>(first, first + counts[row]);
                              },
                              cache.needle_blocks);
  r.notes.push_back(elastic.attends_exactly()
                        ? "GPU elastic: ElasticDecode attends exactly at this shape (its budget cannot pay for "
                          "selection); --no-fallback times the elastic path"
                        : "GPU elastic: anchors, scoring, selection and block-sparse decode on the GPU "
                          "(ElasticDecode)");
  r.notes.push_back("timing: every step cold, L2 evicted before each step outside its CUDA-event interval");
  if (has_roofs(r.ceilings) && r.exact.work.bytes / r.exact.step_s.median > r.ceilings.read_bytes_per_s) {
    r.notes.push_back("exact decode read faster than the best read kernel: the read ceiling is too low here");
  }
  if (o.inference) {
    r.notes.push_back("decode loop: exact steps append and attend; elastic steps append, update anchors, select "
                      "every --refresh steps and attend");
  }
  return r;
}

// The GPU run for options.dtype. Throws ekv::Error for what the GPU kernels do not support.
inline BenchReport run_gpu_bench(const BenchOptions& o, std::ostream& progress) {
  return dispatch<kDecodeDTypes>("dtype", "decode", o.dtype,
                                 [&](auto type) { return run_gpu_bench<typename decltype(type)::type>(o, progress); });
}

}  // namespace ekv::bench
