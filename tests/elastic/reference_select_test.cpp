// Selection's float64 reference: sinks, window, top-k with ties to the lower block, granule
// scores of each retrieval type, and the reuse of a selection between refreshes.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "decode_check.hpp"
#include "ekv/elastic/reference_select.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

ekv::BlockCounts counts(int init, int local, int pick) { return {init, local, pick}; }

}  // namespace

TEST_CASE("sinks, window and the top scores, ties to the lower block") {
  const std::vector<double> scores = {-9, -9, 5, 1, 5, 5, 0, 7, -9, -9};
  // the rest is blocks 2..7; 7 scores highest, then 2, 4 and 5 tie at 5
  CHECK(ekv::reference_select_blocks(scores, counts(2, 2, 3)) == std::vector<int>{0, 1, 2, 4, 7, 8, 9});
  CHECK(ekv::reference_select_blocks(scores, counts(0, 0, 2)) == std::vector<int>{2, 7});
  CHECK(ekv::reference_select_blocks(scores, counts(1, 0, 0)) == std::vector<int>{0});
  CHECK(ekv::reference_select_blocks(scores, counts(0, 3, 0)) == std::vector<int>{7, 8, 9});
  CHECK(ekv::reference_select_blocks({-0.0, 0.0, -1.0, 3.0}, counts(0, 1, 1)) == std::vector<int>{0, 3});
  CHECK(ekv::reference_select_blocks({0.0, -0.0, -1.0, 3.0}, counts(0, 1, 1)) == std::vector<int>{0, 3});
  CHECK(ekv::reference_select_blocks(scores, counts(5, 5, 0)).size() == 10);  // covers every block
  CHECK(ekv::reference_select_blocks({}, counts(1, 1, 1)).empty());
  CHECK_THROWS_WITH_AS(ekv::reference_select_blocks({1.0, std::nan(""), 2.0}, counts(0, 0, 1)),
                       "reference_select_blocks: block 1 scores NaN", ekv::Error);
}

TEST_CASE("random selections with many ties: sorted, unique, and every pick beats every block left out") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = std::uniform_int_distribution<int>(0, 60)(rng);
    const ekv::BlockCounts c = counts(std::uniform_int_distribution<int>(0, 4)(rng),
                                      std::uniform_int_distribution<int>(0, 4)(rng),
                                      std::uniform_int_distribution<int>(0, 20)(rng));
    std::vector<double> scores(n);
    for (double& s : scores) s = std::uniform_int_distribution<int>(-2, 2)(rng);  // ties everywhere
    INFO("trial=" << trial << " n=" << n << " init=" << c.init << " local=" << c.local << " pick=" << c.pick);
    const std::vector<int> got = ekv::reference_select_blocks(scores, c);
    CHECK(got.size() == static_cast<std::size_t>(std::min(c.total(), n)));
    CHECK(std::is_sorted(got.begin(), got.end()));
    CHECK(std::adjacent_find(got.begin(), got.end()) == got.end());
    if (c.total() >= n) continue;
    const std::set<int> in(got.begin(), got.end());
    for (int b = 0; b < n; ++b) {
      if (b < c.init || b >= n - c.local) CHECK(in.count(b) == 1);
    }
    for (int p : got) {
      if (p < c.init || p >= n - c.local) continue;
      for (int b = c.init; b < n - c.local; ++b) {
        if (in.count(b) == 0) CHECK((scores[p] > scores[b] || (scores[p] == scores[b] && p < b)));
      }
    }
  }
}

TEST_CASE("granule scores: a query head's own, the max over a GQA group, the max over the layer") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int kv_heads = 2, q_heads = 6, group = 3, d = 20, block_len = 8, len = 61;
  ekv::test::HostCache<float> cache({kv_heads, group, d, block_len, {len}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<float>& q = cache.q;
  std::vector<std::vector<double>> importance(kv_heads);
  for (auto& row : importance) {
    for (float x : ekv::bench::random_uniform<float>(len, 0.0f, 1.0f, seed + 4 + importance.size())) row.push_back(x);
  }
  for (ekv::AnchorKind kind : ekv::kAnchorKinds) {
    INFO("anchor=" << ekv::to_string(kind));
    ekv::ElasticConfig config;
    config.anchor = kind;
    config.anchor_num = 2;
    config.retrieval = ekv::RetrievalType::kQHead;
    const auto per_head = ekv::reference_granule_scores(kv, q.data(), q_heads, 0, config, importance);
    REQUIRE(per_head.size() == q_heads);
    for (int h = 0; h < q_heads; ++h) {
      REQUIRE(per_head[h].size() == 8);
      for (int b = 0; b < 8; ++b) {
        const auto anchors = ekv::reference_block_anchors(kv, 0, h / group, b, kind, 2,
                                                          importance[h / group].data() + b * block_len);
        CHECK(per_head[h][b] == ekv::reference_anchor_score(q.data() + h * d, anchors, kind, d));
      }
    }
    config.retrieval = ekv::RetrievalType::kKvHead;
    const auto per_kv_head = ekv::reference_granule_scores(kv, q.data(), q_heads, 0, config, importance);
    config.retrieval = ekv::RetrievalType::kLayer;
    const auto layer = ekv::reference_granule_scores(kv, q.data(), q_heads, 0, config, importance);
    REQUIRE((per_kv_head.size() == kv_heads && layer.size() == 1));
    for (int b = 0; b < 8; ++b) {
      double all = per_head[0][b];
      for (int h = 0; h < q_heads; ++h) all = std::max(all, per_head[h][b]);
      CHECK(layer[0][b] == all);
      for (int g = 0; g < kv_heads; ++g) {
        CHECK(per_kv_head[g][b] == std::max({per_head[g * group][b], per_head[g * group + 1][b], per_head[g * group + 2][b]}));
      }
    }
    const auto selection = ekv::reference_select(kv, q.data(), q_heads, 0, config, counts(1, 1, 2), importance);
    CHECK(selection == std::vector<std::vector<int>>{ekv::reference_select_blocks(layer[0], counts(1, 1, 2))});
  }
  ekv::ElasticConfig dynamic;
  dynamic.anchor = ekv::AnchorKind::kDynamic;
  CHECK_THROWS_AS(ekv::reference_granule_scores(kv, q.data(), q_heads, 0, dynamic), ekv::Error);
  importance[1].resize(len - 1);
  CHECK_THROWS_AS(ekv::reference_granule_scores(kv, q.data(), q_heads, 0, dynamic, importance), ekv::Error);
}

TEST_CASE("a reused selection gains every block appended since it was made") {
  CHECK(ekv::reference_reuse_selection({0, 3, 6, 9}, 10, 10) == std::vector<int>{0, 3, 6, 9});
  CHECK(ekv::reference_reuse_selection({0, 3, 6, 9}, 10, 12) == std::vector<int>{0, 3, 6, 9, 10, 11});
}
