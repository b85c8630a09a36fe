// The anchor kinds' float64 reference: anchors and block scores against brute force on
// random data, partial last blocks included.

#include <doctest/doctest.h>

#include <algorithm>
#include <cuda_fp16.h>
#include <limits>
#include <vector>

#include "decode_check.hpp"
#include "ekv/elastic/reference_anchors.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

constexpr int kHeads = 2, kDim = 24, kBlockLen = 16;

// token t of a block as doubles
template <typename T>
std::vector<std::vector<double>> block_keys(const ekv::KVView<T>& kv, int seq, int head, int block) {
  std::vector<std::vector<double>> keys;
  const int valid = ekv::block_valid_tokens(kv.length(seq, head), kBlockLen, block);
  for (int t = 0; t < valid; ++t) {
    const T* k = kv.k + kv.offset(seq, head, block * kBlockLen + t);
    keys.emplace_back();
    for (int c = 0; c < kDim; ++c) keys.back().push_back(ekv::DTypeTraits<T>::to_float(k[c]));
  }
  return keys;
}

// DYNAMIC's order by selection sort: the most important token not yet taken, ties to the lower
std::vector<int> by_importance(const std::vector<double>& importance, int count) {
  std::vector<int> out;
  std::vector<bool> taken(importance.size(), false);
  for (int i = 0; i < count && i < static_cast<int>(importance.size()); ++i) {
    int best = -1;
    for (int t = 0; t < static_cast<int>(importance.size()); ++t) {
      if (!taken[t] && (best < 0 || importance[t] > importance[best])) best = t;
    }
    taken[best] = true;
    out.push_back(best);
  }
  while (static_cast<int>(out.size()) < count) out.push_back(out.back());
  return out;
}

