// ekv-bench's argument parsing: the flags users type, and the exit codes of what it rejects.

#include <doctest/doctest.h>

#include <sstream>
#include <string>
#include <vector>

#include "harness/bench_cli.hpp"

namespace {

struct Parsed {
  int code = 0;
  ekv::bench::BenchOptions options;
  std::string out, err;
};

Parsed parse(std::vector<std::string> args) {
  args.insert(args.begin(), "ekv-bench");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  Parsed p;
  std::ostringstream out, err;
  p.code = ekv::bench::parse_bench_args(static_cast<int>(argv.size()), argv.data(), p.options, out, err);
  p.out = out.str();
  p.err = err.str();
  return p;
}

}  // namespace

TEST_CASE("the older CLI's command lines parse with their meanings") {
  const Parsed p = parse({"--seq=4096", "--heads=32", "--dim=128", "--compress=4", "--reps=50", "--warmup=20",
                          "--inner_loops=64", "--truncate=5", "--json", "--inference", "--decode_tokens=16",
                          "--paired-baseline", "--no-graphs"});
  REQUIRE(p.code == -1);
  CHECK(p.err.empty());
  const ekv::bench::BenchOptions& o = p.options;
  CHECK(o.seq == 4096);
  CHECK(o.heads == 32);
  CHECK(o.kv_head_count() == 32);  // no --kv-heads: one kv head per query head, as the older CLI
  CHECK(o.dim == 128);
  CHECK(o.compress == 4.0);
  CHECK(o.reps == 50);
  CHECK(o.warmup == 20);
  CHECK(o.inner_loops == 64);
  CHECK(o.truncate == 5.0);
  CHECK(o.json);
  CHECK(o.inference);
  CHECK(o.decode_tokens == 16);
  CHECK(o.capacity_tokens() == 4096 + 16);
  CHECK(o.paired_baseline);
  CHECK_FALSE(o.graphs);
}

TEST_CASE("ekv's own flags parse into the options") {
  const Parsed p = parse({"--batch", "3", "--heads=32", "--kv-heads=8", "--dtype=BF16", "--block-len=16",
                          "--budget=12", "--anchor=BLOCK_MEAN", "--refresh=4", "--device=cpu", "--output=r.json",
                          "--seed=7", "--needles=2", "--no-paired-baseline"});
  REQUIRE(p.code == -1);
  const ekv::bench::BenchOptions& o = p.options;
  CHECK(o.batch == 3);
  CHECK(o.kv_head_count() == 8);
  CHECK(o.dtype == ekv::DType::kBFloat16);
  CHECK(o.block_len == 16);
  CHECK(o.budget_blocks == 12);
  CHECK(o.anchor == ekv::AnchorKind::kBlockMean);
  CHECK(o.elastic_config().anchor == ekv::AnchorKind::kBlockMean);
  CHECK(o.elastic_config().token_step == 4);
  CHECK(o.device == ekv::bench::BenchBackend::kCpu);
  CHECK(o.output == "r.json");
  CHECK(o.seed == 7);
  CHECK(o.needles == 2);
  CHECK_FALSE(o.paired_baseline);
  CHECK(o.graphs);
  CHECK(o.kv_storage() == ekv::KVStorage::kBFloat16);  // no --kv-dtype: K and V in --dtype
}

TEST_CASE("--kv-dtype quantizes K and V, q and o staying --dtype; bytes count codes and scales") {
  const Parsed p = parse({"--kv-dtype=Q4_0", "--dtype=bf16", "--device=cpu", "--seq=1024", "--heads=8",
                          "--kv-heads=2", "--dim=64"});
  REQUIRE(p.code == -1);
  CHECK(p.options.dtype == ekv::DType::kBFloat16);
  CHECK(p.options.kv_storage() == ekv::KVStorage::kQ4_0);
  // a Q4_0 row of 64 values: 32 bytes of codes and 2 scales of 2 bytes
  CHECK(p.options.kv_bytes() == 2.0 * 1024 * 2 * 36);
  CHECK(p.options.dense_kv_bytes() == 2.0 * 1024 * 2 * 64 * 2);
  const Parsed same = parse({"--kv-dtype=fp16"});  // --dtype's own format: as if not given
  REQUIRE(same.code == -1);
  CHECK(same.options.kv_storage() == ekv::KVStorage::kFloat16);
  CHECK(ekv::bench::backend_supports(p.options, ekv::bench::BenchBackend::kCuda));
  CHECK(ekv::bench::backend_supports(p.options, ekv::bench::BenchBackend::kCpu));
}

