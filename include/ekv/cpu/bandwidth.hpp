#pragma once
// The host's read bandwidth, measured over all of a CPUInfer's workers: the ceiling of CPU
// decode attention, which reads every K and V byte once and writes almost nothing.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "ekv/core/error.hpp"
#include "ekv/cpu/thread_pool.hpp"

namespace ekv {

// Work items of 16 MiB: hundreds of microseconds each, and enough of them to balance.
inline constexpr std::size_t kHostReadSliceBytes = std::size_t{16} << 20;

namespace detail {

// Integer addition reassociates, so -O3 vectorizes this without flags.
inline std::uint64_t sum_words(const std::uint64_t* p, std::size_t n) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum += p[i];
  return sum;
}

}  // namespace detail

// Bytes per second of a read-only sum over a `bytes`-byte buffer (default 1 GiB, far past
// any last-level cache), split over `pool`'s workers: the median of `runs` timed passes
// after one untimed. The workers, not the caller, first write the buffer, so that its pages
// are spread over their memory nodes. Throws ekv::Error for bytes < 8 or runs < 1.
inline double measure_host_read_bandwidth(CPUInfer& pool, std::size_t bytes = std::size_t{1} << 30, int runs = 7) {
  if (bytes < sizeof(std::uint64_t) || runs < 1) {
    throw Error("measure_host_read_bandwidth: needs bytes >= 8 and runs >= 1, got bytes=" + std::to_string(bytes) +
                ", runs=" + std::to_string(runs));
  }
  const std::size_t words = bytes / sizeof(std::uint64_t);
  const std::size_t slice = kHostReadSliceBytes / sizeof(std::uint64_t);
  const auto slices = static_cast<std::int64_t>((words + slice - 1) / slice);
  const std::unique_ptr<std::uint64_t[]> buffer(new std::uint64_t[words]);  // the workers write it
  auto words_of = [&](std::int64_t s) { return std::min(slice, words - s * slice); };
  pool.parallel_for(0, slices, [&](std::int64_t s) {
    std::uint64_t* p = buffer.get() + s * slice;
    std::iota(p, p + words_of(s), std::uint64_t(s));
  });
  std::vector<std::uint64_t> sums(slices);
  std::vector<double> seconds;
  for (int r = 0; r <= runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(0, slices, [&](std::int64_t s) { sums[s] = detail::sum_words(buffer.get() + s * slice, words_of(s)); });
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    if (r > 0) seconds.push_back(elapsed.count());
  }
  // the sums are used, so no pass can be optimised away
  volatile std::uint64_t sink = std::accumulate(sums.begin(), sums.end(), std::uint64_t{0});
  static_cast<void>(sink);
  std::nth_element(seconds.begin(), seconds.begin() + runs / 2, seconds.end());
  return static_cast<double>(words * sizeof(std::uint64_t)) / seconds[runs / 2];
}

}  // namespace ekv
