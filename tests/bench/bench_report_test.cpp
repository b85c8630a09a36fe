// ekv-bench's report: the work it counts, the roofline placement and the JSON schema of
// a report built by hand (no timing is asserted: the numbers here are made up).

#include <doctest/doctest.h>

#include <sstream>

#include "bench/bench_json_check.hpp"
#include "harness/bench_report.hpp"
#include "harness/bench_table.hpp"

namespace {

ekv::bench::BenchReport made_up_report() {
  ekv::bench::BenchReport r;
  r.backend = ekv::bench::BenchBackend::kCpu;
  r.device = {{"name", "AMD EPYC 7B13 (made up)"}, {"threads", 2}};
  r.options.seq = 32768;
  r.options.kv_heads = 8;
  r.ceilings.read_bytes_per_s = 3.0e12;
  r.ceilings.copy_bytes_per_s = 2.8e12;
  r.ceilings.peak_flops_per_s = 50e12;
  r.ceilings.peak_flops_source = "made up";
  ekv::bench::record_timing(r, {{60e-6, 58e-6, 59e-6}, {20e-6, 21e-6, 19e-6}}, 1, sizeof(__half));
  r.accuracy = {0.5, 0.9, 0.6, 0.4, 1, 16, 12};  // 12 of 16 needle blocks read
  return r;
}

}  // namespace

TEST_CASE("bench_work: exact reads every K and V byte, elastic about 1/C of them") {
  ekv::bench::BenchOptions o;
  o.seq = 32768;
  o.kv_heads = 8;
  o.batch = 2;
  const ekv::bench::BenchWork w = ekv::bench::bench_work(o, o.elastic_policy(), sizeof(__half));
  const double kv_bytes = 2.0 * 2 * 32768 * 8 * 128 * 2;  // K and V, batch 2, fp16
  CHECK(w.exact.bytes == doctest::Approx(kv_bytes));
  CHECK(w.exact.flops == doctest::Approx(4.0 * 128 * 32 * 32768 * 2));
  // a quarter of the 512 blocks, plus the QUEST anchors scored: every block but the sink
  // and the window, each min and max in fp16, 1/64 of a 64-token block's K and V
  CHECK(w.elastic.bytes == doctest::Approx(kv_bytes / 4 + kv_bytes * 510 / 512 / 64));
  // flops: 4 x 128 per (query head, attended token), 2 per anchor value per query head:
  // 510 scored blocks x 8 kv heads x 256 QUEST values, each read by a group of 4
  const double anchor_values = 2.0 * 510 * 8 * 256;  // batch 2
  CHECK(w.elastic.flops == doctest::Approx(4.0 * 128 * 32 * 32768 * 2 / 4 + 2.0 * 4 * anchor_values));
  // the CPU path's anchors are float64: four times the fp16 anchor bytes, the same flops
  const ekv::bench::BenchWork cpu = ekv::bench::bench_work(o, o.elastic_policy(), sizeof(double));
  CHECK(cpu.elastic.bytes == doctest::Approx(kv_bytes / 4 + 4 * kv_bytes * 510 / 512 / 64));
  CHECK(cpu.elastic.flops == doctest::Approx(w.elastic.flops));
  // bfloat16 caches store bfloat16 anchors: the same bytes as fp16
  o.dtype = ekv::DType::kBFloat16;
  CHECK(ekv::bench::bench_work(o, o.elastic_policy(), 2).elastic.bytes == doctest::Approx(w.elastic.bytes));
  o.dtype = ekv::DType::kFloat16;
  // a decode loop grows the cache: step s reads seq + s + 1 tokens
  o.inference = true;
  o.decode_tokens = 4;
  CHECK(ekv::bench::bench_work(o, o.elastic_policy(), sizeof(__half)).exact.bytes ==
        doctest::Approx(kv_bytes / 32768 * (32768 + 2.5)));
}

TEST_CASE("place_on_roofline: the lower roof at the work's intensity") {
  const ekv::bench::RooflinePoint memory = ekv::bench::place_on_roofline(4e9, 1e9, 1e-3, 3e12, 50e12);
  CHECK(memory.arithmetic_intensity == doctest::Approx(4.0));
  CHECK(memory.attainable_flops_per_s == doctest::Approx(12e12));
  CHECK(memory.achieved_flops_per_s == doctest::Approx(4e12));
  CHECK(memory.memory_bound);
  const ekv::bench::RooflinePoint compute = ekv::bench::place_on_roofline(100e9, 1e9, 1e-3, 3e12, 50e12);
  CHECK(compute.attainable_flops_per_s == doctest::Approx(50e12));
  CHECK_FALSE(compute.memory_bound);
  CHECK(ekv::bench::place_on_roofline(4e9, 1e9, 1e-3, 3e12, 0).memory_bound);  // no compute roof measured
  CHECK_THROWS_AS(ekv::bench::place_on_roofline(4e9, 1e9, 0, 3e12, 0), ekv::Error);
}

TEST_CASE("a report's JSON carries the documented schema") {
  const ekv::bench::BenchReport r = made_up_report();
  const nlohmann::json j = r;
  ekv::test::check_bench_json(j);
  CHECK(j.at("results").at("speedup").get<double>() == doctest::Approx(59.0 / 20.0));
  CHECK(j.at("configuration").at("mode") == "step");
  CHECK(j.at("configuration").at("decode_tokens").is_null());
  CHECK(j.at("results").at("exact").at("attention_steps_per_s").get<double>() == doctest::Approx(1.0 / 59e-6));
  CHECK(j.at("results").at("exact").at("efficiency").at("of_read_bandwidth").get<double>() ==
        doctest::Approx(r.exact.work.bytes / 59e-6 / 3.0e12));
}

TEST_CASE("the table names both variants, the speedup and the accuracy") {
  std::ostringstream os;
  ekv::bench::print_bench_table(os, made_up_report());
  for (const char* text : {"exact", "elastic", "speedup 2.95x", "relative L2 error 0.5000", "AMD EPYC 7B13 (made up)",
                           "needle recall 0.75: elastic read 12 of the 16 needle blocks"}) {
    CHECK_MESSAGE(os.str().find(text) != std::string::npos, text);
  }
  ekv::bench::BenchReport none = made_up_report();  // no needles: no recall line, null in the JSON
  none.accuracy.needle_blocks = none.accuracy.needle_blocks_read = 0;
  std::ostringstream plain;
  ekv::bench::print_bench_table(plain, none);
  CHECK(plain.str().find("needle recall") == std::string::npos);
  const nlohmann::json without = none, with = made_up_report();
  CHECK(without.at("results").at("accuracy").at("needle_recall").is_null());
  CHECK(with.at("results").at("accuracy").at("needle_recall").get<double>() == 0.75);
}
