// A short ekv-bench run on the GPU, single step and decode loop, graphs and direct
// launches, K and V in --dtype or quantized (--kv-dtype): its JSON carries every
// documented field, with the speedup and the accuracy filled. Whether elastic is faster
// is checked by hand on the H100 (README), never here: tests do not assert timings.

#include <doctest/doctest.h>

#include <cmath>
#include <sstream>
#include <utility>

#include "bench/bench_json_check.hpp"
#include "harness/gpu_bench_runner.cuh"

namespace {

// 79 blocks of 64, the last partial
ekv::bench::BenchOptions small_run() { return ekv::test::small_bench_options(ekv::bench::BenchBackend::kCuda, 5000, 32, 8, 128); }

ekv::bench::BenchReport run(const ekv::bench::BenchOptions& o) {
  std::ostringstream progress;
  return ekv::bench::run_gpu_bench(o, progress);
}

}  // namespace

TEST_CASE("one decode step on the GPU: speedup and accuracy filled") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.batch = 2;
  o.needles = 2;
  o.exact_fallback = false;  // at this shape (31 MB skipped, under the break-even) it would attend exactly
  const ekv::bench::BenchReport r = run(o);
  const nlohmann::json j = r;
  ekv::test::check_bench_json(j);
  CHECK(j.at("backend") == "cuda");
  CHECK(j.at("ceilings").at("peak_flops_per_s").get<double>() > 0);
  CHECK(r.elastic_blocks == 20);  // ceil(79 / 4)
  CHECK(r.accuracy.mass_sequences == 2);
}

TEST_CASE("a decode loop on the GPU, without graphs, reusing selections") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.inference = true;
  o.decode_tokens = 70;
  o.refresh = 4;
  o.graphs = false;
  o.dtype = ekv::DType::kBFloat16;
  o.roofs = false;  // the first case measures them
  const nlohmann::json j = run(o);
  ekv::test::check_bench_json(j);
  CHECK(j.at("configuration").at("graphs") == false);
}

TEST_CASE("compress 1 on the GPU reads every block: elastic matches exact") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.compress = 1.0;
  o.roofs = false;
  for (const ekv::test::DTypeBound& c : ekv::test::kCompressOneBounds) {
    const ekv::DType dtype = c.dtype;
    const double bound = c.bound;
    INFO("dtype " << ekv::to_string(dtype));
    o.dtype = dtype;
    const ekv::bench::BenchReport r = run(o);
    CHECK(r.accuracy.relative_l2_error < bound);
    CHECK(r.accuracy.attention_mass == doctest::Approx(1.0));
  }
}

// Both modes over each quantized storage, elastic selecting (--no-fallback: at this shape
// it would attend exactly): the report's storage error, bytes and accuracy as the CPU
// run's (cpu_bench_runner_test), graphs on.
TEST_CASE("quantized K and V on the GPU: exact and elastic read the storage, its cost against --dtype reported") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.needles = 2;
  o.roofs = false;
  o.exact_fallback = false;
  o.refresh = 4;
  // bounds on exact's error against fp16 exact over the dense values, pooled over the
  // heads: the CPU run's (cpu_bench_runner_test), the worst head within twice that
  const std::pair<ekv::KVStorage, double> storages[] = {
      {ekv::KVStorage::kFp8E4M3, 5e-2}, {ekv::KVStorage::kQ8_0, 1e-2}, {ekv::KVStorage::kQ4_0, 1.5e-1}};
  for (const auto& entry : storages) {
    const ekv::KVStorage storage = entry.first;  // not a structured binding: INFO captures it
    const double bound = entry.second;
    INFO("kv storage " << std::string(ekv::to_string(storage)));
    o.kv_dtype = storage;
    for (bool inference : {false, true}) {
      INFO("inference " << inference);
      o.inference = inference;
      o.decode_tokens = 70;  // crosses a block boundary
      const ekv::bench::BenchReport r = run(o);
      const nlohmann::json j = r;
      ekv::test::check_bench_json(j);
      CHECK(j.at("configuration").at("kv_dtype") == ekv::to_string(storage));
      CHECK(j.at("results").at("accuracy").at("storage_relative_l2_error").is_number());
      CHECK_FALSE(r.elastic_attends_exactly);
      CHECK(std::isfinite(r.accuracy.storage_error));
      CHECK(r.accuracy.storage_error > 0);
      CHECK(r.accuracy.storage_error <= r.accuracy.storage_error_worst);
      CHECK(r.accuracy.storage_error < bound);
      CHECK(r.accuracy.storage_error_worst < 2 * bound);
      CHECK(std::isfinite(r.accuracy.relative_l2_error));
      CHECK(r.accuracy.attention_mass > 0);
      CHECK(r.accuracy.attention_mass <= 1.0 + 1e-9);
      CHECK(r.accuracy.needle_recall() == 1.0);
      // per step, whole batch: K and V of every token at the step's length, codes and scales
      const double tokens = inference ? o.seq + (o.decode_tokens + 1) / 2.0 : o.seq;
      CHECK(r.exact.work.bytes ==
            doctest::Approx(2.0 * o.kv_head_count() * ekv::kv_row_bytes(storage, o.dim) * tokens * o.batch));
    }
  }
}

TEST_CASE("quantized K and V on the GPU with the exact fallback and bf16 queries") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.roofs = false;
  o.dtype = ekv::DType::kBFloat16;
  o.kv_dtype = ekv::KVStorage::kQ8_0;
  const ekv::bench::BenchReport r = run(o);
  const nlohmann::json j = r;
  ekv::test::check_bench_json(j);
  CHECK(j.at("configuration").at("kv_dtype") == "q8_0");
  CHECK(r.elastic_attends_exactly);  // 8 MB skipped per step: under kElasticBreakEvenBytes
  CHECK(r.accuracy.storage_error > 0);
  CHECK(r.accuracy.storage_error < 2e-2);  // bfloat16's own rounding above Q8_0's
  // the fallback is exact decode over the same storage: exact's output within bfloat16's tolerance
  CHECK(r.accuracy.relative_l2_error < 1e-2);
  CHECK(r.elastic.work.bytes == r.exact.work.bytes);
}
