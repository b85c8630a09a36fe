// ekv-bench: exact against elastic decode attention on the same KV cache, on the GPU or,
// without one, on the CPU backend; a table on stdout, or one JSON document (--json,
// --output). Flags, JSON schema and exit codes: README.md, section ekv-bench.

#include <algorithm>
#include <exception>
#include <fstream>
#include <iostream>
#include <thread>

#include "ekv/bench/bench_cli.hpp"
#include "ekv/bench/bench_table.hpp"
#include "ekv/bench/cpu_bench_runner.hpp"
#include "ekv/bench/gpu_bench_runner.cuh"

int main(int argc, char** argv) {
  ekv::BenchOptions options;
  if (const int code = ekv::parse_bench_args(argc, argv, options, std::cout, std::cerr); code >= 0) return code;
  try {
    const ekv::BenchBackend backend = ekv::resolve_backend(options.device);
    ekv::BenchReport report;
    if (backend == ekv::BenchBackend::kCuda) {
      report = ekv::run_gpu_bench(options, std::cerr);
    } else {
      ekv::CPUInfer pool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
      report = ekv::run_cpu_bench(options, pool, std::cerr);
    }
    if (options.device == ekv::BenchBackend::kAuto && backend == ekv::BenchBackend::kCpu) {
      report.notes.push_back("--device auto: no CUDA GPU is visible, so the CPU backend ran");
    }
    const nlohmann::json json = report;
    if (!options.output.empty()) {
      std::ofstream file(options.output);
      file << json.dump(2) << "\n";
      if (!file) throw ekv::Error("cannot write the JSON report to '" + options.output + "'");
    }
    if (options.json && options.output.empty()) {
      std::cout << json.dump(2) << "\n";
    } else {
      ekv::print_bench_table(std::cout, report);
    }
  } catch (const std::exception& e) {
    std::cerr << "ekv-bench: " << e.what() << "\n";
    return ekv::kExitRuntimeError;
  }
  return ekv::kExitOk;
}
