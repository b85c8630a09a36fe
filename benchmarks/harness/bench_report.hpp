#pragma once
// BenchReport: what one ekv-bench run measured (exact and elastic decode on the same cache,
// the device's roofs measured in the same run, the accuracy of elastic against exact) and
// its JSON form, whose layout README.md documents under kBenchSchemaVersion.

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <utility>
#include <string>
#include <vector>

#include "harness/bench_options.hpp"
#include "harness/bench_work.hpp"
#include "harness/json.hpp"
#include "harness/paired_samples.hpp"
#include "harness/roofline.hpp"
#include "harness/statistics.hpp"

namespace ekv::bench {

// Bump on any change a reader of the JSON must know of: a renamed, moved or removed
// field, or a changed unit. Added fields keep the version.
// 2: attention_steps_per_s (was tokens_per_s), null efficiency and roofline without roofs
// (--no-roofs), needles the count planted, blocks_per_sequence at the final length.
inline constexpr int kBenchSchemaVersion = 2;

// The roofs of the device that ran, measured in the same run.
struct BenchCeilings {
  double read_bytes_per_s = 0;  // read-only streaming: decode attention's physical ceiling
  std::string read_kernel;      // the read kernel that reached it (the best of read_kernels)
  std::vector<std::pair<std::string, double>> read_kernels;  // every read kernel measured, bytes per second
  double theoretical_read_bytes_per_s = 0;  // DRAM clock x bus width (the vendor's figure); 0: not reported
  double copy_bytes_per_s = 0;  // read + write bytes of a large copy, the number users know
  double peak_flops_per_s = 0;  // 0: none measured
  std::string peak_flops_source;  // what peak_flops_per_s is, or why there is none
};

struct VariantResult {
  Stats step_s;   // seconds per decode step
  StepWork work;  // per step, whole batch
};

// Derived figures of a variant, all from its median step time.
struct VariantMetrics {
  double steps_per_s = 0;  // one layer's attention steps per second x batch (sequences' steps)
  double bytes_per_s = 0;
  double of_read = 0;  // fraction of the measured read bandwidth
  double of_copy = 0;  // fraction of the measured copy bandwidth
  RooflinePoint roofline;
};

inline bool has_roofs(const BenchCeilings& c) { return c.read_bytes_per_s > 0 && c.copy_bytes_per_s > 0; }

inline VariantMetrics variant_metrics(const VariantResult& v, const BenchCeilings& c, int batch) {
  VariantMetrics m;
  const double s = v.step_s.median;
  m.steps_per_s = batch / s;
  m.bytes_per_s = v.work.bytes / s;
  if (!has_roofs(c)) return m;  // --no-roofs: no fraction of anything
  m.of_read = m.bytes_per_s / c.read_bytes_per_s;
  m.of_copy = m.bytes_per_s / c.copy_bytes_per_s;
  m.roofline = place_on_roofline(v.work.flops, v.work.bytes, s, c.read_bytes_per_s, c.peak_flops_per_s);
  return m;
}

// Elastic's output against exact's on the same inputs (elastic/accuracy.hpp).
struct BenchAccuracy {
  double relative_l2_error = 0;        // pooled over every query head of the batch
  double relative_l2_error_worst = 0;  // the worst query head
  double attention_mass = 0;           // exact softmax weight of the tokens elastic read, mean over query heads
  double attention_mass_min = 0;
  int mass_sequences = 0;  // the sequences the mass was computed over (the first ones)
  int needle_blocks = 0;       // planted (--needles), over every sequence and kv head
  int needle_blocks_read = 0;  // of them, read by elastic's last step
  // with --kv-dtype quantizing: exact attention over the stored K and V against exact
  // attention over --dtype's values (the storage's accuracy cost); NaN (null) otherwise
  double storage_error = std::numeric_limits<double>::quiet_NaN();
  double storage_error_worst = std::numeric_limits<double>::quiet_NaN();
  // the fraction of needle blocks elastic read; NaN (null in the JSON) without needles
  double needle_recall() const {
    return needle_blocks > 0 ? static_cast<double>(needle_blocks_read) / needle_blocks
                             : std::numeric_limits<double>::quiet_NaN();
  }
};

struct BenchReport {
  BenchBackend backend = BenchBackend::kCuda;  // what ran: cuda or cpu
  nlohmann::json device;
  BenchOptions options;
  BenchCeilings ceilings;
  VariantResult exact, elastic;
  int blocks_per_sequence = 0;  // at the final length (--seq, plus --decode_tokens with --inference)
  int elastic_blocks = 0;       // of them elastic reads per kv head on a refreshing step
  bool elastic_attends_exactly = false;  // the elastic step fell back to exact (ElasticDecode::attends_exactly)
  BenchAccuracy accuracy;
  std::vector<std::string> notes;

