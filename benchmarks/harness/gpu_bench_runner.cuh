#pragma once
// ekv-bench on the GPU: exact decode (run_decode over the whole cache) against elastic
// decode (ElasticDecode, anchors from build_anchors) on the same paged cache, in --dtype or
// quantized on the device (--kv-dtype: DeviceQuantCache, read by plan_quant_decode's kernel
// and ElasticDecode over a QuantKVView). Paired samples, each step timed with CUDA events
// after its own L2 eviction, by CUDA Graph replay unless --no-graphs; the device's read,
// copy and FMA roofs measured first in the same run.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_quant.cuh"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "harness/bench_accuracy.hpp"
#include "harness/bench_inputs.hpp"
#include "harness/bench_options.hpp"
#include "harness/bench_report.hpp"
#include "harness/ceilings.cuh"
#include "harness/device_bench_cache.cuh"
#include "harness/device_quant_cache.cuh"
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

namespace detail {

// The lengths a view's appends advance.
template <typename T>
std::int32_t* view_lengths(const KVView<T>& kv) {
  return kv.lengths;
}
inline std::int32_t* view_lengths(const QuantKVView& kv) { return kv.codes.lengths; }

// The timed part of run_gpu_bench over `kv`: the dense cache's own view, or a QuantKVView
// holding its values quantized (DeviceQuantCache), whose lengths set_lengths(n) puts back
// at n. Exact (run_decode) and elastic (ElasticDecode) paired samples, then their outputs
// from the same inputs and the accuracy figures. Elastic's anchors come from kv's keys
// (over quantized storage, the stored keys dequantized: build_anchors and update_anchors
// of a QuantKVView). The decode loop's step s appends token s of k_new and v_new
// ([steps][batch][kv_heads][head_dim]). Over quantized storage the dense cache gets those
// appends after the timing, and exact decode over it is the reference of the storage's cost.
template <typename T, typename View, typename SetLengths>
void run_gpu_variants(const BenchOptions& o, const DeviceInfo& device, const Stream& stream,
                      DeviceBenchCache<T>& cache, const View& kv, SetLengths&& set_lengths,
                      const DeviceBuffer<T>& k_new, const DeviceBuffer<T>& v_new, BenchReport& r,
                      std::ostream& progress) {
  constexpr bool kQuantized = std::is_same_v<View, QuantKVView>;
  const BenchShape& shape = cache.shape;
  const DecodeProblem problem{kDTypeOf<T>, o.batch, o.q_heads(), o.kv_head_count(), o.dim, o.capacity_tokens()};
  const DecodePlan plan =
      kQuantized ? plan_quant_decode(problem, o.kv_storage(), device) : plan_decode(problem, device);
  DeviceBuffer<unsigned char> workspace = make_decode_workspace(plan, stream);
  const ElasticConfig config = o.elastic_config();
  ElasticProblem elastic_problem{problem, o.block_len, o.elastic_policy(), 1,
                                 o.exact_fallback ? ExactFallback::kAuto : ExactFallback::kNever};
  if (kQuantized) elastic_problem.kv_storage = o.kv_storage();
  ElasticDecode<T> elastic(elastic_problem, device, stream);
  DeviceBuffer<T> anchors(elastic.anchor_elems(shape.batch * static_cast<std::size_t>(shape.blocks_per_seq)));
  build_anchors<T>(kv, anchors.data(), config, stream);
  DeviceBuffer<T> exact_o(shape.q_elems()), elastic_o(shape.q_elems());
  DeviceBuffer<float> exact_lse(static_cast<std::size_t>(o.batch) * o.q_heads()), elastic_lse(exact_lse.size());
  // `before` holds the lengths before an append, for update_anchors, and `last` the token
  // --seq - 1 (see reset)
  const std::size_t new_elems = static_cast<std::size_t>(o.batch) * shape.kv_heads * shape.head_dim;
  DeviceBuffer<std::int32_t> before(o.batch), last(o.batch);
  last.copy_from(std::vector<std::int32_t>(o.batch, o.seq - 1));
  stream.synchronize();

  const auto append = [&](const Stream& s, int step) {
    if (o.inference) append_kv<T>(kv, k_new.data() + step * new_elems, v_new.data() + step * new_elems, 1, s);
  };
  const auto append_and_update = [&](const Stream& s, int step) {
    if (!o.inference) return;
    EKV_CUDA_CHECK(cudaMemcpyAsync(before.data(), view_lengths(kv), before.size_bytes(), cudaMemcpyDeviceToDevice,
                                   s.get()),
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
    elastic_steps.emplace_back(stream, [&, v](const Stream& s) {
      append_and_update(s, v);
      elastic.run(kv, cache.q.data(), anchors.data(), elastic_o.data(), elastic_lse.data(), s, v);
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
    set_lengths(o.seq);
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
  std::vector<T> exact_out(exact_o.size()), elastic_out(elastic_o.size());
  exact_o.copy_to(exact_out);
  elastic_o.copy_to(elastic_out);
  std::vector<T> reference_out;  // over quantized storage: exact decode over the dense values
  if constexpr (kQuantized) {
    const KVView<T> dense = cache.view();
    for (int s = 0; o.inference && s < steps; ++s) {
      append_kv<T>(dense, k_new.data() + s * new_elems, v_new.data() + s * new_elems, 1, stream);
    }
    const DecodePlan dense_plan = plan_decode(problem, device);
    DeviceBuffer<unsigned char> dense_workspace = make_decode_workspace(dense_plan, stream);
    DeviceBuffer<T> reference_o(exact_o.size());
    DeviceBuffer<float> reference_lse(exact_lse.size());
    run_decode<T>(dense_plan, dense, cache.q.data(), reference_o.data(), reference_lse.data(), dense_workspace.data(),
                  stream);
    stream.synchronize();
    reference_out.resize(reference_o.size());
    reference_o.copy_to(reference_out);
  }
  progress << "ekv-bench: computing the attention mass on the host (float64)\n";
  std::vector<T> host_k(cache.k.size()), host_v(cache.v.size());
  std::vector<std::int32_t> host_lengths(o.batch);
  const std::size_t rows = static_cast<std::size_t>(o.batch) * o.kv_head_count();
  std::vector<std::int32_t> attended(rows * elastic.max_attended()), counts(rows, 0);
  cache.k.copy_to(host_k);
  cache.v.copy_to(host_v);
  cache.lengths.copy_to(host_lengths);
  if (!elastic.attends_exactly()) {
    EKV_CUDA_CHECK(cudaMemcpy(attended.data(), elastic.attended(), attended.size() * sizeof(std::int32_t),
                              cudaMemcpyDeviceToHost), "ekv-bench: cannot read elastic's selection");
    EKV_CUDA_CHECK(cudaMemcpy(counts.data(), elastic.num_attended(), counts.size() * sizeof(std::int32_t),
                              cudaMemcpyDeviceToHost), "ekv-bench: cannot read elastic's selection");
  }
  const KVView<T> host = paged_kv<T>(host_k.data(), host_v.data(), cache.host.table.data(), host_lengths.data(),
                                     shape.batch, shape.kv_heads, shape.head_dim, shape.block_len,
                                     shape.blocks_per_seq);
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
  if constexpr (kQuantized) {
    const L2Error e = relative_l2_error(exact_out.data(), reference_out.data(), o.batch * o.q_heads(), shape.head_dim);
    r.accuracy.storage_error = e.pooled;
    r.accuracy.storage_error_worst = e.worst;
  }
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
}

}  // namespace detail

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
  // the decode loop's tokens: step s appends token s of each [batch][kv_heads][head_dim]
  const std::size_t new_elems = static_cast<std::size_t>(o.batch) * shape.kv_heads * shape.head_dim;
  const int new_tokens = o.inference ? o.decode_tokens : 1;
  DeviceBuffer<T> k_new(new_elems * new_tokens), v_new(new_elems * new_tokens);
  random_uniform_fill<T>(k_new.span(), -1.0f, 1.0f, seeds.k + 100, stream);
  random_uniform_fill<T>(v_new.span(), -1.0f, 1.0f, seeds.v + 100, stream);
  const KVStorage storage = o.kv_storage();
  if (!is_quantized(storage)) {
    const KVView<T> kv = cache.view();
    detail::run_gpu_variants<T>(o, device, stream, cache, kv, [&](int n) { cache.set_lengths(n); }, k_new, v_new, r,
                                progress);
    return r;
  }
  if constexpr (kDecodeOnTensorCores<T>) {
    progress << "ekv-bench: quantizing K and V to " << to_string(storage) << " on the GPU\n";
    DeviceQuantCache<T> quant(cache, storage, o.seq, stream);
    detail::run_gpu_variants<T>(o, device, stream, cache, quant.view(), [&](int n) { quant.set_lengths(n); }, k_new,
                                v_new, r, progress);
    const std::string dense = to_string(o.dtype);
    r.notes.push_back(std::string("K and V stored as ") + to_string(storage) +
                      (storage == KVStorage::kFp8E4M3 ? " (scale 1)" : "") + ", quantized on the GPU from " + dense +
                      " values by quantize_row_from (core/quant.hpp; the bytes append_kv and the CPU backend write); "
                      "exact (plan_quant_decode) and elastic (ElasticDecode over the QuantKVView) both read that "
                      "storage, elastic's anchors come from the stored keys, dequantized; the "
                      "attention mass and the needles are measured over the " + dense + " values, the storage error "
                      "against exact GPU decode over them");
    if (o.inference) {
      r.notes.push_back("decode loop over quantized storage: each step's append_kv quantizes its token and "
                        "update_anchors reads the stored keys");
    }
    return r;
  } else {
    throw Error(std::string("ekv-bench: --kv-dtype=") + to_string(storage) + " with --dtype=" + to_string(o.dtype) +
                " on the GPU: quantized decode runs on tensor cores; supported: fp16, bf16");
  }
}

// The GPU run for options.dtype. Throws ekv::Error for what the GPU kernels do not support.
inline BenchReport run_gpu_bench(const BenchOptions& o, std::ostream& progress) {
  return dispatch<kDecodeDTypes>("dtype", "decode", o.dtype,
                                 [&](auto type) { return run_gpu_bench<typename decltype(type)::type>(o, progress); });
}

}  // namespace ekv::bench
