// measure_host_read_bandwidth: a finite, positive rate, on a buffer that is not a whole
// number of slices; bad arguments throw. No timing is asserted.

#include <doctest/doctest.h>

#include <cmath>

#include "ekv/cpu/bandwidth.hpp"

TEST_CASE("measure_host_read_bandwidth returns a finite positive rate and checks its arguments") {
  ekv::CPUInfer pool(2);
  const double bytes_per_s = ekv::measure_host_read_bandwidth(pool, (std::size_t{40} << 20) + 24, 3);
  CHECK(std::isfinite(bytes_per_s));
  CHECK(bytes_per_s > 0.0);
  CHECK_THROWS_AS(ekv::measure_host_read_bandwidth(pool, 4), ekv::Error);
  CHECK_THROWS_AS(ekv::measure_host_read_bandwidth(pool, 1 << 20, 0), ekv::Error);
}
