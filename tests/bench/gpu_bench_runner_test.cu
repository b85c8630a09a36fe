// A short ekv-bench run on the GPU, single step and decode loop, graphs and direct
// launches: its JSON carries every documented field, with the speedup and the accuracy
// filled. Whether elastic is faster is checked by hand on the H100 (README), never here:
// tests do not assert timings.

#include <doctest/doctest.h>

#include <sstream>

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
  const nlohmann::json j = run(o);
  ekv::test::check_bench_json(j);
  CHECK(j.at("configuration").at("graphs") == false);
}

TEST_CASE("compress 1 on the GPU reads every block: elastic matches exact") {
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
