#pragma once
// Float64 references of elastic attention, the semantics the GPU kernels match: attention
// over selected blocks, a batch's elastic decode, and the DYNAMIC importance update.
// Anchors and scores are in reference_anchors.hpp, selection in reference_select.hpp.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/reference.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/error.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/reference_anchors.hpp"
#include "ekv/elastic/reference_select.hpp"

namespace ekv {

// Attention of one query head q [head_dim] over exactly the tokens of `blocks` of (seq,
// kv_head): ascending logical block indices below sequence_blocks(length), the last block
// clipped at the length. It merges reference_attend's state of each block, so it is
// reference_attend's math, not a copy of it. An empty list gives o = 0 and lse = -inf
// (natural log). Throws for a list that is not ascending or leaves the sequence.
template <typename T>
RefState reference_attend_blocks(const KVView<T>& kv, const T* q, int seq, int kv_head, const std::vector<int>& blocks,
                                 double scale) {
  const int length = kv.length(seq, kv_head);
  std::vector<RefState> parts;
  parts.reserve(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const int b = blocks[i];
    if (b < 0 || b >= sequence_blocks(length, kv.block_len) || (i > 0 && b <= blocks[i - 1])) {
      throw Error("reference_attend_blocks: block " + std::to_string(b) + " at list index " + std::to_string(i) +
                  " of sequence " + std::to_string(seq) + " is out of order or past its " + std::to_string(length) +
                  " tokens");
    }
    const int begin = b * kv.block_len;
    parts.push_back(reference_attend(kv, q, seq, kv_head, begin, begin + block_valid_tokens(length, kv.block_len, b),
                                     scale));
  }
  return reference_merge(parts, kv.head_dim);
}

// Elastic decode for a batch. q: [batch][q_heads][head_dim]; selections: [batch][granules]
// block lists (num_granules() of the retrieval type); query head h of sequence s attends
// selections[s][granule_of(retrieval, h, group)]. Returns states [batch][q_heads].
template <typename T>
std::vector<RefState> reference_elastic_decode(const KVView<T>& kv, const T* q, int q_heads,
                                               const std::vector<std::vector<std::vector<int>>>& selections,
                                               RetrievalType retrieval, double scale) {
  const int group = q_heads / kv.kv_heads;
  if (selections.size() != static_cast<std::size_t>(kv.batch)) {
    throw Error("reference_elastic_decode: " + std::to_string(selections.size()) + " selections for a batch of " +
                std::to_string(kv.batch));
  }
  std::vector<RefState> out;
  out.reserve(static_cast<std::size_t>(kv.batch) * q_heads);
  for (int s = 0; s < kv.batch; ++s) {
    for (int h = 0; h < q_heads; ++h) {
      const T* qh = q + (static_cast<std::size_t>(s) * q_heads + h) * kv.head_dim;
      out.push_back(reference_attend_blocks(kv, qh, s, h / group, selections[s].at(granule_of(retrieval, h, group)),
                                            scale));
    }
  }
  return out;
}

// After an exact decode step of sequence seq with q [q_heads][head_dim]: importance[h][t] +=
// the softmax weight of token t, summed over the query heads of kv head h's group (DYNAMIC
// anchors are per kv head, so one weight per kv head serves the whole group). Rows of
// importance [kv_heads][tokens] grow with zeros to the sequence's length first: tokens
// appended since the last update have had no weight yet.
template <typename T>
void reference_update_importance(const KVView<T>& kv, const T* q, int q_heads, int seq, double scale,
                                 std::vector<std::vector<double>>& importance) {
  const int group = q_heads / kv.kv_heads;
  importance.resize(kv.kv_heads);
  for (int h = 0; h < kv.kv_heads; ++h) {
    importance[h].resize(std::max<std::size_t>(importance[h].size(), kv.length(seq, h)), 0.0);
  }
  for (int h = 0; h < q_heads; ++h) {
    const T* qh = q + static_cast<std::size_t>(h) * kv.head_dim;
    const int length = kv.length(seq, h / group);
    const double lse = reference_attend(kv, qh, seq, h / group, 0, length, scale).lse;
    // a one-token range's lse is that token's score
    for (int t = 0; t < length; ++t) {
      importance[h / group][t] += std::exp(reference_attend(kv, qh, seq, h / group, t, t + 1, scale).lse - lse);
    }
  }
}

}  // namespace ekv
