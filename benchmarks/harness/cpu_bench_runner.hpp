#pragma once
// ekv-bench on the CPU backend: exact attention (cpu_decode) against elastic attention
// (CpuElasticDecode) on the same host-resident paged cache, in --dtype or quantized
// (--kv-dtype), paired samples timed with std::chrono::steady_clock, against the host's
// read and copy bandwidth measured first.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/cpu_elastic.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "harness/bench_accuracy.hpp"
#include "harness/bench_inputs.hpp"
#include "harness/bench_options.hpp"
#include "harness/bench_report.hpp"
#include "harness/cpu_bandwidth.hpp"
#include "harness/paired_samples.hpp"
#include "harness/random.hpp"

namespace ekv::bench {

namespace detail {

// The timed part of run_cpu_bench over `view` (KVView<T>, or a QuantKVView holding
// dense's values quantized), whose lengths are `lengths`: exact (cpu_decode) and elastic
// (CpuElasticDecode) paired samples, then their outputs on the same inputs and the
// accuracy figures. `dense` holds the values in T (the same view when not quantized);
// over quantized storage it gets the decode loop's appends after the timing, and exact
// attention over it is the reference of the storage's cost.
template <typename T, typename View>
void run_cpu_variants(const BenchOptions& o, CPUInfer& pool, const View& view, std::vector<std::int32_t>& lengths,
                      const KVView<T>& dense, const BenchShape& shape, const BenchInputs<T>& in,
                      const NeedleBlocks& needles, BenchReport& r, std::ostream& progress) {
  constexpr bool kQuantized = std::is_same_v<View, QuantKVView>;
  const BenchSeeds seeds(o.seed);
  CpuElasticDecode<T, View> elastic(view, o.q_heads(), o.elastic_policy());
  elastic.build_anchors(pool, view);
  std::vector<T> exact_o(shape.q_elems()), elastic_o(shape.q_elems());
  std::vector<float> exact_lse(static_cast<std::size_t>(o.batch) * o.q_heads()), elastic_lse(exact_lse.size());
  // the decode loop appends a fresh token per sequence and step: step s appends token s
  const std::size_t new_elems = static_cast<std::size_t>(o.batch) * shape.kv_heads * shape.head_dim;
  const std::size_t new_tokens = o.inference ? o.decode_tokens : 1;
  const std::vector<T> k_new = random_uniform<T>(new_elems * new_tokens, -1.0f, 1.0f, seeds.k + 100);
  const std::vector<T> v_new = random_uniform<T>(new_elems * new_tokens, -1.0f, 1.0f, seeds.v + 100);

  const int steps = o.inference ? o.decode_tokens : o.inner_loops;
  const auto timed = [](auto&& work) {
    const auto start = std::chrono::steady_clock::now();
    work();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const auto exact_sample = [&] {
    return timed([&] {
      for (int s = 0; s < steps; ++s) {
        if (o.inference) cpu_append_kv<T>(view, k_new.data() + s * new_elems, v_new.data() + s * new_elems, 1);
        cpu_decode<T>(pool, view, in.q.data(), o.q_heads(), exact_o.data(), exact_lse.data());
      }
    });
  };
  const auto elastic_sample = [&] {
    return timed([&] {
      for (int s = 0; s < steps; ++s) {
        if (o.inference) {
          const std::vector<int> before(lengths.begin(), lengths.end());
          cpu_append_kv<T>(view, k_new.data() + s * new_elems, v_new.data() + s * new_elems, 1);
          elastic.update_anchors(pool, view, before);
        }
        elastic.run(pool, view, in.q.data(), elastic_o.data(), elastic_lse.data(), s);
      }
    });
  };
  // the decode loop starts each sample from --seq tokens, the last block's anchors as then
  const auto reset = [&] {
    if (!o.inference) return;
    lengths.assign(o.batch, o.seq);
    elastic.update_anchors(pool, view, std::vector<int>(o.batch, o.seq - 1));
  };
  progress << "ekv-bench: timing " << o.reps << " paired samples of " << steps << " step(s) on the CPU\n";
  record_timing(r, paired_samples(o.warmup, o.reps, o.paired_baseline, exact_sample, elastic_sample, reset), steps,
                sizeof(double));

  // both from the same inputs: the last samples' outputs, after the same appends
  reset();
  exact_sample();
  reset();
  elastic_sample();
  if constexpr (kQuantized) {
    for (int s = 0; o.inference && s < steps; ++s) {
      cpu_append_kv<T>(dense, k_new.data() + s * new_elems, v_new.data() + s * new_elems, 1);
    }
  }
  progress << "ekv-bench: computing the attention mass on the host (float64)\n";
  r.accuracy = bench_accuracy(dense, in.q.data(), o.q_heads(), exact_o.data(), elastic_o.data(),
                              [&](int seq, int head) { return elastic.attended(seq, head); }, needles);
  if constexpr (kQuantized) {
    std::vector<T> reference_o(exact_o.size());
    std::vector<float> reference_lse(exact_lse.size());
    cpu_decode<T>(pool, dense, in.q.data(), o.q_heads(), reference_o.data(), reference_lse.data());
    const L2Error e = relative_l2_error(exact_o.data(), reference_o.data(), o.batch * o.q_heads(), shape.head_dim);
    r.accuracy.storage_error = e.pooled;
    r.accuracy.storage_error_worst = e.worst;
  }
  r.notes.push_back("CPU elastic: anchors and selection on the host with ekv's float64 references "
                    "(elastic/reference_anchors.hpp, reference_select.hpp), not a tuned CPU selection path; "
                    "attention with cpu_decode over a block-sparse view");
  r.notes.push_back("CPU timing: std::chrono::steady_clock around each sample; caches are not flushed between samples");
}

}  // namespace detail

template <typename T>
BenchReport run_cpu_bench(const BenchOptions& o, CPUInfer& pool, std::ostream& progress) {
  BenchReport r;
  r.backend = BenchBackend::kCpu;
  r.options = o;
  r.device = {{"name", host_cpu_name()}, {"threads", pool.num_threads()}};
  if (o.roofs) {
    progress << "ekv-bench: measuring the host's read and copy bandwidth on " << pool.num_threads() << " threads\n";
    // 256 MiB: far past a last-level cache of up to 64 MiB, and a quarter of a second on two cores
    r.ceilings.read_bytes_per_s = measure_host_read_bandwidth(pool, std::size_t{256} << 20, 5);
    r.ceilings.copy_bytes_per_s = measure_host_copy_bandwidth(pool, std::size_t{256} << 20, 5);
    r.ceilings.peak_flops_source = "no CPU flop rate is measured: the attainable rate is the bandwidth roof alone";
  } else {
    r.ceilings.peak_flops_source = "--no-roofs: nothing measured";
  }
  if (const std::size_t llc = host_last_level_cache_bytes(); llc > 0 && o.kv_bytes() < 2.0 * llc) {
    r.notes.push_back("the K and V bytes (" + std::to_string(static_cast<long long>(o.kv_bytes())) +
                      ") fit in about twice the last-level cache (" + std::to_string(llc) +
                      " bytes): steps may read from cache, so fractions of the DRAM read bandwidth can pass 1");
  }

  const BenchShape shape = bench_shape(o);
  const BenchSeeds seeds(o.seed);
  const BenchInputs<T> in = make_bench_inputs<T>(shape, seeds);
  std::vector<T> k = random_uniform<T>(shape.pool_elems(), -1.0f, 1.0f, seeds.k);
  std::vector<T> v = random_uniform<T>(shape.pool_elems(), -1.0f, 1.0f, seeds.v);
  const NeedleBlocks needles = plant_needles(shape, in, sequence_blocks(o.seq, o.block_len), o.needle_blocks(),
                                            seeds.needles,
                [&](std::int32_t physical, int head, const std::vector<T>& rows) {
                  std::copy(rows.begin(), rows.end(),
                            k.begin() + physical * shape.block_elems() +
                                static_cast<std::size_t>(head) * shape.block_len * shape.head_dim);
                });
  std::vector<std::int32_t> lengths(o.batch, o.seq);
  const KVView<T> kv = paged_kv<T>(k.data(), v.data(), in.table.data(), lengths.data(), shape.batch, shape.kv_heads,
                                   shape.head_dim, shape.block_len, shape.blocks_per_seq);
  const KVStorage storage = o.kv_storage();
  if (!is_quantized(storage)) {
    detail::run_cpu_variants<T>(o, pool, kv, lengths, kv, shape, in, needles, r, progress);
    return r;
  }
  // K and V quantized from the values above (needles included), row by row, as
  // cpu_append_kv would store them; those values stay, with their own lengths, for the
  // reference and the attention mass
  const int d = shape.head_dim;
  const std::size_t rows = shape.pool_elems() / d, code_bytes = kv_code_bytes(storage, d);
  const std::size_t groups = kv_scale_bytes(storage, d) / sizeof(__half);
  std::vector<std::uint8_t> k_codes(rows * code_bytes), v_codes(rows * code_bytes);
  std::vector<__half> k_scales(std::max<std::size_t>(1, rows * groups)), v_scales(k_scales.size());
  pool.parallel_for(0, static_cast<std::int64_t>(rows), [&](std::int64_t row) {
    quantize_row_from<T>(storage, k.data() + row * d, d, k_codes.data() + row * code_bytes,
                         groups > 0 ? k_scales.data() + row * groups : nullptr);
    quantize_row_from<T>(storage, v.data() + row * d, d, v_codes.data() + row * code_bytes,
                         groups > 0 ? v_scales.data() + row * groups : nullptr);
  });
  std::vector<std::int32_t> quant_lengths(lengths);
  const QuantKVView quant =
      paged_quant_kv(storage, {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()}, in.table.data(),
                     quant_lengths.data(), shape.batch, shape.kv_heads, d, shape.block_len, shape.blocks_per_seq);
  detail::run_cpu_variants<T>(o, pool, quant, quant_lengths, kv, shape, in, needles, r, progress);
  const std::string dense = to_string(o.dtype);
  r.notes.push_back(std::string("K and V stored as ") + to_string(storage) + ", quantized on the host from " + dense +
                    " values (core/quant.hpp); exact and elastic both read that storage, elastic's anchors come from "
                    "the dequantized keys; the attention mass and the needles are measured over the " + dense +
                    " values");
  return r;
}

// The CPU run for options.dtype. Throws ekv::Error for what the CPU backend does not support.
inline BenchReport run_cpu_bench(const BenchOptions& o, CPUInfer& pool, std::ostream& progress) {
  return dispatch<kCpuDecodeDTypes>("dtype", "cpu decode", o.dtype,
                                    [&](auto type) { return run_cpu_bench<typename decltype(type)::type>(o, pool, progress); });
}

}  // namespace ekv::bench