// importance with ties: values from {0, 1, 2}
std::vector<double> tied_importance(int n, std::uint64_t seed) {
  std::vector<double> out;
  for (float x : ekv::bench::random_uniform<float>(n, 0.0f, 3.0f, seed)) out.push_back(static_cast<int>(x));
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("anchors of every kind equal brute force, partial blocks included", T, float, __half) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::test::HostCache<T> cache({kHeads, 1, kDim, kBlockLen, {37, 50}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  for (int seq = 0; seq < 2; ++seq) {
    for (int h = 0; h < kHeads; ++h) {
      for (int b = 0; b < ekv::sequence_blocks(kv.length(seq, h), kBlockLen); ++b) {
        INFO("seq=" << seq << " head=" << h << " block=" << b);
        const auto keys = block_keys(kv, seq, h, b);
        const int valid = static_cast<int>(keys.size());
        const auto quest = ekv::reference_block_anchors(kv, seq, h, b, ekv::AnchorKind::kQuest, 1);
        const auto mean = ekv::reference_block_anchors(kv, seq, h, b, ekv::AnchorKind::kBlockMean, 1);
        const auto max = ekv::reference_block_anchors(kv, seq, h, b, ekv::AnchorKind::kBlockMax, 1);
        REQUIRE((quest.size() == 2 * kDim && mean.size() == kDim && max.size() == kDim));
        for (int c = 0; c < kDim; ++c) {
          double lo = keys[0][c], hi = keys[0][c], sum = 0;
          for (const auto& k : keys) lo = std::min(lo, k[c]), hi = std::max(hi, k[c]), sum += k[c];
          CHECK(quest[c] == lo);
          CHECK(quest[kDim + c] == hi);
          CHECK(max[c] == hi);
          CHECK(mean[c] == doctest::Approx(sum / valid).epsilon(1e-14));
        }
        const std::vector<double> importance = tied_importance(valid, seed + 10 * b + h);
        for (int anchor_num : {1, 3, 4, 20}) {
          const auto fixed = ekv::reference_block_anchors(kv, seq, h, b, ekv::AnchorKind::kFixed, anchor_num);
          const auto dynamic =
              ekv::reference_block_anchors(kv, seq, h, b, ekv::AnchorKind::kDynamic, anchor_num, importance.data());
          const auto order = by_importance(importance, anchor_num);
          for (int i = 0; i < anchor_num; ++i) {
            const int p = i * valid / anchor_num;
            for (int c = 0; c < kDim; ++c) {
              CHECK(fixed[i * kDim + c] == keys[p][c]);
              CHECK(dynamic[i * kDim + c] == keys[order[i]][c]);
            }
          }
        }
      }
    }
  }
  CHECK_THROWS_AS(ekv::reference_block_anchors(kv, 0, 0, 3, ekv::AnchorKind::kQuest, 1), ekv::Error);
  CHECK_THROWS_AS(ekv::reference_block_anchors(kv, 0, 0, 0, ekv::AnchorKind::kDynamic, 2), ekv::Error);
}

TEST_CASE("FIXED positions spread over the valid tokens and repeat when there are few") {
  std::vector<float> k(kBlockLen * 2);
  for (int t = 0; t < kBlockLen; ++t) k[t * 2] = static_cast<float>(t);  // channel 0 holds the position
  std::int32_t len = kBlockLen;
  const auto kv = ekv::contiguous_hnd_kv<float>(k.data(), k.data(), &len, 1, 1, 2, kBlockLen);
  const auto positions = [&](int valid, int anchor_num) {
    len = valid;
    const auto a = ekv::reference_block_anchors(kv, 0, 0, 0, ekv::AnchorKind::kFixed, anchor_num);
    std::vector<int> out;
    for (int i = 0; i < anchor_num; ++i) out.push_back(static_cast<int>(a[i * 2]));
    return out;
  };
  CHECK(positions(16, 3) == std::vector<int>{0, 5, 10});
  CHECK(positions(16, 4) == std::vector<int>{0, 4, 8, 12});
  CHECK(positions(5, 4) == std::vector<int>{0, 1, 2, 3});
  CHECK(positions(2, 4) == std::vector<int>{0, 0, 1, 1});
  CHECK(positions(1, 3) == std::vector<int>{0, 0, 0});
}

TEST_CASE_TEMPLATE("block scores follow each kind's formula", T, float, __half) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::test::HostCache<T> cache({kHeads, 1, kDim, kBlockLen, {45}, ekv::test::Layout::kPaged}, seed);
  const auto kv = cache.host_view();
  const std::vector<T>& q = cache.q;
  std::vector<double> qd;
  for (T x : q) qd.push_back(ekv::DTypeTraits<T>::to_float(x));
  const auto dot = [&](const std::vector<double>& k) {
    double s = 0;
    for (int c = 0; c < kDim; ++c) s += qd[c] * k[c];
    return s;
  };
  for (int h = 0; h < kHeads; ++h) {
    for (int b = 0; b < 3; ++b) {
      INFO("head=" << h << " block=" << b);
      const auto keys = block_keys(kv, 0, h, b);
      std::vector<double> lo = keys[0], hi = keys[0], dots;
      for (const auto& k : keys) {
        for (int c = 0; c < kDim; ++c) lo[c] = std::min(lo[c], k[c]), hi[c] = std::max(hi[c], k[c]);
        dots.push_back(dot(k));
      }
      const auto score = [&](ekv::AnchorKind kind, int anchor_num, const double* importance = nullptr) {
        return ekv::reference_anchor_score(q.data(), ekv::reference_block_anchors(kv, 0, h, b, kind, anchor_num, importance),
                                           kind, kDim);
      };
      double bound = 0;
      for (int c = 0; c < kDim; ++c) bound += qd[c] >= 0 ? qd[c] * hi[c] : qd[c] * lo[c];
      const double quest = score(ekv::AnchorKind::kQuest, 1);
      CHECK(quest == doctest::Approx(bound).epsilon(1e-14));
      CHECK(quest >= *std::max_element(dots.begin(), dots.end()) - 1e-12);  // an upper bound
      double mean = 0;
      for (double s : dots) mean += s / dots.size();
      CHECK(score(ekv::AnchorKind::kBlockMean, 1) == doctest::Approx(mean).epsilon(1e-12));
      CHECK(score(ekv::AnchorKind::kBlockMax, 1) == doctest::Approx(dot(hi)).epsilon(1e-14));
      const int valid = static_cast<int>(keys.size());
      double fixed = -std::numeric_limits<double>::infinity();
      for (int i = 0; i < 3; ++i) fixed = std::max(fixed, dots[i * valid / 3]);
      CHECK(score(ekv::AnchorKind::kFixed, 3) == doctest::Approx(fixed).epsilon(1e-14));
      const std::vector<double> importance = tied_importance(valid, seed + 7 + b);
      double dynamic = -std::numeric_limits<double>::infinity();
      for (int t : by_importance(importance, 2)) dynamic = std::max(dynamic, dots[t]);
      CHECK(score(ekv::AnchorKind::kDynamic, 2, importance.data()) == doctest::Approx(dynamic).epsilon(1e-14));
    }
  }
}
