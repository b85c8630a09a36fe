#pragma once
// Seeds for test data: fresh each run, or fixed by EKV_TEST_SEED to replay a failure.
// Tests put the seed in an INFO() so that doctest prints it with any failure.

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace ekv::test {

inline std::uint64_t seed() {
  if (const char* fixed = std::getenv("EKV_TEST_SEED")) return std::stoull(fixed);
  return (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
}

}  // namespace ekv::test
