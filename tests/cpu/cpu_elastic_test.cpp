// CpuElasticDecode in a decode loop with token_step = 3: each step appends a token
// (cpu_append_kv), updates the anchors and runs; refreshing steps must attend to
// reference_select's blocks, the others to the last selection plus the blocks appended
// since, and O and LSE must match the float64 reference over those blocks, step by step.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "decode_check.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_elastic.hpp"
#include "ekv/elastic/reference.hpp"
#include "ekv/elastic/reference_anchors.hpp"
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

namespace {

// A block's score for one query head, brute force from the block's raw keys and the
// anchor kind's definition, sharing no code with the references: QUEST's per-channel
// bound, the mean of the dot products (q . mean of keys, by linearity), q . per-channel
// max, and the best of the FIXED positions' dot products.
template <typename T>
double brute_force_score(const ekv::KVView<T>& kv, const T* q, int seq, int kv_head, int block,
                         const ekv::ElasticConfig& config) {
  const int d = kv.head_dim, len = kv.length(seq, kv_head);
  const int first = block * kv.block_len, valid = std::min(len - first, kv.block_len);
  const auto k = [&](int t, int c) {
    return static_cast<double>(ekv::DTypeTraits<T>::to_float(kv.k[kv.offset(seq, kv_head, first + t) + c]));
  };
  const auto qd = [&](int c) { return static_cast<double>(ekv::DTypeTraits<T>::to_float(q[c])); };
  const auto dot = [&](int t) {
    double s = 0;
    for (int c = 0; c < d; ++c) s += qd(c) * k(t, c);
    return s;
  };
  double score = 0;
  switch (config.anchor) {
    case ekv::AnchorKind::kQuest:
    case ekv::AnchorKind::kBlockMax:
      for (int c = 0; c < d; ++c) {
        double lo = k(0, c), hi = k(0, c);
        for (int t = 1; t < valid; ++t) lo = std::min(lo, k(t, c)), hi = std::max(hi, k(t, c));
        score += config.anchor == ekv::AnchorKind::kBlockMax ? qd(c) * hi : (qd(c) >= 0 ? qd(c) * hi : qd(c) * lo);
      }
      return score;
    case ekv::AnchorKind::kBlockMean:
      for (int t = 0; t < valid; ++t) score += dot(t);
      return score / valid;
    default: {
      double best = -1e300;
      for (int i = 0; i < config.anchor_num; ++i) best = std::max(best, dot(i * valid / config.anchor_num));
      return best;
    }
  }
}

// Checks one granule's selection as a property, not against another selector: the sinks
// and the window are in, it has policy.counts(n).total() blocks, and no block left out
// scores above a picked one (equal scores may go either way).
void check_selection(const std::vector<int>& got, const std::vector<double>& scores, const ekv::BlockCounts& counts) {
  const int n = static_cast<int>(scores.size());
  REQUIRE(std::is_sorted(got.begin(), got.end()));
  REQUIRE(static_cast<int>(got.size()) == std::min(n, counts.total()));
  std::vector<bool> in(n, false);
  for (int b : got) in[b] = true;
  for (int b = 0; b < std::min(n, counts.init); ++b) CHECK(in[b]);
  for (int b = std::max(0, n - counts.local); b < n; ++b) CHECK(in[b]);
  double lowest_picked = 1e300, highest_left = -1e300;
  for (int b = counts.init; b < n - counts.local; ++b) {
    if (in[b]) {
      lowest_picked = std::min(lowest_picked, scores[b]);
    } else {
      highest_left = std::max(highest_left, scores[b]);
    }
  }
  CHECK(highest_left <= lowest_picked + 1e-9 * std::abs(lowest_picked));
}

template <typename T>
void check_cpu_elastic_independently(ekv::AnchorKind anchor, ekv::RetrievalType retrieval, ekv::test::Layout layout,
                                     std::uint64_t seed) {
  const ekv::test::CacheShape shape{2, 4, 64, 16, {500, 203}, layout};
  ekv::test::HostCache<T> cache(shape, seed, ekv::test::Inputs::kPeaked);  // scores far apart: a wrong pick shows
  const ekv::KVView<T> kv = cache.host_view();
  ekv::ElasticConfig config;
  config.anchor = anchor;
  config.anchor_num = 3;
  config.retrieval = retrieval;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(4.0));
  ekv::CPUInfer pool(2);
  ekv::CpuElasticDecode<T> elastic(kv, shape.q_heads(), policy);
  elastic.build_anchors(pool, kv);
  std::vector<T> o(cache.q.size());
  std::vector<float> lse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  elastic.run(pool, kv, cache.q.data(), o.data(), lse.data(), 0);

