#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "harness/statistics.hpp"

TEST_CASE("summarize: known samples, in any order") {
  // 1..20 shuffled: mean 10.5, median 10.5, sample std sqrt(35)
  const std::vector<double> samples = {7, 3, 20, 1, 15, 9, 12, 2, 18, 6, 11, 4, 19, 14, 8, 17, 5, 13, 16, 10};
  const ekv::bench::Stats s = ekv::bench::summarize(samples);
  CHECK(s.count == 20);
  CHECK(s.mean == doctest::Approx(10.5));
  CHECK(s.median == doctest::Approx(10.5));
  CHECK(s.min == 1);
  CHECK(s.max == 20);
  CHECK(s.stddev == doctest::Approx(std::sqrt(35.0)));
  CHECK(s.cv == doctest::Approx(std::sqrt(35.0) / 10.5));
  CHECK(s.p5 == doctest::Approx(1.95));   // rank 0.95 between 1 and 2
  CHECK(s.p95 == doctest::Approx(19.05));  // rank 18.05 between 19 and 20
  CHECK(s.trimmed_mean == doctest::Approx(10.5));  // drops 1, 2 and 19, 20
}

TEST_CASE("summarize: the trimmed mean ignores outliers, the mean does not") {
  std::vector<double> samples(10, 1.0);
  samples[3] = 1000.0;
  const ekv::bench::Stats s = ekv::bench::summarize(samples);
  CHECK(s.trimmed_mean == doctest::Approx(1.0));
  CHECK(s.mean == doctest::Approx(100.9));
  CHECK(s.median == doctest::Approx(1.0));
}

TEST_CASE("summarize: one sample") {
  const ekv::bench::Stats s = ekv::bench::summarize({2.5});
  CHECK(s.median == 2.5);
  CHECK(s.p5 == 2.5);
  CHECK(s.p95 == 2.5);
  CHECK(s.stddev == 0.0);
}

TEST_CASE("summarize and quantile reject what is not a measurement") {
  CHECK_THROWS_WITH_AS(ekv::bench::summarize({}), "summarize: no samples", ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::bench::summarize({1.0, std::numeric_limits<double>::quiet_NaN()}),
                       "summarize: a sample is not finite", ekv::Error);
  CHECK_THROWS_AS(ekv::bench::quantile_sorted({1.0, 2.0}, 1.5), ekv::Error);
}

TEST_CASE("summarize: the trim fraction sets how many samples the trimmed mean drops") {
  const std::vector<double> samples = {100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, -100};
  CHECK(ekv::bench::summarize(samples, 0.0).trimmed_mean == doctest::Approx(ekv::bench::summarize(samples, 0.0).mean));
  const ekv::bench::Stats s = ekv::bench::summarize(samples, 0.05);  // drops -100 and 100
  CHECK(s.trim == 0.05);
  CHECK(s.trimmed_mean == doctest::Approx(9.5));
  CHECK_THROWS_WITH_AS(ekv::bench::summarize(samples, 0.5), "summarize: trim must lie in [0, 0.5)", ekv::Error);
}
