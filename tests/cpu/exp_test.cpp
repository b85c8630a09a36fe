// exp_nonpositive against exp in double: within 2 ulp over the softmax's whole range; NaN
// and +inf give NaN.

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ekv/cpu/exp.hpp"

TEST_CASE("exp_nonpositive is within 2 ulp of exp on [-87.3, 0]") {
  double worst = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -87.3f * static_cast<float>(i) / 2000000.0f;
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(ekv::exp_nonpositive(x) - want) / want);
  }
  INFO("worst relative error " << worst);
  CHECK(worst <= 2 * std::numeric_limits<float>::epsilon());  // 2 ulp of float
  CHECK(ekv::exp_nonpositive(0.0f) == 1.0f);
  const float floor = ekv::exp_nonpositive(-87.3f);
  CHECK(floor > 0.0f);
  CHECK(ekv::exp_nonpositive(-1000.0f) == floor);
  CHECK(ekv::exp_nonpositive(-std::numeric_limits<float>::infinity()) == floor);
}

TEST_CASE("exp_row shifts, exponentiates in place and sums") {
  std::vector<float> x = {1.0f, 3.0f, 2.0f, -1.0f, 3.0f, 0.5f, -4.0f, 2.5f, 1.5f, 0.0f, 2.0f};  // not a multiple of 8
  std::vector<float> want(x.size());
  double want_sum = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    want[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - 3.0));
    want_sum += want[i];
  }
  const float sum = ekv::exp_row(x.data(), static_cast<int>(x.size()), 3.0f);
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(x[i] == doctest::Approx(want[i]).epsilon(3e-7));
  CHECK(sum == doctest::Approx(want_sum).epsilon(1e-6));
}

// tests/fuzz's c_api_tensor attended over keys holding NaN and infinities (any bytes, as a
// C caller may pass): their scores reached exp_nonpositive as NaN, which it converted to
// int (undefined; UBSan stops there). They give NaN, and the values beside them stay exact.
TEST_CASE("NaN and +inf give NaN, and the values beside them are as before (fuzz regression)") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  CHECK(std::isnan(ekv::exp_nonpositive(nan)));
  CHECK(std::isnan(ekv::exp_nonpositive(inf)));
  CHECK(std::isnan(ekv::exp_nonpositive(-nan)));
  std::vector<float> x = {-1.0f, nan, -2.0f, inf, 0.0f, -inf, -0.5f, -3.0f, nan};
  const std::vector<float> before = x;
  const float sum = ekv::exp_row(x.data(), static_cast<int>(x.size()), 0.0f);
  CHECK(std::isnan(sum));
  for (std::size_t i = 0; i < x.size(); ++i) {
    INFO("x[" << i << "] = " << before[i]);
    if (std::isnan(before[i]) || before[i] == inf) {
      CHECK(std::isnan(x[i]));
    } else {
      CHECK(x[i] == ekv::exp_nonpositive(before[i]));
    }
  }
}
