#pragma once
// ElasticDecode: one elastic decode step over a paged cache, sized once. A refreshing step
// scores every block from its anchors (score_blocks), selects sinks + window + top-k per
// granule (select_blocks, which writes the block-sparse rows of the selection itself) and
// runs exact decode over them: three launches, each a programmatic dependent of the one
// before (launch_dependent). Steps that do not refresh the selection
// (ElasticConfig::token_step) gather the last selection plus the blocks appended since,
// then decode. (The fused
// score_and_select_blocks, one launch writing the sparse rows itself, measured slower on
// the H200 at batch 1: RESULTS.md, issue 16.) Every buffer is allocated at construction,
// so a step never allocates or synchronizes and can be captured in a CUDA Graph (one graph
// for refreshing steps, one for the others).
//
// Where elastic attention cannot pay (ElasticProblem::attends_exactly: the budget covers
// most blocks, or skips fewer bytes than selection costs), the step attends exactly, with
// one decode launch; attends_exactly() says so.
//
// Layers that share a selection (ElasticConfig::layer_step, layer_offset) and whose
// caches share the block table use one ElasticDecode for all of them: run_layer() selects
// on the layers that own a selection and reuses it on the others.
//
// QHEAD gives each query head its own blocks: decode then runs with group 1 over a
// per-query-head view (qhead_sparse_view), so a group no longer shares its K and V loads.
//
// Over quantized storage (ElasticProblem::kv_storage: FP8, Q8_0, Q4_0) the same step
// takes a QuantKVView: selection reads only its block table and lengths, and the sparse
// decode is the quantized kernel (decode_quant.cuh) over block_sparse_view's narrowing of
// codes and scales; the anchors are the caller's, in T (computed from the dequantized
// keys, so selection does not depend on the storage). LAYER and KVHEAD only.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_quant.cuh"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/elastic/block_sparse.cuh"
#include "ekv/elastic/elastic_problem.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/select.cuh"

