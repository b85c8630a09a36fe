// The ekv-bench program itself, as the README runs it: a short run on the CPU backend whose
// JSON file carries every documented field, and the exit codes of bad flags. No timing is
// asserted.

#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "bench/bench_json_check.hpp"
#include "ekv/core/version.hpp"

namespace {

struct BenchRun {
  int code = -1;
  std::string output;  // stdout and stderr together
};

// `ekv-bench <args>`: its exit code and what it printed.
BenchRun run_bench_output(const std::string& args) {
  const std::string log = std::string(EKV_BENCH_OUTPUT_DIR) + "/ekv_bench_run_test.log";
  const std::string command = std::string("\"") + EKV_BENCH_PATH + "\" " + args + " >\"" + log + "\" 2>&1";
  const int status = std::system(command.c_str());
  REQUIRE(WIFEXITED(status));
  std::ifstream file(log);
  std::stringstream text;
  text << file.rdbuf();
  return {WEXITSTATUS(status), text.str()};
}

int run_bench(const std::string& args) { return run_bench_output(args).code; }

}  // namespace

TEST_CASE("ekv-bench on the CPU writes a complete JSON report") {
  const std::string path = std::string(EKV_BENCH_OUTPUT_DIR) + "/ekv_bench_run_test.json";
  std::remove(path.c_str());
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  REQUIRE(run_bench("--device cpu --seq=1000 --heads=4 --kv-heads=2 --dim=64 --compress=4 --reps=3 --warmup=1 "
                    "--seed=" + std::to_string(seed) + " --output " + path) == 0);
  std::ifstream file(path);
  REQUIRE(file);
  const nlohmann::json j = nlohmann::json::parse(file);
  ekv::test::check_bench_json(j);
  CHECK(j.at("backend") == "cpu");
}

TEST_CASE("ekv-bench exit codes: 0 for --help, 2 for unknown or malformed flags") {
  CHECK(run_bench("--help") == 0);
  CHECK(run_bench("--bogus") == 2);
  CHECK(run_bench("--seq=abc") == 2);
  CHECK(run_bench("--device cpu --compress=0.5") == 2);
}

// Every bad value is refused before any work (no roofs measured, no cache allocated) with
// exit 2, a sentence that names the flag and what is supported, and the hint.
TEST_CASE("ekv-bench refuses each bad flag before any work, naming it") {
  struct Case {
    const char* args;
    const char* message;  // a part of what it must say
  };
  const Case cases[] = {
      {"--dim=-128", "--dim=-128 is out of range; supported: 1 to 1024"},
      {"--block-len=2147483647", "--block-len=2147483647 is out of range; supported: 1 to 65536"},
      {"--seq=0", "--seq=0 is out of range; supported: 1 to 1073741824"},
      {"--batch=70000", "--batch=70000 is out of range; supported: 1 to 65535"},
      {"--heads=6 --kv-heads=4", "--heads=6 must be a multiple of --kv-heads=4"},
      {"--threads=-1", "--threads=-1 is out of range; supported: 0 to 4096"},
      {"--seed=-1", "--seed: must be an integer of at least 0, got -1"},
      {"--budget=0", "--budget: must be an integer of at least 1 block, got 0"},
      {"--budget=4 --compress=2", "excludes"},
      {"--seq=256 --needles=1000", "--needles=1000 is out of range for 4 blocks of --block-len=64; supported: 0 to 2"},
      {"--needles=-2", "--needles=-2 is out of range"},
      {"--anchor=2", "--anchor=2 is not a known value; supported: quest, block_mean, block_max, fixed"},
      {"--anchor=mean", "--anchor=mean is not a known value; supported: quest, block_mean, block_max, fixed"},
      {"--anchor=dynamic", "--anchor=dynamic needs token importance"},
      {"--dtype=fp8", "--dtype=fp8 is not a known value; supported: fp16, bf16, fp32"},
      {"--device=tpu", "--device=tpu is not a known value; supported: auto, cuda, cpu"},
      {"--compress=0.5", "--compress must be at least 1"},
      {"--truncate=50", "--truncate must lie in [0, 50) percent"},
      {"--refresh=0", "--refresh=0 must be at least 1"},
      {"--inference --decode_tokens=0", "--decode_tokens must be at least 1"},
      {"--output=/nonexistent/dir/x.json", "--output=/nonexistent/dir/x.json: the directory '/nonexistent/dir' does not exist"},
      // what the backend supports and the memory the run needs, before the roofs
      {"--device=cpu --dim=100", "head_dim=100 not supported by cpu decode"},
      {"--device=cpu --seq=1073741824", "the run needs about"},
      {"--bogus", "--bogus"},
      {"--seq=abc", "--seq"},
  };
  for (const Case& c : cases) {
    INFO("ekv-bench " << c.args);
    const BenchRun run = run_bench_output(c.args);
    INFO(run.output);
    CHECK(run.code == 2);
    CHECK(run.output.find(c.message) != std::string::npos);
    CHECK(run.output.find("Run with --help for the flags.") != std::string::npos);
    CHECK(run.output.find("measuring") == std::string::npos);  // refused before the roofs
    CHECK(run.output.find('{') == std::string::npos);           // ekv's own lists, not CLI11's maps
  }
}

