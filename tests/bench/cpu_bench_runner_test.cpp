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
