// Accuracy tools: relative L2 error and the attention mass captured by selected blocks.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cuda_fp16.h>
#include <vector>

#include "decode_check.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("relative L2 error per row, worst and pooled, on cases worked by hand") {
  const std::vector<double> ref = {3, 4, 0, 0, 1, 0};  // rows of norm 5, 0 and 1
  const std::vector<float> got = {3, 4, 0, 0, 1, 1};    // errors 0, 0 and 1
  const ekv::L2Error e = ekv::relative_l2_error(got.data(), ref.data(), 3, 2);
  CHECK(e.rows == std::vector<double>{0, 0, 1});
  CHECK(e.worst == 1);
  CHECK(e.pooled == doctest::Approx(1 / std::sqrt(26.0)));
  const std::vector<__half> off = {__float2half(3), __float2half(4), __float2half(0.5f), __float2half(0),
                                   __float2half(1), __float2half(0)};
  const ekv::L2Error z = ekv::relative_l2_error(off.data(), ref.data(), 3, 2);
  CHECK(z.rows[1] == 0.5);  // against a zero row: the absolute error
  CHECK(z.pooled == doctest::Approx(0.5 / std::sqrt(26.0)));
  const std::vector<ekv::RefState> states = {{{3, 4}, 0.0}, {{0, 0}, 0.0}, {{1, 0}, 0.0}};
  CHECK(ekv::stacked_outputs(states) == ref);
  CHECK(ekv::relative_l2_error(got.data(), states, 2).rows == e.rows);
}

TEST_CASE("attention mass captured: 1 with every block, the selected tokens' softmax weight otherwise") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int d = 24, block_len = 16, len = 70;  // 5 blocks, the last holds 6
  const double scale = 0.5;
  ekv::test::HostCache<float> cache({1, 1, d, block_len, {len}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  std::vector<double> p(len);
  double sum = 0;
  for (int t = 0; t < len; ++t) {
    double s = 0;
    for (int c = 0; c < d; ++c) s += double(q[c]) * kv.k[kv.offset(0, 0, t) + c];
    sum += p[t] = std::exp(s * scale);
  }
  CHECK(ekv::attention_mass_captured(kv, q.data(), 0, 0, {0, 1, 2, 3, 4}, scale) == doctest::Approx(1).epsilon(1e-12));
  for (const std::vector<int>& blocks : {std::vector<int>{0}, {1, 4}, {0, 2, 3}, {4}}) {
    double expected = 0;
    for (int b : blocks) {
      for (int t = b * block_len; t < std::min(len, (b + 1) * block_len); ++t) expected += p[t] / sum;
    }
    const double mass = ekv::attention_mass_captured(kv, q.data(), 0, 0, blocks, scale);
    CHECK(mass == doctest::Approx(expected).epsilon(1e-12));
    CHECK((mass > 0 && mass < 1));
  }
  CHECK(ekv::attention_mass_captured(kv, q.data(), 0, 0, {}, scale) == 0);
  // over a batch: the same mass through attention_mass_of_selection, which checks its shape
  const auto all = [](int, int) { return std::vector<int>{1, 4}; };
  CHECK(ekv::attention_mass_of_selection(kv, q.data(), 1, 1, all, scale).mean ==
        doctest::Approx(ekv::attention_mass_captured(kv, q.data(), 0, 0, {1, 4}, scale)));
  CHECK_THROWS_AS(ekv::attention_mass_of_selection(kv, q.data(), 1, 2, all, scale), ekv::Error);  // batch is 1
  CHECK_THROWS_AS(ekv::attention_mass_of_selection(kv, q.data(), 1, 0, all, scale), ekv::Error);
  CHECK_THROWS_AS(ekv::attention_mass_of_selection(kv, q.data(), 0, 1, all, scale), ekv::Error);  // no query heads
  cache.lengths[0] = 0;
  CHECK_THROWS_AS(ekv::attention_mass_captured(kv, q.data(), 0, 0, {}, scale), ekv::Error);
}