  double speedup() const { return exact.step_s.median / elastic.step_s.median; }
};

// Fills both variants' per-step times (a sample holds `steps` steps; trimmed per
// --truncate), their work (bench_work) and the block counts at the final length.
inline void record_timing(BenchReport& r, const PairedSamples& samples, int steps, std::size_t anchor_value_bytes) {
  const BenchOptions& o = r.options;
  const auto per_step = [&](std::vector<double> seconds) {
    for (double& s : seconds) s /= steps;
    return summarize(std::move(seconds), o.truncate / 100.0);
  };
  r.exact.step_s = per_step(samples.a);
  r.elastic.step_s = per_step(samples.b);
  const ElasticPolicy policy = o.elastic_policy();
  const BenchWork work = bench_work(o, policy, anchor_value_bytes);
  r.exact.work = work.exact;
  r.elastic.work = work.elastic;
  r.blocks_per_sequence = sequence_blocks(o.inference ? o.seq + o.decode_tokens : o.seq, o.block_len);
  r.elastic_blocks = policy.counts(r.blocks_per_sequence).total();
}

// A figure that may be missing (NaN): the number, or null.
inline nlohmann::json number_or_null(double x) { return std::isnan(x) ? nlohmann::json(nullptr) : nlohmann::json(x); }

inline void to_json(nlohmann::json& j, const BenchOptions& o) {
  j = nlohmann::json{{"mode", o.inference ? "inference" : "step"},
                     {"seq", o.seq},
                     {"batch", o.batch},
                     {"heads", o.q_heads()},
                     {"kv_heads", o.kv_head_count()},
                     {"dim", o.dim},
                     {"dtype", to_string(o.dtype)},
                     {"kv_dtype", to_string(o.kv_storage())},
                     {"block_len", o.block_len},
                     {"compress", o.budget_blocks > 0 ? nlohmann::json(nullptr) : nlohmann::json(o.compress)},
                     {"budget_blocks", o.budget_blocks > 0 ? nlohmann::json(o.budget_blocks) : nlohmann::json(nullptr)},
                     {"anchor", to_string(o.anchor)},
                     {"refresh", o.refresh},
                     {"exact_fallback", o.exact_fallback},
                     {"reps", o.reps},
                     {"warmup", o.warmup},
                     {"inner_loops", o.inner_loops},
                     {"truncate_percent", o.truncate},
                     {"graphs", o.graphs},
                     {"decode_tokens", o.inference ? nlohmann::json(o.decode_tokens) : nlohmann::json(nullptr)},
                     {"paired_baseline", o.paired_baseline},
                     {"needles", o.needle_blocks()},
                     {"threads", o.threads > 0 ? nlohmann::json(o.threads) : nlohmann::json(nullptr)},
                     {"roofs", o.roofs},
                     {"seed", o.seed},
                     {"device", to_string(o.device)}};
}

inline nlohmann::json variant_json(const VariantResult& v, const BenchCeilings& c, int batch) {
  const VariantMetrics m = variant_metrics(v, c, batch);
  nlohmann::json j{{"step_seconds", v.step_s},
                   {"attention_steps_per_s", m.steps_per_s},
                   {"bytes_per_step", v.work.bytes},
                   {"flops_per_step", v.work.flops},
                   {"bytes_per_s", m.bytes_per_s},
                   {"efficiency", nullptr},
                   {"roofline", nullptr}};
  if (has_roofs(c)) {
    j["efficiency"] = {{"of_read_bandwidth", m.of_read}, {"of_copy_bandwidth", m.of_copy}};
    j["roofline"] = {{"arithmetic_intensity", m.roofline.arithmetic_intensity},
                     {"attainable_flops_per_s", m.roofline.attainable_flops_per_s},
                     {"achieved_flops_per_s", m.roofline.achieved_flops_per_s},
                     {"of_attainable", m.roofline.achieved_flops_per_s / m.roofline.attainable_flops_per_s},
                     {"bound", m.roofline.memory_bound ? "memory" : "compute"}};
  }
  return j;
}

inline nlohmann::json read_kernels_json(const BenchCeilings& c) {
  nlohmann::json kernels = nlohmann::json::array();
  for (const auto& [name, rate] : c.read_kernels) kernels.push_back({{"name", name}, {"bytes_per_s", rate}});
  return kernels;
}

inline void to_json(nlohmann::json& j, const BenchReport& r) {
  const auto peak = r.ceilings.peak_flops_per_s > 0 ? nlohmann::json(r.ceilings.peak_flops_per_s) : nlohmann::json();
  j = nlohmann::json{
      {"schema_version", kBenchSchemaVersion},
      {"tool", "ekv-bench"},
      {"backend", to_string(r.backend)},
      {"device", r.device},
      {"configuration", r.options},
      {"build", build_json()},
      {"ceilings",
       {{"read_bytes_per_s", has_roofs(r.ceilings) ? nlohmann::json(r.ceilings.read_bytes_per_s) : nlohmann::json()},
        {"copy_bytes_per_s", has_roofs(r.ceilings) ? nlohmann::json(r.ceilings.copy_bytes_per_s) : nlohmann::json()},
        {"read_kernel", r.ceilings.read_kernel.empty() ? nlohmann::json() : nlohmann::json(r.ceilings.read_kernel)},
        {"read_kernels", read_kernels_json(r.ceilings)},
        {"theoretical_read_bytes_per_s", r.ceilings.theoretical_read_bytes_per_s > 0
                                             ? nlohmann::json(r.ceilings.theoretical_read_bytes_per_s)
                                             : nlohmann::json()},
        {"peak_flops_per_s", peak},
        {"peak_flops_source", r.ceilings.peak_flops_source}}},
      {"results",
       {{"exact", variant_json(r.exact, r.ceilings, r.options.batch)},
        {"elastic", variant_json(r.elastic, r.ceilings, r.options.batch)},
        {"speedup", r.speedup()},
        {"bytes_ratio", r.exact.work.bytes / r.elastic.work.bytes},
        {"blocks_per_sequence", r.blocks_per_sequence},
        {"elastic_blocks", r.elastic_blocks},
        {"elastic_attends_exactly", r.elastic_attends_exactly},
        {"accuracy",
         {{"relative_l2_error", r.accuracy.relative_l2_error},
          {"relative_l2_error_worst", r.accuracy.relative_l2_error_worst},
          {"storage_relative_l2_error", number_or_null(r.accuracy.storage_error)},
          {"storage_relative_l2_error_worst", number_or_null(r.accuracy.storage_error_worst)},
          {"attention_mass_captured", r.accuracy.attention_mass},
          {"attention_mass_captured_min", r.accuracy.attention_mass_min},
          {"mass_sequences", r.accuracy.mass_sequences},
          {"needle_blocks", r.accuracy.needle_blocks},
          {"needle_blocks_read", r.accuracy.needle_blocks_read},
          {"needle_recall", r.accuracy.needle_blocks > 0 ? nlohmann::json(r.accuracy.needle_recall())
                                                         : nlohmann::json(nullptr)}}}}},
      {"notes", r.notes}};
}

}  // namespace ekv::bench