TEST_CASE("ekv-bench says what it measures: labels, defaults, version") {
  const BenchRun help = run_bench_output("--help");
  CHECK(help.code == 0);
  CHECK(help.output.find("{false}") == std::string::npos);  // flags that default on say so in words
  CHECK(help.output.find("(default: replay CUDA Graphs)") != std::string::npos);
  const BenchRun version = run_bench_output("--version");
  CHECK(version.code == 0);
  CHECK(version.output.find(std::string("ekv-bench ") + ekv::kVersion) == 0);
  // one-token blocks: the anchors outweigh what selection saves, and the table says "more"
  const BenchRun more = run_bench_output("--device cpu --seq=256 --block-len=1 --heads=4 --kv-heads=2 --dim=64 "
                                         "--reps=2 --warmup=0 --no-roofs --threads=1");
  INFO(more.output);
  REQUIRE(more.code == 0);
  CHECK(more.output.find("more bytes") != std::string::npos);
  CHECK(more.output.find("steps/s") != std::string::npos);
  CHECK(more.output.find("tokens/s") == std::string::npos);
  CHECK(more.output.find("no roofs measured") != std::string::npos);
  CHECK(more.output.find("measuring") == std::string::npos);
  // the default data has needles, and the output says what the data are
  const BenchRun plain = run_bench_output("--device cpu --seq=1024 --heads=4 --kv-heads=2 --dim=64 --reps=2 "
                                          "--warmup=0 --no-roofs");
  REQUIRE(plain.code == 0);
  CHECK(plain.output.find("data: random K and V, and in every sequence and kv head 4 needle block(s)") !=
        std::string::npos);
  CHECK(plain.output.find("needle recall ") != std::string::npos);  // the fraction of them elastic read
}

TEST_CASE("ekv-bench prints its table even when the JSON file cannot be written") {
  // a directory that exists when the flags are checked and is gone by the end of the run
  // is rare; a path that is a directory itself is refused by the write, after the table
  const std::string dir = std::string(EKV_BENCH_OUTPUT_DIR) + "/ekv_bench_run_test_dir";
  std::system(("mkdir -p \"" + dir + "\"").c_str());
  const BenchRun run = run_bench_output("--device cpu --seq=512 --heads=4 --kv-heads=2 --dim=64 --reps=2 --warmup=0 "
                                        "--no-roofs --output " + dir);
  INFO(run.output);
  CHECK(run.code == 1);
  CHECK(run.output.find("speedup") != std::string::npos);  // the table came first
  CHECK(run.output.find("cannot write the JSON report to '" + dir + "'") != std::string::npos);
}
