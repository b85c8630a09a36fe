#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "harness/random_fill.cuh"

TEST_CASE_TEMPLATE("random_uniform_fill: in range, spread out, deterministic per seed", T, float, __half) {
  ekv::Stream stream;
  const std::size_t n = 100003;
  ekv::DeviceBuffer<T> a(n), b(n), c(n);
  ekv::bench::random_uniform_fill<T>(a.span(), -1.0f, 3.0f, 42, stream);
  ekv::bench::random_uniform_fill<T>(b.span(), -1.0f, 3.0f, 42, stream);
  ekv::bench::random_uniform_fill<T>(c.span(), -1.0f, 3.0f, 43, stream);
  stream.synchronize();
  std::vector<T> ha(n), hb(n), hc(n);
  a.copy_to(ha);
  b.copy_to(hb);
  c.copy_to(hc);
  double sum = 0;
  std::size_t same_as_b = 0, same_as_c = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = ekv::DTypeTraits<T>::to_float(ha[i]);
    REQUIRE(x >= -1.0f);
    REQUIRE(x <= 3.0f);
    sum += x;
    same_as_b += x == ekv::DTypeTraits<T>::to_float(hb[i]);
    same_as_c += x == ekv::DTypeTraits<T>::to_float(hc[i]);
  }
  CHECK(std::abs(sum / n - 1.0) < 0.02);  // mean of U(-1, 3)
  CHECK(same_as_b == n);
  CHECK(same_as_c < n / 50);
  CHECK_THROWS_AS(ekv::bench::random_uniform_fill<T>(a.span(), 1.0f, 1.0f, 1, stream), ekv::Error);
}