namespace ekv {

namespace detail {

// What selection and the gather read of a cache: its block table, lengths and shapes,
// never K or V. A dense view is its own; a quantized view's is its codes' block arithmetic
// with the values' head_dim, and no K, V or strides (only QHEAD's head units need those).
template <typename T>
const KVView<T>& selection_view(const KVView<T>& kv) {
  return kv;
}
template <typename T>
KVView<T> selection_view(const QuantKVView& kv) {
  const KVView<std::uint8_t>& c = kv.codes;
  KVView<T> view;
  view.block_table = c.block_table;
  view.lengths = c.lengths;
  view.batch = c.batch;
  view.kv_heads = c.kv_heads;
  view.head_dim = kv.head_dim;
  view.block_len = c.block_len;
  view.max_blocks_per_seq = c.max_blocks_per_seq;
  view.block_shift = c.block_shift;
  view.table_seq_stride = c.table_seq_stride;
  view.table_head_stride = c.table_head_stride;
  view.length_seq_stride = c.length_seq_stride;
  view.length_head_stride = c.length_head_stride;
  view.page_indptr = c.page_indptr;
  view.last_page_len = c.last_page_len;
  return view;
}

}  // namespace detail

template <typename T>
class ElasticDecode {
 public:
  // Sized for `problem` (each sequence's block counts come from the policy at its own
  // length) on `device`; every buffer is allocated here. Throws ekv::Error with
  // supports(problem)'s sentence for what selection or decode cannot do.
  ElasticDecode(const ElasticProblem& problem, const DeviceInfo& device, const Stream& stream)
      : problem_(problem), device_(device) {
    if (Support s = supports(problem); !s) throw Error("ElasticDecode: " + s.why);
    if (problem.decode.dtype != kDTypeOf<T>) {
      throw Error(std::string("ElasticDecode<") + to_string(kDTypeOf<T>) + ">: the problem is for " +
                  to_string(problem.decode.dtype));
    }
    const DecodeProblem& dense = problem.decode;
    const int block_len = problem.block_len;
    const int max_blocks = problem.max_blocks();
    max_blocks_ = max_blocks;
    counts_ = problem.policy.counts(max_blocks);
    q_heads_ = dense.q_heads;
    kv_heads_ = dense.kv_heads;
    exact_ = problem.attends_exactly();
    if (exact_) {
      plan_ = plan_for(dense, device);
      workspace_ = make_decode_workspace(plan_, stream);
      return;
    }
    max_selected_ = std::max(1, counts_.total());
    const long long gained = static_cast<long long>(problem.policy.config().token_step) * problem.max_new_tokens;
    max_attended_ = static_cast<int>(
        std::min<long long>(max_blocks, max_selected_ + (gained + block_len - 1) / block_len + 1));
    per_query_ = problem.policy.config().retrieval == RetrievalType::kQHead;
    rows_per_seq_ = per_query_ ? dense.q_heads : dense.kv_heads;
    DecodeProblem sparse = dense;
    sparse.max_seq_len = max_attended_ * block_len;
    sparse.kv_heads = rows_per_seq_;
    plan_ = plan_for(sparse, device);
    const std::size_t rows = static_cast<std::size_t>(dense.batch) * rows_per_seq_;
    scores_ = DeviceBuffer<float>(rows * max_blocks);
    selected_ = DeviceBuffer<std::int32_t>(rows * max_selected_);
    num_selected_ = DeviceBuffer<std::int32_t>(rows);
    blocks_then_ = DeviceBuffer<std::int32_t>(rows);
    attended_ = DeviceBuffer<std::int32_t>(rows * max_attended_);
    num_attended_ = DeviceBuffer<std::int32_t>(rows);
    tables_ = DeviceBuffer<std::int32_t>(rows * max_attended_);
    lengths_ = DeviceBuffer<std::int32_t>(rows);
    num_selected_.fill_bytes(0, stream);
    blocks_then_.fill_bytes(0, stream);
    // -1 in every slot and 0 in every count until a step writes them: slots past a row's
    // count hold -1 or an earlier step's block, never undefined memory (a caller may copy
    // them whole)
    selected_.fill_bytes(0xFF, stream);
    attended_.fill_bytes(0xFF, stream);
    num_attended_.fill_bytes(0, stream);
    tables_.fill_bytes(0xFF, stream);
    lengths_.fill_bytes(0, stream);
    workspace_ = make_decode_workspace(plan_, stream);
  }
  // The same, from its parts: problem.max_seq_len the longest sequence, max_new_tokens
  // the tokens a sequence gains per step.
  ElasticDecode(const DecodeProblem& problem, int block_len, const ElasticPolicy& policy, const DeviceInfo& device,
                const Stream& stream, int max_new_tokens = 1, ExactFallback fallback = ExactFallback::kAuto)
      : ElasticDecode(ElasticProblem{problem, block_len, policy, max_new_tokens, fallback}, device, stream) {}

