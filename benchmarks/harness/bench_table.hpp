#pragma once
// The human form of a BenchReport: a few lines and one aligned table, for a terminal.

#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>

#include "harness/bench_report.hpp"

namespace ekv::bench {
namespace detail {

template <typename... Args>
std::string format(const char* pattern, Args... args) {
  char line[512];
  std::snprintf(line, sizeof(line), pattern, args...);
  return line;
}

}  // namespace detail

inline void print_bench_table(std::ostream& os, const BenchReport& r) {
  const BenchOptions& o = r.options;
  const BenchCeilings& c = r.ceilings;
  os << "ekv-bench on " << to_string(r.backend) << ": " << r.device.value("name", std::string("unknown")) << "\n";
  if (has_roofs(c)) {
    os << detail::format("measured roofs: read %.1f GB/s, copy %.1f GB/s", c.read_bytes_per_s / 1e9,
                         c.copy_bytes_per_s / 1e9);
    if (!c.read_kernels.empty()) {
      os << detail::format(" (read: best of %d read kernels, %s", static_cast<int>(c.read_kernels.size()),
                           c.read_kernel.c_str())
         << (c.theoretical_read_bytes_per_s > 0
                 ? detail::format("; DRAM theoretical %.1f GB/s)", c.theoretical_read_bytes_per_s / 1e9)
                 : std::string(")"));
    }
    os << (c.peak_flops_per_s > 0 ? detail::format(", %.2f TFLOP/s (%s)", c.peak_flops_per_s / 1e12,
                                                   c.peak_flops_source.c_str())
                                  : ", no compute roof measured")
       << "\n";
  } else {
    os << "no roofs measured (--no-roofs): no fractions of bandwidth\n";
  }
  const int needles = o.needle_blocks();
  os << (needles > 0
             ? detail::format("data: random K and V, and in every sequence and kv head %d needle block(s) whose keys "
                              "point along the queries: the error and the mass say how much of the attention elastic "
                              "found (--needles=0: purely random)\n",
                              needles)
             : std::string("data: purely random K and V (--needles=0): attention is spread evenly, so any 1/C of the "
                           "blocks holds about 1/C of it and the accuracy figures say little about selection\n"));
  const std::string budget = o.budget_blocks > 0 ? detail::format("budget %d blocks", o.budget_blocks)
                                                 : detail::format("compress %g", o.compress);
  const std::string kv = is_quantized(o.kv_storage()) ? std::string(", K and V ") + to_string(o.kv_storage()) : "";
  os << detail::format("batch %d x %d tokens, heads %d/%d, dim %d, %s%s, block %d, %s, %s anchors, refresh %d",
                       o.batch, o.seq, o.q_heads(), o.kv_head_count(), o.dim, to_string(o.dtype), kv.c_str(),
                       o.block_len, budget.c_str(), to_string(o.anchor), o.refresh)
     << "\n";
  os << (o.inference ? detail::format("decode loop of %d steps per sample", o.decode_tokens)
                     : detail::format("%d step(s) per sample", o.inner_loops))
     << detail::format(", %d samples, times per step\n\n", o.reps);
  // steps/s: one layer's attention steps per second, all sequences (not a model's tokens)
  os << detail::format("%-8s %10s %10s %10s %10s %6s %12s %9s %7s %7s %6s %8s\n", "variant", "median us", "mean us",
                       "p5 us", "p95 us", "cv", "steps/s", "GB/s", "of read", "of copy", "AI", "of roof");
  for (const auto& [name, v] : {std::pair<const char*, const VariantResult&>{"exact", r.exact}, {"elastic", r.elastic}}) {
    const VariantMetrics m = variant_metrics(v, c, o.batch);
    os << detail::format("%-8s %10.2f %10.2f %10.2f %10.2f %6.3f %12.0f %9.1f ", name, v.step_s.median * 1e6,
                         v.step_s.mean * 1e6, v.step_s.p5 * 1e6, v.step_s.p95 * 1e6, v.step_s.cv, m.steps_per_s,
                         m.bytes_per_s / 1e9)
       << (has_roofs(c) ? detail::format("%7.3f %7.3f %6.2f %8.3f\n", m.of_read, m.of_copy,
                                         m.roofline.arithmetic_intensity,
                                         m.roofline.achieved_flops_per_s / m.roofline.attainable_flops_per_s)
                        : detail::format("%7s %7s %6s %8s\n", "-", "-", "-", "-"));
  }
  const double ratio = r.exact.work.bytes / r.elastic.work.bytes;
  os << "\n"
     << detail::format("speedup %.2fx, elastic reads %.2fx %s bytes (%d of %d blocks per kv head%s)\n", r.speedup(),
                       ratio >= 1 ? ratio : 1 / ratio, ratio >= 1 ? "fewer" : "more", r.elastic_blocks,
                       r.blocks_per_sequence, o.inference ? ", at the loop's final length" : "");
  os << detail::format("accuracy: relative L2 error %.4f (worst head %.4f), attention mass captured %.4f (min %.4f, "
                       "%d sequence(s))\n",
                       r.accuracy.relative_l2_error, r.accuracy.relative_l2_error_worst, r.accuracy.attention_mass,
                       r.accuracy.attention_mass_min, r.accuracy.mass_sequences);
  if (!std::isnan(r.accuracy.storage_error)) {
    os << detail::format("storage: exact attention over %s K and V against %s: relative L2 error %.4f (worst head "
                         "%.4f)\n",
                         to_string(o.kv_storage()), to_string(o.dtype), r.accuracy.storage_error,
                         r.accuracy.storage_error_worst);
  }
  if (r.elastic_attends_exactly) {
    os << "elastic attends exactly here: its budget cannot pay for selection at this shape "
          "(ElasticProblem::attends_exactly; --no-fallback selects anyway)\n";
  }
  if (r.accuracy.needle_blocks > 0) {
    os << detail::format("needle recall %.2f: elastic read %d of the %d needle blocks\n", r.accuracy.needle_recall(),
                         r.accuracy.needle_blocks_read, r.accuracy.needle_blocks);
  }
  for (const std::string& note : r.notes) os << "note: " << note << "\n";
}

}  // namespace ekv::bench
