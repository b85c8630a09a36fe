#pragma once
// ElasticDecode: one elastic decode step over a paged cache, sized once: score every
// block from its anchors, select sinks + window + top-k per granule, gather the selected
// blocks into a block-sparse view and run exact decode over it. Every buffer is allocated
// at construction, so run() never allocates or synchronizes and a step can be captured
// in a CUDA Graph.

#include <cstdint>

#include "ekv/attention/decode.cuh"
#include "ekv/core/device_buffer.hpp"
#include "ekv/elastic/block_sparse.cuh"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/select.cuh"

namespace ekv {

template <typename T>
class ElasticDecode {
 public:
  // problem: the dense decode problem (max_seq_len: the longest sequence); the block
  // counts come from the policy at that length, so a shorter sequence of a ragged batch
  // may keep all its blocks. Throws ekv::Error for what selection or decode cannot do.
  ElasticDecode(const DecodeProblem& problem, int block_len, const ElasticPolicy& policy, const DeviceInfo& device,
                const Stream& stream)
      : policy_(policy), block_len_(block_len) {
    if (block_len < 1) throw Error("ElasticDecode: block_len must be >= 1");
    const int max_blocks = sequence_blocks(std::max(1, problem.max_seq_len), block_len);
    if (Support s = select_supported(policy.config(), max_blocks, problem.head_dim); !s) {
      throw Error("ElasticDecode: " + s.why);
    }
    counts_ = policy.counts(max_blocks);
    max_selected_ = std::max(1, counts_.total());
    DecodeProblem sparse = problem;
    sparse.max_seq_len = max_selected_ * block_len;
    plan_ = plan_decode(sparse, device);
    const std::size_t rows = static_cast<std::size_t>(problem.batch) * problem.kv_heads;
    scores_ = DeviceBuffer<float>(rows * max_blocks);
    selected_ = DeviceBuffer<std::int32_t>(rows * max_selected_);
    num_selected_ = DeviceBuffer<std::int32_t>(rows);
    tables_ = DeviceBuffer<std::int32_t>(rows * max_selected_);
    lengths_ = DeviceBuffer<std::int32_t>(rows);
    workspace_ = make_decode_workspace(plan_, stream);
  }

  // One step: select, then attend. kv: the paged cache (its max_blocks_per_seq covering
  // the planned length); anchors current (build_anchors, update_anchors); o and lse as for
  // run_decode.
  void run(const KVView<T>& kv, const T* q, const float* anchors, T* o, float* lse, const Stream& stream) {
    select(kv, q, anchors, stream);
    attend(kv, q, o, lse, stream);
  }
  // Scores every block, selects and gathers the selection into the block-sparse view.
  void select(const KVView<T>& kv, const T* q, const float* anchors, const Stream& stream) {
    score_blocks<T>(kv, q, plan_.problem.q_heads, anchors, policy_.config(), scores_.data(), stream);
    select_blocks<T>(kv, scores_.data(), policy_.config(), counts_, selected_.data(), num_selected_.data(),
                     max_selected_, stream);
    gather_selected_blocks<T>(kv, selected_.data(), num_selected_.data(), max_selected_, tables_.data(),
                              lengths_.data(), stream);
  }
  // Exact attention over the last selection's blocks.
  void attend(const KVView<T>& kv, const T* q, T* o, float* lse, const Stream& stream) {
    run_decode<T>(plan_, block_sparse_view<T>(kv, tables_.data(), lengths_.data(), max_selected_), q, o, lse,
                  workspace_.data(), stream);
  }

  const BlockCounts& counts() const { return counts_; }
  int max_selected() const { return max_selected_; }
  // The last run's selection: int32 [batch][kv_heads][max_selected] logical blocks,
  // ascending, and their counts [batch][kv_heads].
  const std::int32_t* selected() const { return selected_.data(); }
  const std::int32_t* num_selected() const { return num_selected_.data(); }
  // K and V bytes one sequence of seq_len tokens reads per step, anchors included.
  BytesRead bytes_read(int seq_len) const {
    return policy_.bytes_read(seq_len, block_len_, plan_.problem.kv_heads, plan_.problem.head_dim, kDTypeOf<T>);
  }

 private:
  ElasticPolicy policy_;
  int block_len_ = 0;
  BlockCounts counts_;
  int max_selected_ = 1;
  DecodePlan plan_;
  DeviceBuffer<float> scores_;
  DeviceBuffer<std::int32_t> selected_, num_selected_, tables_, lengths_;
  DeviceBuffer<unsigned char> workspace_;
};

}  // namespace ekv
