// CpuElasticDecode in a decode loop with token_step = 3: each step appends a token
// (cpu_append_kv), updates the anchors and runs; refreshing steps must attend to
// reference_select's blocks, the others to the last selection plus the blocks appended
// since, and O and LSE must match the float64 reference over those blocks, step by step.

#include <doctest/doctest.h>

#include <vector>

#include "decode_check.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_elastic.hpp"
#include "ekv/elastic/reference.hpp"
#include "test_seed.hpp"

TEST_CASE("CPU elastic decode reuses selections between refreshes, checked step by step") {
  using T = __half;
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::test::CacheShape shape{2, 3, 64, 16, {203 + 20, 90}, ekv::test::Layout::kPaged};  // room for the steps
  ekv::test::HostCache<T> cache(shape, seed);
  cache.lengths = {203, 90};
  const ekv::KVView<T> kv = cache.host_view();
  ekv::ElasticConfig config;
  config.token_step = 3;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(3.0));
  ekv::CPUInfer pool(2);
  ekv::CpuElasticDecode<T> elastic(kv, shape.q_heads(), policy);
  elastic.build_anchors(pool, kv);
  const int rows = shape.batch() * shape.kv_heads;
  std::vector<T> o(cache.q.size());
  std::vector<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));

  std::vector<std::vector<std::vector<int>>> selection(shape.batch());  // [seq][kv head] at the last refresh
  std::vector<int> blocks_then(shape.batch());
  for (int s = 0; s < 8; ++s) {
    INFO("step " << s);
    const auto k_new = ekv::bench::random_uniform<T>(static_cast<std::size_t>(rows) * shape.head_dim, -1.0f, 1.0f, seed + 10 * s);
    const auto v_new = ekv::bench::random_uniform<T>(k_new.size(), -1.0f, 1.0f, seed + 10 * s + 1);
    const std::vector<int> before(cache.lengths.begin(), cache.lengths.end());
    CHECK(ekv::cpu_append_kv<T>(kv, k_new.data(), v_new.data(), 1));
    elastic.update_anchors(pool, kv, before);
    elastic.run(pool, kv, cache.q.data(), o.data(), lse.data(), s);

    std::vector<std::vector<std::vector<int>>> expected(shape.batch());
    for (int b = 0; b < shape.batch(); ++b) {
      REQUIRE(cache.lengths[b] == before[b] + 1);
      const int n = ekv::sequence_blocks(cache.lengths[b], kv.block_len);
      if (config.refreshes_selection(s)) {
        selection[b] = ekv::reference_select(kv, cache.q.data() + static_cast<std::size_t>(b) * shape.q_heads() * shape.head_dim,
                                             shape.q_heads(), b, config, policy.counts(n));
        blocks_then[b] = n;
      }
      for (int h = 0; h < shape.kv_heads; ++h) {
        expected[b].push_back(ekv::reference_reuse_selection(selection[b][h], blocks_then[b], n));
        CHECK(elastic.attended(b, h) == expected[b][h]);
      }
    }
    const auto ref = ekv::reference_elastic_decode(kv, cache.q.data(), shape.q_heads(), expected,
                                                   ekv::RetrievalType::kKvHead, scale);
    ekv::test::check_against_reference<T>(ref, o, lse, shape.head_dim);
  }
}

TEST_CASE("cpu_append_kv stops at the capacity and says so") {
  const ekv::test::CacheShape shape{1, 1, 8, 4, {7}, ekv::test::Layout::kPaged};  // capacity 8
  ekv::test::HostCache<float> cache(shape, ekv::test::seed());
  const std::vector<float> k_new(16, 5.0f), v_new(16, 6.0f);
  CHECK_FALSE(ekv::cpu_append_kv<float>(cache.host_view(), k_new.data(), v_new.data(), 2));
  CHECK(cache.lengths[0] == 8);
  const ekv::KVView<float> kv = cache.host_view();
  CHECK(kv.k[kv.offset(0, 0, 7)] == 5.0f);
  CHECK(kv.v[kv.offset(0, 0, 7) + 7] == 6.0f);
  CHECK_THROWS_AS(ekv::cpu_append_kv<float>(kv, k_new.data(), v_new.data(), -1), ekv::Error);
}

TEST_CASE("CpuElasticDecode rejects what it does not do") {
  const ekv::test::CacheShape shape{2, 2, 64, 16, {40}, ekv::test::Layout::kPaged};
  ekv::test::HostCache<float> cache(shape, ekv::test::seed());
  ekv::ElasticConfig config;
  config.retrieval = ekv::RetrievalType::kQHead;
  CHECK_THROWS_AS(ekv::CpuElasticDecode<float>(cache.host_view(), 4, ekv::ElasticPolicy(config)), ekv::Error);
  CHECK_THROWS_AS(ekv::CpuElasticDecode<float>(cache.host_view(), 3, ekv::ElasticPolicy(ekv::ElasticConfig{})),
                  ekv::Error);
  ekv::CPUInfer pool(1);
  ekv::CpuElasticDecode<float> elastic(cache.host_view(), 4, ekv::ElasticPolicy(ekv::ElasticConfig{}));
  std::vector<float> o(4 * 64), lse(4);
  CHECK_THROWS_AS(elastic.attend(pool, cache.host_view(), cache.q.data(), o.data(), lse.data()), ekv::Error);
}
