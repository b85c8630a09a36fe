#pragma once
// Float64 reference of the anchor kinds: the anchors of one block, computed from its keys,
// and a query head's score of the block from them. The GPU stores the same values in the
// cache's dtype (elastic_config.hpp's anchor_values() gives the count): min, max and keys
// exactly, means rounded once to that dtype.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/elastic/elastic_config.hpp"

namespace ekv {
namespace detail {

template <typename T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return x;
  } else {
    return DTypeTraits<T>::to_float(x);
  }
}

template <typename T>
double dot(const T* q, const double* a, int head_dim) {
  double s = 0;
  for (int i = 0; i < head_dim; ++i) s += to_double(q[i]) * a[i];
  return s;
}

// reference_block_anchors over any keys: key(t) points at token t's head_dim values (of
// any ekv dtype or float), for the block's `valid` tokens.
template <typename KeyAt>
std::vector<double> block_anchors_from(int valid, int d, AnchorKind kind, int anchor_num, const double* importance,
                                       KeyAt&& key) {
  std::vector<double> out(anchor_values(kind, anchor_num, d));
  if (kind == AnchorKind::kFixed || kind == AnchorKind::kDynamic) {
    std::vector<int> order(valid);
    std::iota(order.begin(), order.end(), 0);
    if (kind == AnchorKind::kDynamic) {
      if (importance == nullptr) throw Error("reference_block_anchors: DYNAMIC anchors need token importance");
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return importance[a] > importance[b]; });
    }
    for (int i = 0; i < anchor_num; ++i) {
      const int t = kind == AnchorKind::kFixed ? static_cast<int>(std::int64_t{i} * valid / anchor_num)
                                               : order[std::min(i, valid - 1)];
      const auto* row = key(t);
      for (int c = 0; c < d; ++c) out[static_cast<std::size_t>(i) * d + c] = to_double(row[c]);
    }
    return out;
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (kind == AnchorKind::kQuest) std::fill(out.begin(), out.begin() + d, kInf);
  if (kind != AnchorKind::kBlockMean) std::fill(out.end() - d, out.end(), -kInf);
  for (int t = 0; t < valid; ++t) {
    const auto* row = key(t);
    for (int c = 0; c < d; ++c) {
      const double x = to_double(row[c]);
      if (kind == AnchorKind::kQuest) out[c] = std::min(out[c], x);
      double& last = out[out.size() - d + c];  // the max (QUEST, MAX) or the sum (MEAN)
      last = kind == AnchorKind::kBlockMean ? last + x : std::max(last, x);
    }
  }
  if (kind == AnchorKind::kBlockMean) {
    for (double& x : out) x /= valid;
  }
  return out;
}

inline void require_valid_block(int valid, int seq, int block) {
  if (valid == 0) {
    throw Error("reference_block_anchors: block " + std::to_string(block) + " of sequence " + std::to_string(seq) +
                " has no valid tokens");
  }
}

}  // namespace detail

// Anchors of logical block `block` of (seq, kv_head), over the block's valid tokens only
// (the last block of a sequence may be partial), laid out as stored:
//   QUEST       [2][head_dim]: per-channel min, then per-channel max
//   BLOCK_MEAN  [head_dim]: per-channel mean
//   BLOCK_MAX   [head_dim]: per-channel max
//   FIXED       [anchor_num][head_dim]: the keys at p_i = (i * valid) / anchor_num (integer
//               division), which repeats tokens when valid < anchor_num and never leaves the
//               valid range; positions move as a partial block fills
//   DYNAMIC     [anchor_num][head_dim]: the keys of highest importance, in descending order,
//               ties to the lower token; with valid < anchor_num the last one chosen repeats
// importance: [valid tokens] of this block, read for DYNAMIC only. Throws for a block
// without valid tokens and for DYNAMIC without importance.
template <typename T>
std::vector<double> reference_block_anchors(const KVView<T>& kv, int seq, int kv_head, int block, AnchorKind kind,
                                            int anchor_num, const double* importance = nullptr) {
  const int valid = block_valid_tokens(kv.length(seq, kv_head), kv.block_len, block);
  detail::require_valid_block(valid, seq, block);
  return detail::block_anchors_from(valid, kv.head_dim, kind, anchor_num, importance, [&](int t) {
    return kv.k + kv.offset(seq, kv_head, block * kv.block_len + t);
  });
}

// The same over quantized storage: from the keys' dequantized values (QuantKVView::row),
// so that a block's anchors do not depend on how its values are stored beyond their
// rounding.
inline std::vector<double> reference_block_anchors(const QuantKVView& kv, int seq, int kv_head, int block,
                                                   AnchorKind kind, int anchor_num,
                                                   const double* importance = nullptr) {
  const int valid = block_valid_tokens(kv.length(seq, kv_head), kv.codes.block_len, block);
  detail::require_valid_block(valid, seq, block);
  std::vector<float> row(kv.head_dim);
  return detail::block_anchors_from(valid, kv.head_dim, kind, anchor_num, importance, [&](int t) {
    kv.row(false, seq, kv_head, block * kv.codes.block_len + t, row.data());
    return static_cast<const float*>(row.data());
  });
}

// Raw score (before the softmax scale) of a block for query head q [head_dim]:
//   QUEST        sum_d max(q_d * min_d, q_d * max_d), an upper bound of q.k over the block
//   MEAN, MAX    q . anchor
//   FIXED, DYNAMIC  the max over the anchors of q . anchor_i
template <typename T>
double reference_anchor_score(const T* q, const std::vector<double>& anchors, AnchorKind kind, int head_dim) {
  if (kind == AnchorKind::kQuest) {
    double s = 0;
    for (int c = 0; c < head_dim; ++c) {
      const double qc = detail::to_double(q[c]);
      s += std::max(qc * anchors[c], qc * anchors[head_dim + c]);
    }
    return s;
  }
  double best = -std::numeric_limits<double>::infinity();
  for (std::size_t a = 0; a < anchors.size(); a += head_dim) best = std::max(best, detail::dot(q, &anchors[a], head_dim));
  return best;
}

}  // namespace ekv