  // Decode step `step` (0 at the sequence's first): selects when the config's token_step
  // says so, then attends to the last selection plus the blocks appended since. kv: the
  // paged cache (its max_blocks_per_seq covering the planned length): a KVView<T>, or a
  // QuantKVView where the problem names a quantized kv_storage; anchors current
  // (build_anchors, update_anchors); o and lse as for run_decode.
  // The first step run must refresh (attend() throws otherwise).
  template <typename View>
  void run(const View& kv, const T* q, const T* anchors, T* o, float* lse, const Stream& stream, int step = 0) {
    if (problem_.policy.config().refreshes_selection(step)) {
      select(kv, q, anchors, stream);  // the rows too: no gather
      decode_selection(kv, q, o, lse, stream);
      return;
    }
    attend(kv, q, o, lse, stream);
  }
  // Layer `layer` of decode step `step`, the layers sharing selections as the config's
  // layer_step and layer_offset say: selects when this layer owns its selection and the
  // step refreshes, then attends with this layer's view, query and anchors.
  template <typename View>
  void run_layer(const View& kv, const T* q, const T* anchors, T* o, float* lse, const Stream& stream, int step,
                 int layer) {
    const ElasticConfig& config = problem_.policy.config();
    if (config.selection_layer(layer) == layer && config.refreshes_selection(step)) {
      select(kv, q, anchors, stream);  // the rows too: no gather
      decode_selection(kv, q, o, lse, stream);
      return;
    }
    attend(kv, q, o, lse, stream);
  }
  // Scores every block and selects, writing the selection's block-sparse rows of this
  // view (what attend would gather right after); nothing where the step attends exactly.
  template <typename View>
  void select(const View& kv, const T* q, const T* anchors, const Stream& stream) {
    check_view(kv, "select");
    selected_once_ = true;
    if (exact_) return;
    const KVView<T>& layout = detail::selection_view<T>(kv);
    score_blocks<T>(layout, q, q_heads_, anchors, problem_.policy.config(), scores_.data(), device_, stream);
    SelectionOut out;
    out.selected = selected_.data();
    out.num_selected = num_selected_.data();
    out.max_selected = max_selected_;
    out.blocks_then = blocks_then_.data();
    out.sparse = sparse_rows();
    select_blocks<T>(layout, q_heads_, scores_.data(), problem_.policy, out, stream);
  }
  // Attention over the last selection plus the blocks appended since: a gather, then
  // decode (exact decode alone where the step attends exactly).
  template <typename View>
  void attend(const View& kv, const T* q, T* o, float* lse, const Stream& stream) {
    check_view(kv, "attend");
    if (!selected_once_) throw Error("ElasticDecode::attend: no selection yet; the first step must select");
    if (!exact_) {
      const SelectionRows selection{selected_.data(), num_selected_.data(), max_selected_, rows_per_seq_,
                                    blocks_then_.data()};
      gather_selection<T>(detail::selection_view<T>(kv), selection, sparse_rows(), stream);
    }
    decode_rows(kv, q, o, lse, stream);
  }
  // Decode over the block-sparse rows the last select() or attend() wrote (attend without
  // the gather: for timing the stages, or a second query over the same blocks).
  template <typename View>
  void decode_selection(const View& kv, const T* q, T* o, float* lse, const Stream& stream) {
    check_view(kv, "decode_selection");
    if (!selected_once_) throw Error("ElasticDecode::decode_selection: no selection yet; the first step must select");
    decode_rows(kv, q, o, lse, stream);
  }

  const ElasticProblem& problem() const { return problem_; }
  // Whether every step attends exactly (ElasticProblem::attends_exactly): the policy's
  // budget could not pay for its selection at the planned shape.
  bool attends_exactly() const { return exact_; }
  // Elements of T the anchors of a pool of num_pool_blocks blocks hold (build_anchors'
  // layout, T [num_pool_blocks][kv_heads][values]); anchors must be 32-byte aligned.
  std::size_t anchor_elems(std::size_t num_pool_blocks) const { return problem_.anchor_elems(num_pool_blocks); }
  // Device memory this step owns: scores, selections, sparse rows and decode's workspace,
  // all allocated at construction.
  std::size_t workspace_bytes() const {
    return scores_.size_bytes() + selected_.size_bytes() + num_selected_.size_bytes() + blocks_then_.size_bytes() +
           attended_.size_bytes() + num_attended_.size_bytes() + tables_.size_bytes() + lengths_.size_bytes() +
           workspace_.size_bytes();
  }
  // The counts at the planned length; a shorter sequence's come from the policy at its own.
  const BlockCounts& counts() const { return counts_; }
  int max_attended() const { return max_attended_; }
  // The last step's blocks: int32 [batch][rows][max_attended] logical blocks, ascending,
  // and their counts [batch][rows], where rows is q_heads for QHEAD and kv_heads otherwise;
  // null where the step attends exactly (every block). Slots past a row's count hold -1 or
  // an earlier step's block; before the first step, every slot is -1 and every count 0.
  const std::int32_t* attended() const { return attended_.data(); }
  const std::int32_t* num_attended() const { return num_attended_.data(); }
  // K and V bytes one sequence of seq_len tokens reads on a refreshing step, anchors
  // included (a reusing step reads BytesRead::kv); every byte where the step attends exactly.
  // Quantized rows count their codes and scales (kv_row_bytes); anchors are T.
  BytesRead bytes_read(int seq_len) const {
    const int d = plan_.problem.head_dim;
    if (exact_) return {2 * static_cast<std::size_t>(seq_len) * kv_heads_ * kv_row_bytes(problem_.storage(), d), 0};
    return problem_.policy.bytes_read(seq_len, problem_.block_len, kv_heads_, d, problem_.storage(), kDTypeOf<T>);
  }

