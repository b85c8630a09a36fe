// The Float8 row kernels against sums in double, on rows of 8, 72 and 256 floats and row
// counts that are not multiples of the kernels' blocks; TilePrefetch's split of its lines.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "ekv/cpu/row_ops.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("dot_rows4, dot_row and accumulate_rows equal their sums in double") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (int n : {8, 72, 256}) {
    INFO("n=" << n);
    const int count = 13;
    const auto q = ekv::bench::random_uniform<float>(n, -1.0f, 1.0f, seed);
    const auto data = ekv::bench::random_uniform<float>(static_cast<std::size_t>(count) * n, -1.0f, 1.0f, seed + 1);
    const auto p = ekv::bench::random_uniform<float>(count, 0.0f, 1.0f, seed + 2);
    std::vector<const float*> rows(count);
    for (int r = 0; r < count; ++r) rows[r] = data.data() + static_cast<std::size_t>(r) * n;
    // and the sums of the terms' magnitudes: float accumulation of k terms errs by at most
    // k x 2^-24 of that (sums with cancellation have no relative error to speak of)
    std::vector<double> dots(count, 0.0), sums(n, 0.0), dot_mass(count, 0.0), sum_mass(n, 0.0);
    for (int r = 0; r < count; ++r) {
      for (int i = 0; i < n; ++i) {
        dots[r] += double(q[i]) * rows[r][i];
        sums[i] += double(p[r]) * rows[r][i];
        dot_mass[r] += std::abs(double(q[i]) * rows[r][i]);
        sum_mass[i] += std::abs(double(p[r]) * rows[r][i]);
      }
    }
    const double eps = std::ldexp(1.0, -24);
    float four[4];
    ekv::dot_rows4(q.data(), rows.data() + 5, n, four);
    for (int r = 0; r < 4; ++r) CHECK(std::abs(four[r] - dots[5 + r]) <= n * eps * dot_mass[5 + r]);
    CHECK(std::abs(ekv::dot_row(q.data(), rows[12], n) - dots[12]) <= n * eps * dot_mass[12]);
    std::vector<float> acc(n, 0.0f);
    ekv::accumulate_rows(acc.data(), p.data(), rows.data(), count, n);  // one pass of eight, five single rows
    for (int i = 0; i < n; ++i) CHECK(std::abs(acc[i] - sums[i]) <= count * eps * sum_mass[i]);
  }
}

TEST_CASE("max_row equals std::max_element, a NaN first included") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int n : {1, 7, 8, 9, 16, 31, 32}) {
    INFO("n=" << n);
    auto x = ekv::bench::random_uniform<float>(n, -10.0f, 10.0f, seed + n);
    CHECK(ekv::max_row(x.data(), n) == *std::max_element(x.begin(), x.end()));
    if (n > 2) {
      x[1] = nan;  // ignored where it is not first, as by std::max_element
      CHECK(ekv::max_row(x.data(), n) == *std::max_element(x.begin(), x.end()));
    }
    x[0] = nan;
    CHECK(std::isnan(ekv::max_row(x.data(), n)));
  }
}

// TilePrefetch: its parts together ask for every cache line of every run and none outside
// them, for runs that start and end off a line, share a line, or stand alone, split into
// 1 to 20 parts (more parts than lines included); part() itself runs (a hint: nothing to see).
TEST_CASE("TilePrefetch's parts ask for exactly the lines of its runs") {
  alignas(64) static char memory[64 * 64];
  const std::vector<std::vector<std::pair<int, int>>> layouts = {
      {{0, 256}},                          // one aligned run of four lines
      {{16, 272}, {272, 528}},             // off a line, the second run sharing the first's last line
      {{100, 101}},                        // one byte
      {{8, 200}, {1024, 1030}, {3000, 4000}}};
  for (const auto& layout : layouts) {
    std::vector<ekv::PrefetchRun> runs;
    std::size_t bytes = 0;
    std::set<std::uintptr_t> expected;
    for (const auto& [b, e] : layout) {
      runs.push_back({memory + b, memory + e});
      bytes += static_cast<std::size_t>(e - b);
      for (int i = b; i < e; ++i) expected.insert(reinterpret_cast<std::uintptr_t>(memory + i) & ~std::uintptr_t{63});
    }
    const ekv::TilePrefetch ahead{runs.data(), static_cast<int>(runs.size()), bytes};
    for (int parts = 1; parts <= 20; ++parts) {
      INFO("runs=" << runs.size() << " parts=" << parts);
      std::set<std::uintptr_t> asked;
      std::size_t calls = 0;
      for (int i = 0; i < parts; ++i) {
        ahead.lines(i, parts, [&](const char* p) {
          CHECK(reinterpret_cast<std::uintptr_t>(p) % 64 == 0);
          asked.insert(reinterpret_cast<std::uintptr_t>(p));
          ++calls;
        });
        ahead.part(i, parts);
      }
      CHECK(asked == expected);
      CHECK(calls <= expected.size() + 2 * static_cast<std::size_t>(parts) + runs.size());  // shared lines only
    }
  }
  ekv::TilePrefetch{}.part(0, 1);  // none: nothing asked, no pointer read
}