  const int group = shape.group;
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  std::vector<ekv::RefState> ref;
  for (int b = 0; b < shape.batch(); ++b) {
    const int n = ekv::sequence_blocks(cache.lengths[b], kv.block_len);
    for (int h = 0; h < shape.kv_heads; ++h) {
      // the granule's score of a block: the max over its query heads (the whole layer's for LAYER)
      const int first_head = retrieval == ekv::RetrievalType::kLayer ? 0 : h;
      const int last_head = retrieval == ekv::RetrievalType::kLayer ? shape.kv_heads : h + 1;
      std::vector<double> scores(n, -1e300);
      for (int block = 0; block < n; ++block) {
        for (int kh = first_head; kh < last_head; ++kh) {
          for (int g = 0; g < group; ++g) {
            const T* qh = cache.q.data() + (static_cast<std::size_t>(b) * shape.q_heads() + kh * group + g) * shape.head_dim;
            scores[block] = std::max(scores[block], brute_force_score(kv, qh, b, kh, block, config));
          }
        }
      }
      INFO("sequence " << b << ", kv head " << h);
      check_selection(elastic.attended(b, h), scores, policy.counts(n));
      if (retrieval == ekv::RetrievalType::kLayer) CHECK(elastic.attended(b, h) == elastic.attended(b, 0));
      // attention over exactly those blocks, from the float64 attention reference
      for (int g = 0; g < group; ++g) {
        const T* qh = cache.q.data() + (static_cast<std::size_t>(b) * shape.q_heads() + h * group + g) * shape.head_dim;
        std::vector<ekv::RefState> parts;
        for (int block : elastic.attended(b, h)) {
          const int begin = block * kv.block_len, end = std::min(cache.lengths[b], begin + kv.block_len);
          parts.push_back(ekv::reference_attend(kv, qh, b, h, begin, end, scale));
        }
        ref.push_back(ekv::reference_merge(parts, shape.head_dim));
      }
    }
  }
  ekv::test::check_against_reference<T>(ref, o, lse, shape.head_dim, ekv::test::Inputs::kPeaked);
}

}  // namespace

TEST_CASE_TEMPLATE("CPU elastic decode against a brute-force scorer: every anchor kind, retrieval type and dtype", T,
                   float, __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  int i = 0;
  for (ekv::AnchorKind anchor : {ekv::AnchorKind::kQuest, ekv::AnchorKind::kBlockMean, ekv::AnchorKind::kBlockMax,
                                 ekv::AnchorKind::kFixed}) {
    for (ekv::RetrievalType retrieval : {ekv::RetrievalType::kLayer, ekv::RetrievalType::kKvHead}) {
      // ekv's pool, vLLM's blocks and FlashInfer's page index
      for (ekv::test::Layout layout :
           {ekv::test::Layout::kPaged, ekv::test::Layout::kPagedNhd, ekv::test::Layout::kPageIndex}) {
        INFO("anchor " << ekv::to_string(anchor) << ", retrieval " << ekv::to_string(retrieval) << ", layout "
                       << ekv::test::name(layout));
        check_cpu_elastic_independently<T>(anchor, retrieval, layout, seed + i++);
      }
    }
  }
}