 private:
  // The decode plan for p over the problem's storage.
  DecodePlan plan_for(const DecodeProblem& p, const DeviceInfo& device) const {
    const KVStorage storage = problem_.storage();
    return is_quantized(storage) ? plan_quant_decode(p, storage, device) : plan_decode(p, device);
  }
  // Exact decode over the whole cache, or over the sparse rows (no checks: callers made them).
  void decode_rows(const KVView<T>& kv, const T* q, T* o, float* lse, const Stream& stream) {
    if (exact_) {
      run_decode<T>(plan_, kv, q, o, lse, workspace_.data(), stream);
      return;
    }
    const KVView<T> sparse = per_query_
                                 ? qhead_sparse_view<T>(kv, q_heads_, tables_.data(), lengths_.data(), max_attended_)
                                 : block_sparse_view<T>(kv, tables_.data(), lengths_.data(), max_attended_);
    run_decode<T>(plan_, sparse, q, o, lse, workspace_.data(), stream);
  }
  void decode_rows(const QuantKVView& kv, const T* q, T* o, float* lse, const Stream& stream) {
    if (exact_) {
      run_decode<T>(plan_, kv, q, o, lse, workspace_.data(), stream);
      return;
    }
    run_decode<T>(plan_, block_sparse_view(kv, tables_.data(), lengths_.data(), max_attended_), q, o, lse,
                  workspace_.data(), stream);
  }
  SparseRows sparse_rows() {
    return {tables_.data(), lengths_.data(), max_attended_, per_query_, attended_.data(), num_attended_.data()};
  }
  template <typename View>
  void check_view(const View& view, const char* what) const {
    constexpr bool kQuantized = std::is_same_v<View, QuantKVView>;
    if (kQuantized != is_quantized(problem_.storage())) {
      throw Error(std::string("ElasticDecode::") + what + ": the step is planned for kv storage " +
                  to_string(problem_.storage()) + ", and the view is " + (kQuantized ? "quantized" : "dense"));
    }
    const KVView<T>& kv = detail::selection_view<T>(view);
    const DecodeProblem& p = plan_.problem;
    if (kv.batch != p.batch || kv.kv_heads != kv_heads_ || kv.head_dim != p.head_dim ||
        kv.block_len != problem_.block_len || kv.max_blocks_per_seq > max_blocks_ || kv.block_table == nullptr) {
      throw Error(std::string("ElasticDecode::") + what + ": the view's batch, kv_heads, head_dim or block_len differ " +
                  "from the plan's, it is not paged, or it holds more than " + std::to_string(max_blocks_) +
                  " blocks per sequence");
    }
  }

  ElasticProblem problem_;
  DeviceInfo device_;
  int q_heads_ = 0;
  int kv_heads_ = 0;
  bool exact_ = false;
  bool per_query_ = false;
  int rows_per_seq_ = 0;  // selection rows: q_heads for QHEAD, else kv_heads
  int max_blocks_ = 0;
  bool selected_once_ = false;
  BlockCounts counts_;
  int max_selected_ = 1;
  int max_attended_ = 1;
  DecodePlan plan_;
  DeviceBuffer<float> scores_;
  DeviceBuffer<std::int32_t> selected_, num_selected_, blocks_then_, attended_, num_attended_, tables_, lengths_;
  DeviceBuffer<unsigned char> workspace_;
};

}  // namespace ekv
