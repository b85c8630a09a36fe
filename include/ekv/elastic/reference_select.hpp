#pragma once
// Float64 reference of block selection for one sequence: each granule's block scores, the
// sink + window + top-k selection from them, and the reuse of a selection between refreshes.

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/error.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/reference_anchors.hpp"

namespace ekv {

// Scores [granules][blocks] of one sequence for its query q [q_heads][head_dim], from
// anchors computed beforehand: anchors(h, b) returns block b's anchors for kv head h
// (reference_block_anchors' layout). A granule shared by several query heads (KVHEAD: a
// GQA group, LAYER: all heads) takes the MAX of their raw scores: a block that any one of
// those heads needs must survive, where a mean would let the others outvote it.
template <typename T, typename Anchors>
std::vector<std::vector<double>> reference_granule_scores_from(const T* q, int q_heads, int kv_heads, int head_dim,
                                                               int blocks, const ElasticConfig& config,
                                                               Anchors&& anchors) {
  const int group = q_heads / kv_heads;
  std::vector<std::vector<double>> out(num_granules(config.retrieval, q_heads, kv_heads),
                                       std::vector<double>(blocks, -std::numeric_limits<double>::infinity()));
  for (int h = 0; h < kv_heads; ++h) {
    for (int b = 0; b < blocks; ++b) {
      const std::vector<double>& a = anchors(h, b);
      for (int qh = h * group; qh < (h + 1) * group; ++qh) {
        double& s = out[granule_of(config.retrieval, qh, group)][b];
        s = std::max(s, reference_anchor_score(q + static_cast<std::size_t>(qh) * head_dim, a, config.anchor, head_dim));
      }
    }
  }
  return out;
}

// Scores [granules][blocks] of sequence seq, computing each block's anchors from kv
// (reference_granule_scores_from). importance: [kv_heads][tokens] of this sequence, read
// for DYNAMIC only. kv is a whole cache's view, where every kv head holds the sequence's
// tokens (not a block-sparse view). Throws when DYNAMIC lacks importance for a kv head or token.
template <typename T>
std::vector<std::vector<double>> reference_granule_scores(const KVView<T>& kv, const T* q, int q_heads, int seq,
                                                          const ElasticConfig& config,
                                                          const std::vector<std::vector<double>>& importance = {}) {
  const int length = kv.length(seq, 0);
  const bool dynamic = config.anchor == AnchorKind::kDynamic;
  const auto short_row = [&](const std::vector<double>& row) { return row.size() < static_cast<std::size_t>(length); };
  if (dynamic && (importance.size() != static_cast<std::size_t>(kv.kv_heads) ||
                  std::any_of(importance.begin(), importance.end(), short_row))) {
    throw Error("reference_granule_scores: DYNAMIC needs importance [" + std::to_string(kv.kv_heads) + "][" +
                std::to_string(length) + "] for sequence " + std::to_string(seq));
  }
  std::vector<double> anchors;
  return reference_granule_scores_from(
      q, q_heads, kv.kv_heads, kv.head_dim, sequence_blocks(length, kv.block_len), config,
      [&](int h, int b) -> const std::vector<double>& {
        const double* block_importance = dynamic ? importance[h].data() + b * kv.block_len : nullptr;
        anchors = reference_block_anchors(kv, seq, h, b, config.anchor, config.anchor_num, block_importance);
        return anchors;
      });
}

// One granule's blocks, ascending and unique: the first counts.init (sinks), the last
// counts.local (window) and the counts.pick highest scores among the rest, equal scores to
// the lower block (-0.0 equals +0.0). Every block when counts.total() >= scores.size().
// Throws for a NaN score, which has no place in that order.
inline std::vector<int> reference_select_blocks(const std::vector<double>& scores, const BlockCounts& counts) {
  const int n = static_cast<int>(scores.size());
  for (int b = 0; b < n; ++b) {
    if (std::isnan(scores[b])) throw Error("reference_select_blocks: block " + std::to_string(b) + " scores NaN");
  }
  std::vector<int> out(n);
  std::iota(out.begin(), out.end(), 0);
  if (counts.total() >= n) return out;
  // here init + local < n, so sinks and window do not overlap and pick < the rest
  std::vector<int> rest(out.begin() + counts.init, out.end() - counts.local);
  std::partial_sort(rest.begin(), rest.begin() + counts.pick, rest.end(), [&](int a, int b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  out.erase(out.begin() + counts.init, out.end() - counts.local);
  out.insert(out.end(), rest.begin(), rest.begin() + counts.pick);
  std::sort(out.begin(), out.end());
  return out;
}

// The selection of sequence seq: [granules] block lists, from reference_granule_scores and
// reference_select_blocks.
template <typename T>
std::vector<std::vector<int>> reference_select(const KVView<T>& kv, const T* q, int q_heads, int seq,
                                               const ElasticConfig& config, const BlockCounts& counts,
                                               const std::vector<std::vector<double>>& importance = {}) {
  std::vector<std::vector<int>> out;
  for (const auto& scores : reference_granule_scores(kv, q, q_heads, seq, config, importance)) {
    out.push_back(reference_select_blocks(scores, counts));
  }
  return out;
}

// What a step that does not refresh (ElasticConfig::refreshes_selection) reads: the blocks
// selected when the sequence had selected_num_blocks blocks, plus every block appended
// since, so the window keeps up with the sequence.
inline std::vector<int> reference_reuse_selection(const std::vector<int>& selected, int selected_num_blocks,
                                                  int num_blocks) {
  std::vector<int> out = selected;
  for (int b = selected_num_blocks; b < num_blocks; ++b) out.push_back(b);
  return out;
}

}  // namespace ekv
