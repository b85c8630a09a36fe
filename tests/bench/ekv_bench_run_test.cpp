// The ekv-bench program itself, as the README runs it: a short run on the CPU backend whose
// JSON file carries every documented field, and the exit codes of bad flags. No timing is
// asserted.

#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "bench/bench_json_check.hpp"

namespace {

// The exit code of `ekv-bench <args>`, its output discarded.
int run_bench(const std::string& args) {
  const std::string command = std::string("\"") + EKV_BENCH_PATH + "\" " + args + " >/dev/null 2>&1";
  const int status = std::system(command.c_str());
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

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
