// Entry point of GPU tests: exit code 77 (ctest's SKIP_RETURN_CODE for label gpu) only
// where the machine has no GPU (gpu_availability.hpp), so a machine without one reports
// them skipped, never passed; a broken CUDA setup fails them instead.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "gpu_availability.hpp"

int main(int argc, char** argv) {
  const ekv::test::GpuDecision gpu = ekv::test::classify_gpu_probe(ekv::test::probe_gpu());
  if (gpu.verdict == ekv::test::GpuVerdict::kSkip) {
    std::printf("SKIPPED: %s\n", gpu.why.c_str());
    return 77;
  }
  if (gpu.verdict == ekv::test::GpuVerdict::kFail) {
    std::printf("FAILED: %s\n", gpu.why.c_str());
    return 1;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
