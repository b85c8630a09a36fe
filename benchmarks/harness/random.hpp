#pragma once
// Seeded random data for tests, benchmarks and the CLI: fresh inputs every run, never
// zeros, reproducible from the printed seed.

#include <cstdint>
#include <random>
#include <vector>

#include "ekv/core/dtype.hpp"

namespace ekv::bench {

// n values uniform in [lo, hi), rounded to T.
template <typename T>
std::vector<T> random_uniform(std::size_t n, float lo, float hi, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<T> out(n);
  for (T& x : out) x = DTypeTraits<T>::from_float(dist(engine));
  return out;
}

}  // namespace ekv::bench
