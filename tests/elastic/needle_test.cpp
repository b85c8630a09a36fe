// Planted needles: random keys plus a few blocks whose keys align with a query head. At 8x
// compression every anchor kind but FIXED must select them, for every retrieval type.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "decode_check.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/reference.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("every anchor kind but FIXED finds the planted needles at 8x compression") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int kv_heads = 2, q_heads = 8, group = 4, d = 64, block_len = 16, len = 64 * block_len - 5;
  const std::vector<int> needles = {13, 30, 47};  // needle j aligns with query head j of each group
  ekv::test::HostCache<float> cache({kv_heads, group, d, block_len, {len}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  const auto noise = ekv::bench::random_uniform<float>(block_len * d, -0.05f, 0.05f, seed + 4);
  for (int h = 0; h < kv_heads; ++h) {
    for (std::size_t j = 0; j < needles.size(); ++j) {
      const float* qa = q.data() + (h * group + j) * d;
      double norm = 0;
      for (int c = 0; c < d; ++c) norm += double(qa[c]) * qa[c];
      // 12 / |q| along q: about 2.6 times a random key's norm, so that QUEST's bound of a
      // needle block beats the loose bound of 16 random keys
      for (int t = 0; t < block_len; ++t) {
        float* k = kv.k + kv.offset(0, h, needles[j] * block_len + t);
        for (int c = 0; c < d; ++c) k[c] = static_cast<float>(qa[c] / std::sqrt(norm) * 12) + noise[t * d + c];
      }
    }
  }
  std::vector<std::vector<double>> importance;  // DYNAMIC's, from one exact step
  ekv::reference_update_importance(kv, q.data(), q_heads, 0, 1 / std::sqrt(double(d)), importance);
  for (ekv::AnchorKind kind : {ekv::AnchorKind::kQuest, ekv::AnchorKind::kBlockMean, ekv::AnchorKind::kBlockMax,
                               ekv::AnchorKind::kDynamic}) {
    for (ekv::RetrievalType retrieval : ekv::kRetrievalTypes) {
      INFO("anchor=" << ekv::to_string(kind) << " retrieval=" << ekv::to_string(retrieval));
      ekv::ElasticConfig config;
      config.anchor = kind;
      config.anchor_num = 2;
      config.retrieval = retrieval;
      const ekv::BlockCounts counts = ekv::ElasticPolicy(config, ekv::ElasticBudget::ratio(8)).counts(64);
      REQUIRE(counts.pick == 6);
      const auto selection = ekv::reference_select(kv, q.data(), q_heads, 0, config, counts, importance);
      for (std::size_t g = 0; g < selection.size(); ++g) {
        for (std::size_t j = 0; j < needles.size(); ++j) {
          // a query head's own selection owes only its own needle
          if (retrieval == ekv::RetrievalType::kQHead && g % group != j) continue;
          INFO("granule=" << g << " needle block=" << needles[j]);
          CHECK(std::binary_search(selection[g].begin(), selection[g].end(), needles[j]));
        }
      }
    }
  }
}
