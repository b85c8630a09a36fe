// Entry point of GPU tests: exit code 77 (ctest's SKIP_RETURN_CODE for label gpu) where
// no GPU is visible, so a machine without one reports them skipped, never passed.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "ekv/core/device.hpp"

int main(int argc, char** argv) {
  if (ekv::device_count() == 0) {
    std::printf("SKIPPED: no CUDA GPU visible\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
