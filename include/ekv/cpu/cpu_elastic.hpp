#pragma once
// CpuElasticDecode: elastic decode over a host-resident paged cache, the CPU counterpart
// of ElasticDecode. Anchors and selection run on the host through the float64 references
// (elastic/reference_anchors.hpp, reference_select.hpp): exact to the definitions, not
// tuned for speed. Attention is cpu_decode over a block-sparse view of the selected
// blocks, with tables built on the host. Anchors are kept per (sequence, kv head, logical
// block) and recomputed only for the blocks an append touched. View is KVView<T> or a
// QuantKVView (quantized storage, T the queries' and outputs' type): anchors come from the
// keys' dequantized values, attention reads the stored codes.

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/error.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/thread_pool.hpp"
#include "ekv/elastic/block_sparse_view.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/reference_anchors.hpp"
#include "ekv/elastic/reference_select.hpp"

namespace ekv {

template <typename T, typename View = KVView<T>>
class CpuElasticDecode {
 public:
  // kv: the paged host cache (shape and capacity; contents are read by the calls below).
  // Throws ekv::Error for a view that is not paged, per-query-head selection (QHEAD) or
  // DYNAMIC anchors, which need importance this class does not record.
  CpuElasticDecode(const View& kv, int q_heads, const ElasticPolicy& policy)
      : policy_(policy),
        q_heads_(q_heads),
        kv_heads_(block_layout(kv).kv_heads),
        batch_(block_layout(kv).batch),
        max_blocks_(block_layout(kv).max_blocks_per_seq) {
    if (block_layout(kv).block_table == nullptr) throw Error("CpuElasticDecode: the cache view must be paged");
    if (policy.config().retrieval == RetrievalType::kQHead || policy.config().anchor == AnchorKind::kDynamic) {
      throw Error("CpuElasticDecode: supports one selection per layer or kv head and anchors quest, block_mean, "
                  "block_max or fixed");
    }
    if (q_heads < 1 || q_heads % kv_heads_ != 0) {
      throw Error("CpuElasticDecode: q_heads=" + std::to_string(q_heads) + " must be a positive multiple of kv_heads=" +
                  std::to_string(kv_heads_));
    }
    const std::size_t rows = static_cast<std::size_t>(batch_) * kv_heads_;
    anchors_.resize(rows * max_blocks_);
    selection_.resize(rows);
    blocks_then_.assign(batch_, 0);
    attended_.resize(rows);
    tables_.resize(rows * max_blocks_);
    lengths_.resize(rows);
  }

  // Anchors of every block of every sequence, e.g. after a prefill.
  void build_anchors(CPUInfer& pool, const View& kv) { update_anchors(pool, kv, std::vector<int>(batch_, 0)); }
  // After an append: recomputes the blocks holding tokens from[b] .. lengths[b] - 1, where
  // from [batch] holds the lengths before the append.
  void update_anchors(CPUInfer& pool, const View& kv, const std::vector<int>& from) {
    if (from.size() != static_cast<std::size_t>(batch_)) {
      throw Error("CpuElasticDecode::update_anchors: needs one length per sequence");
    }
    pool.parallel_for(0, std::int64_t{batch_} * kv_heads_, [&](std::int64_t row) {
      const int b = static_cast<int>(row / kv_heads_), h = static_cast<int>(row % kv_heads_);
      const int len = kv.length(b, h), block_len = block_layout(kv).block_len;
      for (int block = from[b] / block_len; block < sequence_blocks(len, block_len); ++block) {
        anchors_[row * max_blocks_ + block] =
            reference_block_anchors(kv, b, h, block, policy_.config().anchor, policy_.config().anchor_num);
      }
    });
  }

