// measure_host_read_bandwidth and measure_host_copy_bandwidth: a finite, positive rate, on
// a buffer that is not a whole number of slices; bad arguments throw. No timing is asserted.

#include <doctest/doctest.h>

#include <cmath>

#include "harness/cpu_bandwidth.hpp"

TEST_CASE("host bandwidths are finite positive rates, and the functions check their arguments") {
  ekv::CPUInfer pool(2);
  using Measure = double (*)(ekv::CPUInfer&, std::size_t, int);
  for (const Measure measure : {Measure{ekv::bench::measure_host_read_bandwidth}, Measure{ekv::bench::measure_host_copy_bandwidth}}) {
    const double bytes_per_s = measure(pool, (std::size_t{40} << 20) + 24, 3);
    CHECK(std::isfinite(bytes_per_s));
    CHECK(bytes_per_s > 0.0);
    CHECK_THROWS_AS(measure(pool, 4, 7), ekv::Error);
    CHECK_THROWS_AS(measure(pool, 1 << 20, 0), ekv::Error);
  }
}
