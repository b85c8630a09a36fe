// ekv-bench: exact against elastic decode attention on the same KV cache, on the GPU or,
// without one, on the CPU backend; a table on stdout, or one JSON document (--json,
// --output). Flags, JSON schema and exit codes: README.md, section ekv-bench.

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "harness/bench_cli.hpp"
#include "harness/bench_table.hpp"
#include "harness/cpu_bench_runner.hpp"
#include "harness/gpu_bench_runner.cuh"

int main(int argc, char** argv) {
  ekv::bench::BenchOptions options;
  if (const int code = ekv::bench::parse_bench_args(argc, argv, options, std::cout, std::cerr); code >= 0) return code;
  ekv::bench::BenchBackend backend = ekv::bench::BenchBackend::kCpu;
  try {
    backend = ekv::bench::resolve_backend(options.device);
  } catch (const std::exception& e) {
    std::cerr << "ekv-bench: " << e.what() << "\n";
    return ekv::bench::kExitRuntimeError;
  }
  // what the backend supports and the memory the run needs, before any work
  if (const ekv::Support s = ekv::bench::run_supported(options, backend); !s) {
    std::cerr << "ekv-bench: " << s.why << " (on the " << ekv::bench::to_string(backend) << " backend)\n"
              << ekv::bench::kBenchUsageHint << "\n";
    return ekv::bench::kExitUsage;
  }
  try {
    ekv::bench::BenchReport report;
    if (backend == ekv::bench::BenchBackend::kCuda) {
      report = ekv::bench::run_gpu_bench(options, std::cerr);
    } else {
      const int threads = options.threads > 0 ? options.threads
                                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      ekv::CPUInfer pool(threads);
      report = ekv::bench::run_cpu_bench(options, pool, std::cerr);
    }
    if (options.device == ekv::bench::BenchBackend::kAuto && backend == ekv::bench::BenchBackend::kCpu) {
      report.notes.push_back("--device auto: no CUDA GPU is visible, so the CPU backend ran");
    }
    const nlohmann::json json = report;
    // the table first: a JSON file that cannot be written loses nothing else
    if (options.json && options.output.empty()) {
      std::cout << json.dump(2) << "\n";
    } else {
      ekv::bench::print_bench_table(std::cout, report);
    }
    if (!options.output.empty()) {
      std::ofstream file(options.output);
      file << json.dump(2) << "\n";
      file.close();
      if (!file) {
        throw ekv::Error("cannot write the JSON report to '" + options.output + "': " + std::strerror(errno));
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "ekv-bench: " << e.what() << "\n";
    return ekv::bench::kExitRuntimeError;
  }
  return ekv::bench::kExitOk;
}