  // Scores every block from its anchors and selects sinks + window + top-k. q: [batch][q_heads][head_dim].
  void select(CPUInfer& pool, const View& kv, const T* q) {
    select_from(pool, kv, q, [&](int b, int h, int block) -> const std::vector<double>& {
      return anchors_[(static_cast<std::size_t>(b) * kv_heads_ + h) * max_blocks_ + block];
    });
  }
  // select() with anchors kept elsewhere (a KVCache's, in its own dtype): anchors(seq,
  // kv_head, block) returns that block's anchors as reference_block_anchors lays them out,
  // as std::vector<double> (or a reference to one). Called from the pool's threads, one
  // sequence per thread at a time.
  template <typename Anchors>
  void select_from(CPUInfer& pool, const View& kv, const T* q, Anchors&& anchors) {
    const ElasticConfig& config = policy_.config();
    const int group = q_heads_ / kv_heads_;
    pool.parallel_for(0, batch_, [&](std::int64_t b) {
      const int n = sequence_blocks(kv.length(static_cast<int>(b), 0), block_layout(kv).block_len);
      std::vector<double> scratch;
      const auto scores = reference_granule_scores_from(
          q + b * q_heads_ * kv.head_dim, q_heads_, kv_heads_, kv.head_dim, n, config,
          [&](int h, int block) -> const std::vector<double>& {
            if constexpr (std::is_reference_v<decltype(anchors(0, 0, 0))>) {
              return anchors(static_cast<int>(b), h, block);
            } else {
              scratch = anchors(static_cast<int>(b), h, block);
              return scratch;
            }
          });
      for (int h = 0; h < kv_heads_; ++h) {
        selection_[b * kv_heads_ + h] =
            reference_select_blocks(scores[granule_of(config.retrieval, h * group, group)], policy_.counts(n));
      }
      blocks_then_[b] = n;
    });
    selected_once_ = true;
  }

  // Exact attention over the last selection plus the blocks appended since; o and lse as
  // for cpu_decode.
  void attend(CPUInfer& pool, const View& kv, const T* q, T* o, float* lse) {
    if (!selected_once_) throw Error("CpuElasticDecode::attend: no selection yet; the first step must select");
    for (int b = 0; b < batch_; ++b) {
      for (int h = 0; h < kv_heads_; ++h) {
        const std::size_t row = static_cast<std::size_t>(b) * kv_heads_ + h;
        const auto& layout = block_layout(kv);
        const int len = kv.length(b, h), block_len = layout.block_len;
        attended_[row] = reference_reuse_selection(selection_[row], blocks_then_[b], sequence_blocks(len, block_len));
        lengths_[row] = 0;
        for (std::size_t i = 0; i < attended_[row].size(); ++i) {
          tables_[row * max_blocks_ + i] = static_cast<std::int32_t>(layout.block_id(b, h, attended_[row][i]));
          lengths_[row] += block_valid_tokens(len, block_len, attended_[row][i]);
        }
      }
    }
    cpu_decode<T>(pool, block_sparse_view(kv, tables_.data(), lengths_.data(), max_blocks_), q, q_heads_, o, lse);
  }

  // Decode step `step` (0 at the first): selects when the config's token_step says so, then attends.
  void run(CPUInfer& pool, const View& kv, const T* q, T* o, float* lse, int step = 0) {
    if (policy_.config().refreshes_selection(step)) select(pool, kv, q);
    attend(pool, kv, q, o, lse);
  }

  // The last step's blocks of (seq, kv head): ascending logical blocks.
  const std::vector<int>& attended(int seq, int kv_head) const {
    return attended_[static_cast<std::size_t>(seq) * kv_heads_ + kv_head];
  }
  const ElasticPolicy& policy() const { return policy_; }

 private:
  ElasticPolicy policy_;
  int q_heads_, kv_heads_, batch_, max_blocks_;
  bool selected_once_ = false;
  std::vector<std::vector<double>> anchors_;    // [batch][kv_heads][max_blocks], float64 as the references keep them
  std::vector<std::vector<int>> selection_;     // [batch][kv_heads] at the last refresh
  std::vector<int> blocks_then_;                // [batch]: blocks at the last refresh
  std::vector<std::vector<int>> attended_;      // [batch][kv_heads] of the last step
  std::vector<std::int32_t> tables_, lengths_;  // the block-sparse view's
};

}  // namespace ekv
