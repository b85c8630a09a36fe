// merge_row_host against reference_merge: parts of one sequence, empty parts included.

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ekv/attention/reference.hpp"
#include "ekv/cpu/merge_states.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("merge_row_host of a sequence's parts equals the whole, empty parts weighing nothing") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int d = 24, len = 300;
  auto k = ekv::bench::random_uniform<float>(len * d, -1.0f, 1.0f, seed);
  auto v = ekv::bench::random_uniform<float>(len * d, -1.0f, 1.0f, seed + 1);
  const auto q = ekv::bench::random_uniform<float>(d, -2.0f, 2.0f, seed + 2);
  std::int32_t length = len;
  const auto kv = ekv::contiguous_hnd_kv<float>(k.data(), v.data(), &length, 1, 1, d, len);
  const int cuts[] = {0, 0, 100, 101, 300, 300};  // parts [0,0) [0,100) [100,101) [101,300) [300,300)
  std::vector<float> states_o, states_lse;
  for (int p = 0; p + 1 < 6; ++p) {
    const ekv::RefState part = ekv::reference_attend(kv, q.data(), 0, 0, cuts[p], cuts[p + 1], 0.2);
    states_o.insert(states_o.end(), part.o.begin(), part.o.end());
    states_lse.push_back(static_cast<float>(part.lse));
  }
  const ekv::RefState whole = ekv::reference_attend(kv, q.data(), 0, 0, 0, len, 0.2);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> o(d, nan);
  float lse = nan;
  ekv::merge_row_host(states_o.data(), states_lse.data(), 5, d, o.data(), &lse);
  // relative, as meant: LSE to 1e-6 of its size, O as the row's relative L2 error (float
  // merging rounds each element at about 2^-24; elements near zero have no relative error)
  CHECK(lse == doctest::Approx(whole.lse).epsilon(1e-6).scale(0));
  double err2 = 0, ref2 = 0;
  for (int i = 0; i < d; ++i) {
    err2 += (o[i] - whole.o[i]) * (o[i] - whole.o[i]);
    ref2 += whole.o[i] * whole.o[i];
  }
  CHECK(std::sqrt(err2 / ref2) <= 1e-6);

  // only empty parts: o = 0 and lse = -inf, never NaN
  std::vector<__half> empty_o(d, __float2half(nan));
  const std::vector<float> empty_lse(3, -std::numeric_limits<float>::infinity());
  ekv::merge_row_host(states_o.data(), empty_lse.data(), 3, d, empty_o.data(), &lse);
  CHECK(lse == -std::numeric_limits<float>::infinity());
  for (const __half& x : empty_o) CHECK(__half2float(x) == 0.0f);
}
