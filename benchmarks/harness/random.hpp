#pragma once
// Seeded random data for tests, benchmarks and the CLI: fresh inputs every run, never
// zeros, reproducible from the printed seed.

#include <algorithm>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "ekv/core/dtype.hpp"

namespace ekv::bench {

// n values uniform in [lo, hi), rounded to T. Up to 16M values one engine draws them in
// order. Larger pools (1 GiB of K and V) are drawn in chunks of 1M values, each from its
// own engine seeded from `seed` and the chunk's index, on all hardware threads: the values
// still depend on the seed alone, never on the thread count.
template <typename T>
std::vector<T> random_uniform(std::size_t n, float lo, float hi, std::uint64_t seed) {
  constexpr std::size_t kSerialMax = std::size_t{1} << 24, kChunk = std::size_t{1} << 20;
  std::vector<T> out(n);
  auto draw = [&](std::uint64_t engine_seed, std::size_t begin, std::size_t end) {
    std::mt19937_64 engine(engine_seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    for (std::size_t i = begin; i < end; ++i) out[i] = DTypeTraits<T>::from_float(dist(engine));
  };
  if (n <= kSerialMax) {
    draw(seed, 0, n);
    return out;
  }
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  auto draw_chunks = [&](std::size_t first, std::size_t stride) {
    for (std::size_t c = first; c < chunks; c += stride)
      draw(seed + 0x9E3779B97F4A7C15ull * (c + 1), c * kChunk, std::min(n, (c + 1) * kChunk));
  };
  const std::size_t threads = std::min<std::size_t>(chunks, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> workers;
  for (std::size_t t = 1; t < threads; ++t) workers.emplace_back(draw_chunks, t, threads);
  draw_chunks(0, threads);
  for (std::thread& w : workers) w.join();
  return out;
}

}  // namespace ekv::bench
