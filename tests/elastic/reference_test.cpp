// Block-sparse attention's float64 reference, elastic decode for a batch, and the DYNAMIC
// importance update, against exact attention and brute force.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "decode_check.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/reference.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

constexpr int kDim = 24, kBlockLen = 16;

void check_same(const ekv::RefState& a, const ekv::RefState& b) {
  CHECK(a.lse == doctest::Approx(b.lse).epsilon(1e-12));
  for (int i = 0; i < kDim; ++i) CHECK(a.o[i] == doctest::Approx(b.o[i]).epsilon(1e-12));
}

}  // namespace

TEST_CASE("attention over every block equals exact attention over the sequence") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::test::HostCache<float> cache({2, 1, kDim, kBlockLen, {77}, ekv::test::Layout::kPaged}, seed);  // 5 blocks, the last holds 13
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  for (int h = 0; h < 2; ++h) {
    check_same(ekv::reference_attend_blocks(kv, q.data(), 0, h, {0, 1, 2, 3, 4}, 0.3),
               ekv::reference_attend(kv, q.data(), 0, h, 0, 77, 0.3));
  }
  const ekv::RefState empty = ekv::reference_attend_blocks(kv, q.data(), 0, 0, {}, 0.3);
  CHECK(std::isinf(empty.lse));
  CHECK(empty.o == std::vector<double>(kDim, 0.0));
}

TEST_CASE("attention over some blocks equals exact attention over a cache of just their tokens") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::test::HostCache<float> cache({1, 1, kDim, kBlockLen, {77}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  for (const std::vector<int>& blocks : {std::vector<int>{0, 4}, {1}, {1, 2, 4}, {3}}) {
    std::vector<float> k, v;
    for (int b : blocks) {
      for (int t = b * kBlockLen; t < std::min(77, (b + 1) * kBlockLen); ++t) {
        const std::int64_t at = kv.offset(0, 0, t);
        k.insert(k.end(), kv.k + at, kv.k + at + kDim);
        v.insert(v.end(), kv.v + at, kv.v + at + kDim);
      }
    }
    std::int32_t count = static_cast<std::int32_t>(k.size() / kDim);
    const auto just = ekv::contiguous_hnd_kv<float>(k.data(), v.data(), &count, 1, 1, kDim, count);
    check_same(ekv::reference_attend_blocks(kv, q.data(), 0, 0, blocks, 0.3),
               ekv::reference_attend(just, q.data(), 0, 0, 0, count, 0.3));
  }
  for (const std::vector<int>& bad : {std::vector<int>{2, 1}, {1, 1}, {5}, {-1}}) {
    CHECK_THROWS_AS(ekv::reference_attend_blocks(kv, q.data(), 0, 0, bad, 0.3), ekv::Error);
  }
}

TEST_CASE("elastic decode: each query head reads its granule's blocks; a whole budget is exact") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int kv_heads = 2, q_heads = 4, group = 2;
  ekv::test::HostCache<float> cache({kv_heads, group, kDim, kBlockLen, {77, 40}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  for (ekv::RetrievalType retrieval : ekv::kRetrievalTypes) {
    INFO("retrieval=" << ekv::to_string(retrieval));
    std::vector<std::vector<std::vector<int>>> selections(2);
    for (int g = 0; g < ekv::num_granules(retrieval, q_heads, kv_heads); ++g) {
      selections[0].push_back({g % 5, 4});  // a different list per granule
      selections[1].push_back({g % 3});
    }
    const auto got = ekv::reference_elastic_decode(kv, q.data(), q_heads, selections, retrieval, 0.2);
    for (int s = 0; s < 2; ++s) {
      for (int h = 0; h < q_heads; ++h) {
        const auto& blocks = selections[s][ekv::granule_of(retrieval, h, group)];
        check_same(got[s * q_heads + h],
                   ekv::reference_attend_blocks(kv, q.data() + (s * q_heads + h) * kDim, s, h / group, blocks, 0.2));
      }
    }
    ekv::ElasticConfig config;
    config.retrieval = retrieval;
    const ekv::ElasticPolicy whole(config, ekv::ElasticBudget::ratio(1));
    for (int s = 0; s < 2; ++s) {
      const int blocks = ekv::sequence_blocks(kv.length(s, 0), kBlockLen);
      selections[s] = ekv::reference_select(kv, q.data() + s * q_heads * kDim, q_heads, s, config, whole.counts(blocks));
    }
    const auto exact = ekv::reference_decode(kv, q.data(), q_heads, 0.2);
    const auto elastic = ekv::reference_elastic_decode(kv, q.data(), q_heads, selections, retrieval, 0.2);
    for (int i = 0; i < 2 * q_heads; ++i) check_same(elastic[i], exact[i]);
  }
}

TEST_CASE("the importance update adds each token's exact softmax weight, summed over the group") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int kv_heads = 2, q_heads = 6, group = 3, len = 50;
  const double scale = 0.4;
  ekv::test::HostCache<float> cache({kv_heads, group, kDim, kBlockLen, {len}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  std::vector<std::vector<double>> expected(kv_heads, std::vector<double>(len, 0.0));
  for (int h = 0; h < q_heads; ++h) {
    std::vector<double> p(len);
    double sum = 0;
    for (int t = 0; t < len; ++t) {
      const float* k = kv.k + kv.offset(0, h / group, t);
      double s = 0;
      for (int c = 0; c < kDim; ++c) s += double(q[h * kDim + c]) * k[c];
      sum += p[t] = std::exp(s * scale);
    }
    for (int t = 0; t < len; ++t) expected[h / group][t] += p[t] / sum;
  }
  std::vector<std::vector<double>> importance = {{1.0, 2.0}};  // grows to [kv_heads][len] with zeros
  ekv::reference_update_importance(kv, q.data(), q_heads, 0, scale, importance);
  REQUIRE(importance.size() == kv_heads);
  for (int h = 0; h < kv_heads; ++h) {
    REQUIRE(importance[h].size() == len);
    double total = 0;
    for (int t = 0; t < len; ++t) {
      const double before = h == 0 && t < 2 ? t + 1.0 : 0.0;
      CHECK(importance[h][t] == doctest::Approx(before + expected[h][t]).epsilon(1e-12));
      total += importance[h][t] - before;
    }
    CHECK(total == doctest::Approx(group).epsilon(1e-12));  // each query head's weights sum to 1
  }
}
