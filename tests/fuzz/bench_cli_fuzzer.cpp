// ekv-bench's command line (harness/bench_cli.hpp) on any arguments: the input is argv
// after the program's name, one argument per NUL-terminated piece (at most 64). Parsing
// never throws and returns -1 (go on), kExitOk (--help, --version) or kExitUsage; options
// it lets through are answered by the backends' checks (backend_supports, memory_supports)
// without throwing, as ekv-bench asks them before any work. resolve_backend and
// run_supported ask CUDA and are left out.

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "harness/bench_cli.hpp"
#include "harness/bench_options.hpp"

namespace {

constexpr std::size_t kMostArguments = 64;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> arguments{"ekv-bench"};
  std::string piece;
  for (std::size_t i = 0; i < size && arguments.size() <= kMostArguments; ++i) {
    if (data[i] == '\0') {
      arguments.push_back(piece);
      piece.clear();
    } else {
      piece += static_cast<char>(data[i]);
    }
  }
  if (!piece.empty() && arguments.size() <= kMostArguments) arguments.push_back(piece);
  std::vector<const char*> argv;
  for (const std::string& a : arguments) argv.push_back(a.c_str());

  ekv::bench::BenchOptions options;
  std::ostringstream out, err;
  const int code = ekv::bench::parse_bench_args(static_cast<int>(argv.size()), argv.data(), options, out, err);
  if (code != -1 && code != ekv::bench::kExitOk && code != ekv::bench::kExitUsage) std::abort();
  if (code != -1) return 0;
  if (!options.validate()) std::abort();  // parse_bench_args let it through
  for (const ekv::bench::BenchBackend backend : {ekv::bench::BenchBackend::kCpu, ekv::bench::BenchBackend::kCuda}) {
    (void)ekv::bench::backend_supports(options, backend);
    (void)ekv::bench::memory_supports(options, backend, 64.0 * (std::uint64_t{1} << 30), "the fuzzer's memory");
  }
  volatile double bytes = options.kv_bytes() + options.dense_kv_bytes();
  (void)bytes;
  (void)options.needle_blocks();
  return 0;
}
