// The GPU tests' entry point skips only for "no GPU" and fails for any other CUDA error
// (the probe's answers injected; no broken machine needed).

#include <doctest/doctest.h>

#include "gpu_availability.hpp"

using ekv::test::classify_gpu_probe;
using ekv::test::GpuVerdict;

TEST_CASE("devices present: the tests run") {
  CHECK(classify_gpu_probe({cudaSuccess, 1, true}).verdict == GpuVerdict::kRun);
  CHECK(classify_gpu_probe({cudaSuccess, 8, true}).verdict == GpuVerdict::kRun);
}

TEST_CASE("no device or no driver at all: the tests skip") {
  CHECK(classify_gpu_probe({cudaSuccess, 0, true}).verdict == GpuVerdict::kSkip);
  CHECK(classify_gpu_probe({cudaErrorNoDevice, 0, true}).verdict == GpuVerdict::kSkip);
  CHECK(classify_gpu_probe({cudaErrorNoDevice, 0, false}).verdict == GpuVerdict::kSkip);
  const auto none = classify_gpu_probe({cudaErrorInsufficientDriver, 0, false});
  CHECK(none.verdict == GpuVerdict::kSkip);
  CHECK(none.why.find("no CUDA driver") == 0);
}

TEST_CASE("any other CUDA error fails the tests, naming the code") {
  // a driver that loads but is older than the runtime: a broken setup, not a missing GPU
  const auto old_driver = classify_gpu_probe({cudaErrorInsufficientDriver, 0, true});
  CHECK(old_driver.verdict == GpuVerdict::kFail);
  CHECK(old_driver.why.find("cudaErrorInsufficientDriver (35)") != std::string::npos);
  for (cudaError_t e : {cudaErrorInitializationError, cudaErrorSystemDriverMismatch, cudaErrorDevicesUnavailable,
                        cudaErrorNotSupported, cudaErrorUnknown, cudaErrorCompatNotSupportedOnDevice,
                        cudaErrorSystemNotReady, cudaErrorInvalidDevice, cudaErrorMemoryAllocation}) {
    for (bool loadable : {true, false}) {
      INFO("error " << static_cast<int>(e) << ", driver loadable " << loadable);
      const auto d = classify_gpu_probe({e, 0, loadable});
      CHECK(d.verdict == GpuVerdict::kFail);
      CHECK(d.why.find(cudaGetErrorName(e)) != std::string::npos);
    }
  }
}

TEST_CASE("this machine's own answer is one of the three, never a crash") {
  const auto d = classify_gpu_probe(ekv::test::probe_gpu());
  CHECK(!d.why.empty());
  MESSAGE("this machine: " << d.why);
}
