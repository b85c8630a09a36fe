#pragma once
// The host's read bandwidth, measured over all of a CPUInfer's workers: the ceiling of CPU
// decode attention, which reads every K and V byte once and writes almost nothing. Beside
// it the copy bandwidth, the number users know.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "ekv/core/error.hpp"
#include "ekv/cpu/thread_pool.hpp"

namespace ekv::bench {

// Work items of 16 MiB: hundreds of microseconds each, and enough of them to balance.
inline constexpr std::size_t kHostReadSliceBytes = std::size_t{16} << 20;

namespace detail {

// Integer addition reassociates, so -O3 vectorizes this without flags.
inline std::uint64_t sum_words(const std::uint64_t* p, std::size_t n) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum += p[i];
  return sum;
}

// Times pass(first, count, slice) over the slices of a buffer of `words` words on `pool`'s workers:
// the median of `runs` passes after one untimed. The workers, not the caller, first write
// the buffers (init), so that their pages are spread over the workers' memory nodes.
template <typename Init, typename Pass>
double median_pass_seconds(CPUInfer& pool, std::size_t words, int runs, Init&& init, Pass&& pass) {
  const std::size_t slice = kHostReadSliceBytes / sizeof(std::uint64_t);
  const auto slices = static_cast<std::int64_t>((words + slice - 1) / slice);
  const auto count = [&](std::int64_t s) { return std::min(slice, words - s * slice); };
  pool.parallel_for(0, slices, [&](std::int64_t s) { init(s * slice, count(s), s); });
  std::vector<double> seconds;
  for (int r = 0; r <= runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(0, slices, [&](std::int64_t s) { pass(s * slice, count(s), s); });
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    if (r > 0) seconds.push_back(elapsed.count());
  }
  std::nth_element(seconds.begin(), seconds.begin() + runs / 2, seconds.end());
  return seconds[runs / 2];
}

inline void check_host_bandwidth_args(const char* what, std::size_t bytes, int runs) {
  if (bytes < sizeof(std::uint64_t) || runs < 1) {
    throw Error(std::string(what) + ": needs bytes >= 8 and runs >= 1, got bytes=" + std::to_string(bytes) +
                ", runs=" + std::to_string(runs));
  }
}

}  // namespace detail

// Bytes per second of a read-only sum over a `bytes`-byte buffer (default 1 GiB, far past
// any last-level cache), split over `pool`'s workers: the median of `runs` timed passes
// after one untimed. Throws ekv::Error for bytes < 8 or runs < 1.
inline double measure_host_read_bandwidth(CPUInfer& pool, std::size_t bytes = std::size_t{1} << 30, int runs = 7) {
  detail::check_host_bandwidth_args("measure_host_read_bandwidth", bytes, runs);
  const std::size_t words = bytes / sizeof(std::uint64_t);
  const std::unique_ptr<std::uint64_t[]> buffer(new std::uint64_t[words]);  // the workers write it
  std::vector<std::uint64_t> sums((words * sizeof(std::uint64_t) + kHostReadSliceBytes - 1) / kHostReadSliceBytes);
  const double seconds = detail::median_pass_seconds(
      pool, words, runs,
      [&](std::size_t first, std::size_t n, std::int64_t s) {
        std::iota(buffer.get() + first, buffer.get() + first + n, std::uint64_t(s));
      },
      [&](std::size_t first, std::size_t n, std::int64_t s) { sums[s] = detail::sum_words(buffer.get() + first, n); });
  // the sums are used, so no pass can be optimised away
  volatile std::uint64_t sink = std::accumulate(sums.begin(), sums.end(), std::uint64_t{0});
  static_cast<void>(sink);
  return static_cast<double>(words * sizeof(std::uint64_t)) / seconds;
}

// Bytes per second of a copy between two `bytes`-byte buffers (default 1 GiB each),
// counting bytes read plus written, as the GPU's measure_copy_bandwidth does; measured
// like measure_host_read_bandwidth. Throws ekv::Error for bytes < 8 or runs < 1.
inline double measure_host_copy_bandwidth(CPUInfer& pool, std::size_t bytes = std::size_t{1} << 30, int runs = 7) {
  detail::check_host_bandwidth_args("measure_host_copy_bandwidth", bytes, runs);
  const std::size_t words = bytes / sizeof(std::uint64_t);
  const std::unique_ptr<std::uint64_t[]> src(new std::uint64_t[words]), dst(new std::uint64_t[words]);
  const double seconds = detail::median_pass_seconds(
      pool, words, runs,
      [&](std::size_t first, std::size_t n, std::int64_t s) {
        std::iota(src.get() + first, src.get() + first + n, std::uint64_t(s));
        std::fill(dst.get() + first, dst.get() + first + n, std::uint64_t{0});
      },
      [&](std::size_t first, std::size_t n, std::int64_t) {
        std::memcpy(dst.get() + first, src.get() + first, n * sizeof(std::uint64_t));
      });
  volatile std::uint64_t sink = dst[words / 2];  // the copy is used
  static_cast<void>(sink);
  return 2.0 * static_cast<double>(words * sizeof(std::uint64_t)) / seconds;
}

// The host CPU's model name (/proc/cpuinfo's first "model name"), or "host CPU" where it
// says none.
inline std::string host_cpu_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "host CPU";
}

// The largest CPU cache's size in bytes (L3, else L2), 0 where the system does not say.
inline std::size_t host_last_level_cache_bytes() {
#if defined(_SC_LEVEL3_CACHE_SIZE)
  for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    const long bytes = sysconf(name);
    if (bytes > 0) return static_cast<std::size_t>(bytes);
  }
#endif
  return 0;
}

}  // namespace ekv::bench
