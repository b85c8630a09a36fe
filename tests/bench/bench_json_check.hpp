#pragma once
// The fields every ekv-bench JSON document carries (README.md, section ekv-bench), checked
// with doctest, and the options of a small run: shared by the CPU and GPU runs' tests and
// the schema test.

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "harness/bench_report.hpp"
#include "test_seed.hpp"

namespace ekv::test {

// Elastic at compress 1 reads every block: its output against exact's, both in the
// dtype, within the dtype's decode tolerance (float 1e-5, half 2e-3, bfloat16 1e-2).
struct DTypeBound {
  DType dtype;
  double bound;
};
inline constexpr DTypeBound kCompressOneBounds[] = {
    {DType::kFloat32, 1e-5}, {DType::kFloat16, 2e-3}, {DType::kBFloat16, 1e-2}};

// A run small enough for a test: a few samples, a fresh seed (put it in an INFO).
inline bench::BenchOptions small_bench_options(bench::BenchBackend backend, int seq, int heads, int kv_heads, int dim) {
  bench::BenchOptions o;
  o.seq = seq;
  o.heads = heads;
  o.kv_heads = kv_heads;
  o.dim = dim;
  o.reps = 5;
  o.warmup = 1;
  o.device = backend;
  o.seed = seed();
  return o;
}

inline void check_positive_number(const nlohmann::json& j, const std::string& key) {
  INFO(key);
  REQUIRE(j.contains(key));
  REQUIRE(j.at(key).is_number());
  CHECK(std::isfinite(j.at(key).get<double>()));
  CHECK(j.at(key).get<double>() > 0.0);
}

inline void check_bench_json(const nlohmann::json& j) {
  CHECK(j.at("schema_version") == bench::kBenchSchemaVersion);
  CHECK(j.at("tool") == "ekv-bench");
  CHECK((j.at("backend") == "cuda" || j.at("backend") == "cpu"));
  CHECK(j.at("device").is_object());
  CHECK(j.at("device").at("name").is_string());
  for (const char* key : {"mode", "seq", "batch", "heads", "kv_heads", "dim", "dtype", "kv_dtype", "block_len",
                          "compress", "budget_blocks", "anchor", "refresh", "reps", "warmup", "inner_loops",
                          "truncate_percent", "graphs", "decode_tokens", "paired_baseline", "needles", "seed", "device", "threads",
                          "roofs", "exact_fallback"}) {
    CHECK_MESSAGE(j.at("configuration").contains(key), key);
  }
  for (const char* key : {"ekv_version", "git_commit", "compiler", "cuda_toolkit", "cuda_runtime"}) {
    CHECK_MESSAGE(j.at("build").contains(key), key);
  }
  // the compiler by name and version, the CPU by its model name
  const std::string compiler = j.at("build").at("compiler").get<std::string>();
  CHECK((compiler.rfind("GCC ", 0) == 0 || compiler.rfind("Clang ", 0) == 0 || compiler.rfind("nvcc ", 0) == 0));
  if (j.at("backend") == "cpu") CHECK(j.at("device").at("name") != "host CPU");
  const nlohmann::json& c = j.at("ceilings");
  const bool roofs = j.at("configuration").at("roofs").get<bool>();
  if (roofs) {
    check_positive_number(c, "read_bytes_per_s");
    check_positive_number(c, "copy_bytes_per_s");
  } else {
    CHECK(c.at("read_bytes_per_s").is_null());
    CHECK(c.at("copy_bytes_per_s").is_null());
  }
  CHECK((c.at("peak_flops_per_s").is_null() || c.at("peak_flops_per_s").get<double>() > 0));
  CHECK(c.at("peak_flops_source").is_string());
  const nlohmann::json& r = j.at("results");
  for (const char* variant : {"exact", "elastic"}) {
    INFO(variant);
    const nlohmann::json& v = r.at(variant);
    for (const char* key : {"mean", "median", "p5", "p95", "trimmed_mean"}) {
      check_positive_number(v.at("step_seconds"), key);
    }
    {  // a few samples of a small step can all read the same (CUDA events tick in 0.5 us)
      INFO("stddev");
      const nlohmann::json& sd = v.at("step_seconds").at("stddev");
      REQUIRE(sd.is_number());
      CHECK(std::isfinite(sd.get<double>()));
      CHECK(sd.get<double>() >= 0.0);
    }
    CHECK(v.at("step_seconds").at("cv").is_number());
    for (const char* key : {"attention_steps_per_s", "bytes_per_step", "flops_per_step", "bytes_per_s"}) {
      check_positive_number(v, key);
    }
    if (!roofs) {  // --no-roofs: no fractions of an unmeasured roof
      CHECK(v.at("efficiency").is_null());
      CHECK(v.at("roofline").is_null());
      continue;
    }
    check_positive_number(v.at("efficiency"), "of_read_bandwidth");
    check_positive_number(v.at("efficiency"), "of_copy_bandwidth");
    for (const char* key : {"arithmetic_intensity", "attainable_flops_per_s", "achieved_flops_per_s", "of_attainable"}) {
      check_positive_number(v.at("roofline"), key);
    }
    CHECK((v.at("roofline").at("bound") == "memory" || v.at("roofline").at("bound") == "compute"));
  }
  check_positive_number(r, "speedup");
  check_positive_number(r, "bytes_ratio");
  check_positive_number(r, "blocks_per_sequence");
  check_positive_number(r, "elastic_blocks");
  REQUIRE(r.at("elastic_attends_exactly").is_boolean());
  if (r.at("elastic_attends_exactly").get<bool>()) {  // the fallback reads what exact reads
    CHECK(r.at("elastic_blocks") == r.at("blocks_per_sequence"));
    CHECK(r.at("bytes_ratio").get<double>() == doctest::Approx(1.0));
  }
  const nlohmann::json& a = r.at("accuracy");
  for (const char* key : {"relative_l2_error", "relative_l2_error_worst", "attention_mass_captured",
                          "attention_mass_captured_min"}) {
    INFO(key);
    REQUIRE(a.at(key).is_number());
    CHECK(std::isfinite(a.at(key).get<double>()));
    CHECK(a.at(key).get<double>() >= 0.0);
  }
  CHECK(a.at("attention_mass_captured").get<double>() <= 1.0 + 1e-9);
  CHECK(a.at("mass_sequences").get<int>() >= 1);
  // the storage's cost: numbers where K and V are quantized, null where they are --dtype
  const bool quantized = is_quantized(parse_kv_storage(j.at("configuration").at("kv_dtype").get<std::string>()));
  for (const char* key : {"storage_relative_l2_error", "storage_relative_l2_error_worst"}) {
    INFO(key);
    CHECK(a.at(key).is_number() == quantized);
    CHECK(a.at(key).is_null() == !quantized);
  }
  const int planted = a.at("needle_blocks").get<int>(), read = a.at("needle_blocks_read").get<int>();
  CHECK(read >= 0);
  CHECK(read <= planted);
  if (planted > 0) {
    CHECK(a.at("needle_recall").get<double>() == doctest::Approx(static_cast<double>(read) / planted));
  } else {
    CHECK(a.at("needle_recall").is_null());
  }
  CHECK(j.at("notes").is_array());
  CHECK(nlohmann::json::parse(j.dump()) == j);  // one valid document
}

}  // namespace ekv::test
