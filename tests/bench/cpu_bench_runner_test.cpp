// A short ekv-bench run on the CPU backend, single step and decode loop: its JSON carries
// every documented field, filled. Tiny shapes and few samples; no timing is asserted.

#include <doctest/doctest.h>

#include <sstream>

#include "bench/bench_json_check.hpp"
#include "harness/cpu_bench_runner.hpp"

namespace {

// 16 blocks of 64, the last partial
ekv::bench::BenchOptions small_run() { return ekv::test::small_bench_options(ekv::bench::BenchBackend::kCpu, 1000, 4, 2, 64); }

ekv::bench::BenchReport run(const ekv::bench::BenchOptions& o) {
  ekv::CPUInfer pool(2);
  std::ostringstream progress;
  ekv::bench::BenchReport r = ekv::bench::run_cpu_bench(o, pool, progress);
  CHECK(progress.str().find("ekv-bench: ") == 0);
  return r;
}

}  // namespace

TEST_CASE("one decode step on the CPU: a full report") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.needles = 2;
  const ekv::bench::BenchReport r = run(o);
  const nlohmann::json j = r;
  ekv::test::check_bench_json(j);
  CHECK(j.at("backend") == "cpu");
  CHECK(r.elastic_blocks == 4);  // ceil(16 / 4)
  CHECK(r.accuracy.mass_sequences == 1);
  CHECK(r.accuracy.needle_blocks == 2 * o.batch * o.kv_head_count());
  CHECK(r.accuracy.needle_recall() == 1.0);  // keys along the queries: QUEST picks both of every kv head's
}

TEST_CASE("a decode loop on the CPU reuses selections between refreshes and reports per step") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.inference = true;
  o.decode_tokens = 70;  // crosses a block boundary
  o.refresh = 4;
  o.batch = 2;
  o.dtype = ekv::DType::kBFloat16;
  const nlohmann::json j = run(o);
  ekv::test::check_bench_json(j);
  CHECK(j.at("configuration").at("mode") == "inference");
  CHECK(j.at("configuration").at("decode_tokens") == 70);
}

TEST_CASE("compress 1 reads every block: elastic equals exact") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.compress = 1.0;
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

TEST_CASE("quantized K and V on the CPU: exact and elastic read the storage, its cost against --dtype reported") {
  ekv::bench::BenchOptions o = small_run();
  INFO("seed=" << o.seed);
  o.needles = 2;
  // bounds on exact's error against fp16 exact, pooled over the heads: the formats' costs
  // (cpu_quant_attention_test's). The worst head may take twice that: the needles put most
  // of a head's attention on a few rows, whose output then carries those rows' rounding
  // (E4M3's is up to 2^-4 of a value) with little averaging.
  const std::pair<ekv::KVStorage, double> storages[] = {
      {ekv::KVStorage::kFp8E4M3, 5e-2}, {ekv::KVStorage::kQ8_0, 1e-2}, {ekv::KVStorage::kQ4_0, 1.5e-1}};
  for (const auto& [storage, bound] : storages) {
    INFO("kv storage " << std::string(ekv::to_string(storage)));
    o.kv_dtype = storage;
    for (bool inference : {false, true}) {
      o.inference = inference;
      o.decode_tokens = 8;
      const ekv::bench::BenchReport r = run(o);
      const nlohmann::json j = r;
      ekv::test::check_bench_json(j);
      CHECK(j.at("configuration").at("kv_dtype") == ekv::to_string(storage));
      CHECK(r.accuracy.storage_error > 0);
      CHECK(r.accuracy.storage_error <= r.accuracy.storage_error_worst);
      CHECK(r.accuracy.storage_error < bound);
      CHECK(r.accuracy.storage_error_worst < 2 * bound);
      CHECK(r.accuracy.needle_recall() == 1.0);
      CHECK(r.exact.work.bytes == doctest::Approx(o.kv_bytes() / o.capacity_tokens() *
                                                  (inference ? o.seq + (o.decode_tokens + 1) / 2.0 : o.seq)));
    }
  }
}