TEST_CASE("the GPU backend takes a quantized --kv-dtype with fp16 and bf16 queries and names what it refuses") {
  using ekv::bench::BenchBackend;
  for (const std::string kv : {"fp8", "q8_0", "q4_0"}) {
    INFO("--kv-dtype=" << kv);
    for (const std::string dtype : {"fp16", "bf16"}) {
      INFO("--dtype=" << dtype);
      for (const std::string dim : {"64", "128", "256"}) {
        const Parsed p = parse({"--kv-dtype=" + kv, "--dtype=" + dtype, "--dim=" + dim});
        REQUIRE(p.code == -1);
        const ekv::Support s = ekv::bench::backend_supports(p.options, BenchBackend::kCuda);
        CHECK_MESSAGE(s, s.why);
      }
    }
    // float32 queries: the quantized decode kernel runs on tensor cores; the CPU takes them
    const Parsed f32 = parse({"--kv-dtype=" + kv, "--dtype=fp32"});
    REQUIRE(f32.code == -1);
    const ekv::Support s = ekv::bench::backend_supports(f32.options, BenchBackend::kCuda);
    CHECK_FALSE(s);
    CHECK(s.why == "--kv-dtype=" + kv + " on the GPU: dtype=float32 not supported with kv storage " + kv +
                       "; supported: float16, bfloat16");
    CHECK(ekv::bench::backend_supports(f32.options, BenchBackend::kCpu));
  }
  // a head dim GPU decode does not run, whatever the storage: decode's own sentence first
  const Parsed d96 = parse({"--kv-dtype=q8_0", "--dim=96"});
  REQUIRE(d96.code == -1);
  CHECK(ekv::bench::backend_supports(d96.options, BenchBackend::kCuda).why ==
        "head_dim=96 not supported by decode; supported: [64, 128, 256]");
}

TEST_CASE("defaults: one step, fp16, QUEST, C = 4, auto device") {
  const Parsed p = parse({});
  REQUIRE(p.code == -1);
  CHECK(p.options.dtype == ekv::DType::kFloat16);
  CHECK(p.options.anchor == ekv::AnchorKind::kQuest);
  CHECK(p.options.compress == 4.0);
  CHECK(p.options.device == ekv::bench::BenchBackend::kAuto);
  CHECK_FALSE(p.options.inference);
  CHECK(p.options.validate());
}

TEST_CASE("--help prints the flags and exits 0") {
  const Parsed p = parse({"--help"});
  CHECK(p.code == ekv::bench::kExitOk);
  for (const char* flag : {"--seq", "--kv-heads", "--compress", "--inner_loops", "--no-graphs", "--device",
                           "--output", "Exit codes"}) {
    CHECK_MESSAGE(p.out.find(flag) != std::string::npos, flag);
  }
}

TEST_CASE("usage errors exit 2 with the reason and a hint on stderr") {
  const std::vector<std::vector<std::string>> bad = {
      {"--sequence=4096"},             // unknown flag
      {"--seq=abc"},                   // malformed value
      {"--seq=4096", "stray"},         // positional argument
      {"--dtype=fp8"},                 // not a dtype the CLI runs
      {"--device=tpu"},                // not a backend
      {"--anchor=dynamic"},            // needs importance ekv-bench does not record
      {"--compress=4", "--budget=8"},  // two budgets
      {"--compress=0.5"},              // reads more than exact
      {"--heads=32", "--kv-heads=5"},  // not a GQA shape
      {"--truncate=60"},
      {"--reps=0"},
      {"--kv-dtype=int4"},             // not a storage
      {"--kv-dtype=bf16"},             // dense K and V differ from --dtype=fp16
      {"--kv-dtype=q8_0", "--dim=48"},  // Q8_0 groups of 32 values
  };
  for (const auto& args : bad) {
    const Parsed p = parse(args);
    INFO(args.front());
    CHECK(p.code == ekv::bench::kExitUsage);
    CHECK(p.out.empty());
    CHECK(p.err.rfind("ekv-bench: ", 0) == 0);
    CHECK(p.err.find(ekv::bench::kBenchUsageHint) != std::string::npos);
  }
}
