#pragma once
// TieredKVCache: a paged KV cache larger than its GPU budget. Every block's home is a
// pinned host pool; a GPU pool under a byte budget holds copies of the blocks that matter
// (each sequence's sinks and window, then the blocks selection keeps picking); the anchors
// of every block stay on the GPU, so selection scores all blocks there.
//
// What a GPU slot holds follows the retrieval: under LAYER (one selection for every head) a
// block with all its kv heads; under KVHEAD (each kv head its own blocks) one kv head's
// block, a *unit*: each (sequence, kv head) is then a row of its own (TierTable's sequence
// seq x kv_heads + head, with one kv head), so the GPU tier holds each head's own choice.
//
// One elastic step (attn), on the caller's stream S:
//   1. select on the GPU over every block (ElasticDecode::select over the anchors);
//   2. copy the selection to the host and wait for it (the only wait of a step: where each
//      selected block lives is decided on the host, in TierTable);
//   3. note the selection's recency and gather the selected blocks that are not resident;
//      the cost model below splits them between the GPU and the CPU. Those for the GPU are
//      copied in, in one copy_units launch on S before the decode: into a slot of their own
//      where a free or demotable one is (an in-step promotion: resident from this step on,
//      as the copy is ordered before every later read of the slot), else into a staging
//      part of the GPU pool for this step only. Those for the CPU are attended there
//      (cpu_decode on a CPUInfer, on a second stream, beside the GPU's decode);
//   4. decode the GPU's rows (resident and copied-in blocks, in logical order) and merge
//      the CPU's state through the LSE (merge_state_pair);
//   5. plan promotions of the host blocks the CPU attended (TierTable::plan_promotions) and
//      copy them in on a third stream, after this step; they become resident when a later
//      step finds their copy done. A step never waits for a promotion.
//
// The cost model, per step, over the host-resident bytes it must attend: x of them copied
// in cost x / copy rate + x / GPU decode rate, serially before the decode ends; the rest,
// h - x, on the CPU cost (h - x) / CPU rate + kCpuPathFixedUs beside the GPU's decode of
// its own g resident bytes and the x copied. The step's extra time is
// max(x (1/copy + 1/gpu), (h - x) / cpu + fixed - g / gpu), least where the two sides
// meet; the model takes the best of that x, all on the GPU and all on the CPU (HostPath
// kCopyIn and kCpu force one). The three rates are measured in the run: events around
// the copy and the decode, the CPU side's own clock, each an exponential average; until
// a way has been measured, the first steps with host bytes try each alone.
// TieredStepReport says what was chosen, predicted and moved.
//
// Exact attention over both tiers: attn_exact (HybridDecode over the same pools).
// Appends: append(), one token per sequence, on the GPU, all or nothing; a block that
// fills is written back to its host home on the copy stream.
// Not capturable in a CUDA Graph (step 2 waits on the host). Anchors: QUEST, BLOCK_MEAN,
// BLOCK_MAX or FIXED (update_anchors_at); half or bfloat16.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/merge_states.cuh"
#include "ekv/cache/tier_table.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/hybrid_decode.cuh"
#include "ekv/cpu/thread_pool.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/block_sparse_view.hpp"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/kernels/unit_copy.cuh"

namespace ekv {

// How a step attends the selected blocks that are not resident: split by the cost model
// (kAuto), all copied in (kCopyIn; what staging cannot hold goes to the CPU), all on the CPU.
enum class HostPath { kAuto, kCopyIn, kCpu };

inline const char* to_string(HostPath p) {
  switch (p) {
    case HostPath::kAuto: return "auto";
    case HostPath::kCopyIn: return "copy-in";
    case HostPath::kCpu: break;
  }
  return "cpu";
}

struct TieredConfig {
  int batch = 1;
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int block_len = 64;
  int max_seq_len = 0;               // the longest a sequence may grow
  std::size_t gpu_budget_bytes = 0;  // the GPU pool's K and V (blocks = budget / block bytes)
  ElasticPolicy policy{ElasticConfig{}};
  TierPolicy tiers;
  HostPath path = HostPath::kAuto;
  // Host blocks a row may copy in per step beyond those given slots of their own (the
  // staging part of the GPU pool is rows x this blocks); past it they go to the CPU.
  // 0: a quarter of the selection.
  int staging_blocks = 0;
};

// What one step did.
struct TieredStepReport {
  int units = 0;           // (block, kv head) pairs attended
  int host_units = 0;      // of them not resident at the step
  int copied_units = 0;    // copied in (into their own slots or staging)
  int promoted_units = 0;  // of them into slots of their own (in-step promotions)
  int cpu_units = 0;       // attended on the CPU
  // The way taken for host units: kCopyIn (all copied in, or none there), kCpu (all on
  // the CPU) or kAuto (split between them).
  HostPath path = HostPath::kCopyIn;
  double predicted_copy_us = 0;  // the model's extra cost of all on the GPU, all on the CPU, and
  double predicted_cpu_us = 0;   // the split taken (0 without host units)
  double predicted_us = 0;
  std::size_t copy_in_bytes = 0;      // K and V copied in for this step
  std::size_t promotion_bytes = 0;    // K and V of the promotions it started
  int promotions_started = 0;
  int promotions_completed = 0;       // found done since the last step (here, in append or settle)
  int resident_blocks = 0;            // slots in use after it (units under KVHEAD)
  // Where the time goes, microseconds. On the host, this step's: wait_us from attn's entry
  // until the selection is on the host (the select launch and its wait), plan_us the rest
  // of attn: book_us the bookkeeping and the split, launch_us enqueueing the step (the rest
  // is the promotions after it). On the GPU: select_us, this step's selection and
  // its copy to the host; copy_us, decode_us and tail_us (after the decode: waiting for the
  // CPU side, and the merge), the previous step's (events read once it is done); cpu_us the
  // CPU side's latest finished run (its task alone, not the dispatch around it).
  double wait_us = 0, plan_us = 0, book_us = 0, launch_us = 0;
  double select_us = 0, copy_us = 0, decode_us = 0, tail_us = 0, cpu_us = 0;
};

template <typename T>
class TieredKVCache {
 public:
  // Extra cost the CPU path carries besides its reads (q to the host, the task's dispatch,
  // its state back, the merge), in microseconds, added to the CPU side's estimate.
  static constexpr double kCpuPathFixedUs = 20.0;
  static constexpr double kRateAverage = 0.25;  // weight of a new measurement

  // Allocates both pools (the host pool for batch x max_seq_len tokens, pinned), the
  // anchors and every step buffer. pool runs the CPU path and must outlive this object.
  // Throws ekv::Error naming the argument for what the step cannot do.
  TieredKVCache(const TieredConfig& config, CPUInfer& pool, const DeviceInfo& device, const Stream& stream)
      : config_(config), pool_(&pool), device_(device) {
    static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                  "TieredKVCache: T must be half or bfloat16");
    const TieredConfig& c = config;
    if (c.batch < 1 || c.q_heads < 1 || c.kv_heads < 1 || c.head_dim < 1 || c.block_len < 1 || c.max_seq_len < 1) {
      throw Error("TieredKVCache: batch, q_heads, kv_heads, head_dim, block_len and max_seq_len must be >= 1");
    }
    if (c.policy.config().anchor == AnchorKind::kDynamic) {
      throw Error("TieredKVCache: anchor DYNAMIC is not supported (its importance is kept by pool block); use QUEST, "
                  "BLOCK_MEAN, BLOCK_MAX or FIXED");
    }
    if (c.policy.config().retrieval == RetrievalType::kQHead) {
      throw Error("TieredKVCache: retrieval QHEAD is not supported; use LAYER or KVHEAD");
    }
    if (c.staging_blocks < 0) throw Error("TieredKVCache: staging_blocks must be >= 0");
    if (c.q_heads % c.kv_heads != 0) throw Error("TieredKVCache: q_heads must be a multiple of kv_heads");
    // under KVHEAD each (sequence, kv head) is a row of its own: one kv head, its q heads
    fan_ = c.policy.config().retrieval == RetrievalType::kKvHead ? c.kv_heads : 1;
    ib_ = c.batch * fan_;
    ikv_ = c.kv_heads / fan_;
    iq_ = c.q_heads / fan_;
    max_blocks_ = sequence_blocks(c.max_seq_len, c.block_len);
    unit_elems_ = static_cast<std::size_t>(c.block_len) * c.head_dim;
    block_elems_ = unit_elems_ * ikv_;
    const std::size_t block_bytes = 2 * block_elems_ * sizeof(T);
    slots_ = static_cast<int>(std::min<std::size_t>(c.gpu_budget_bytes / block_bytes,
                                                    static_cast<std::size_t>(ib_) * max_blocks_));
    const DecodeProblem dense{kDTypeOf<T>, ib_, iq_, ikv_, c.head_dim, c.max_seq_len};
    const ElasticProblem problem{dense, c.block_len, c.policy, 1, ExactFallback::kNever};
    elastic_ = std::make_unique<ElasticDecode<T>>(problem, device, stream);
    max_attended_ = elastic_->max_attended();
    staging_ = c.staging_blocks > 0 ? std::min(c.staging_blocks, max_attended_) : std::max(1, max_attended_ / 4);
    tiers_ = std::make_unique<TierTable>(ib_, max_blocks_, slots_, c.tiers);

    const std::size_t all_blocks = static_cast<std::size_t>(ib_) * max_blocks_;
    host_k_ = PinnedBuffer<T>(all_blocks * block_elems_);
    host_v_ = PinnedBuffer<T>(all_blocks * block_elems_);
    const std::size_t gpu_blocks = static_cast<std::size_t>(slots_) + static_cast<std::size_t>(ib_) * staging_;
    gpu_k_ = DeviceBuffer<T>(gpu_blocks * block_elems_);
    gpu_v_ = DeviceBuffer<T>(gpu_blocks * block_elems_);
    anchors_ = DeviceBuffer<T>(elastic_->anchor_elems(all_blocks));
    std::vector<std::int32_t> ids(all_blocks);
    for (std::size_t i = 0; i < all_blocks; ++i) ids[i] = static_cast<std::int32_t>(i);
    ids_ = DeviceBuffer<std::int32_t>(all_blocks);
    ids_.copy_from(ids, stream);
    slot_table_host_ = PinnedBuffer<std::int32_t>(all_blocks);
    std::fill_n(slot_table_host_.data(), all_blocks, 0);
    slot_table_ = DeviceBuffer<std::int32_t>(all_blocks);
    slot_table_.fill_bytes(0, stream);
    lengths_ = DeviceBuffer<std::int32_t>(ib_);
    lengths_.fill_bytes(0, stream);
    from_ = DeviceBuffer<std::int32_t>(ib_);
    host_lengths_.assign(ib_, 0);

    const std::size_t rows = static_cast<std::size_t>(c.batch) * c.kv_heads;
    selection_host_ = PinnedBuffer<std::int32_t>(rows * max_attended_ + rows);
    sel_slot_.assign(rows * max_attended_, -1);
    gpu_rows_host_ = PinnedBuffer<std::int32_t>(rows * max_attended_ + rows);
    gpu_rows_ = DeviceBuffer<std::int32_t>(rows * max_attended_ + rows);
    cpu_table_.assign(rows * max_attended_, 0);
    cpu_lengths_.assign(rows, 0);
    // staged units, and every selected block promoted in step with its kv heads
    copy_in_ = PinnedBuffer<UnitCopy>(rows * staging_ + static_cast<std::size_t>(ib_) * max_attended_ * ikv_);
    promotions_ = PinnedBuffer<UnitCopy>(std::max(1, c.tiers.max_moves_per_step));
    seen_.assign(all_blocks, -1);
    to_copy_.assign(all_blocks, -1);

    DecodeProblem sparse = dense;
    sparse.max_seq_len = max_attended_ * c.block_len;
    plan_ = plan_decode(sparse, device);
    workspace_ = make_decode_workspace(plan_, stream);
    const std::size_t q_rows = static_cast<std::size_t>(c.batch) * c.q_heads;
    gpu_o_ = DeviceBuffer<T>(q_rows * c.head_dim);
    gpu_lse_ = DeviceBuffer<float>(q_rows);
    q_host_ = PinnedBuffer<T>(q_rows * c.head_dim);
    lse_offset_ = (q_rows * c.head_dim * sizeof(T) + 15) / 16 * 16;
    cpu_state_ = PinnedBuffer<unsigned char>(lse_offset_ + q_rows * sizeof(float));
    cpu_state_dev_ = DeviceBuffer<unsigned char>(cpu_state_.size_bytes());
    cpu_rate_ = std::make_shared<std::atomic<double>>(0.0);
    cpu_us_ = std::make_shared<std::atomic<double>>(0.0);
  }

  TieredKVCache(const TieredKVCache&) = delete;
  TieredKVCache& operator=(const TieredKVCache&) = delete;
  // Waits for the copy and CPU streams (never throws).
  ~TieredKVCache() {
    cudaStreamSynchronize(copy_stream_.get());
    cudaStreamSynchronize(cpu_stream_.get());
  }

  const TieredConfig& config() const { return config_; }
  const TierTable& tiers() const { return *tiers_; }
  int gpu_slots() const { return slots_; }
  int staging_blocks() const { return staging_; }
  int max_blocks_per_seq() const { return max_blocks_; }
  int length(int seq) const {
    check_seq(seq, "length");
    return tiers_->length(seq * fan_);
  }
  // What a GPU slot holds: K and V of a block's kv heads (all of them under LAYER, one
  // under KVHEAD), in bytes, and the kv heads of it.
  std::size_t block_bytes() const { return 2 * block_elems_ * sizeof(T); }
  int slot_kv_heads() const { return ikv_; }
  // The selection runs over TierTable's rows: batch x kv_heads sequences of one kv head
  // under KVHEAD, else batch sequences (attended() is [batch][kv_heads][max_attended] either way).
  const ElasticDecode<T>& elastic() const { return *elastic_; }
  // The host home of (seq, block)'s kv head `head`: T [block_len][head_dim] of K, and of V.
  // Write a prefill here, then call place(). The homes of one (seq, head)'s consecutive
  // blocks are host_block_stride() elements apart.
  T* host_k(int seq, int block, int head) { return host_k_.data() + host_unit(seq, block, head) * unit_elems_; }
  T* host_v(int seq, int block, int head) { return host_v_.data() + host_unit(seq, block, head) * unit_elems_; }
  std::size_t host_block_stride() const { return block_elems_; }
  // The anchors of every block, T [rows x max_blocks_per_seq][slot_kv_heads()][values] by
  // TierTable's host block (device memory).
  const T* anchors() const { return anchors_.data(); }

  // After a prefill written to the host homes: sets the lengths (int32 [batch]), builds
  // every block's anchors on the GPU from the host pool (read through unified
  // addressing), places the blocks (TierTable::place, scores as there, by TierTable's
  // rows) and copies the placed ones in. Returns when done.
  void place(Span<const std::int32_t> lengths, const Stream& stream, const float* scores = nullptr) {
    if (static_cast<int>(lengths.size()) != config_.batch) {
      throw Error("TieredKVCache::place: needs " + std::to_string(config_.batch) + " lengths, got " +
                  std::to_string(lengths.size()));
    }
    std::vector<std::int32_t> rows;
    for (const std::int32_t len : lengths) rows.insert(rows.end(), fan_, len);
    const std::vector<TierSlot> placed = tiers_->place(rows, config_.block_len, scores);
    host_lengths_ = rows;
    lengths_.copy_from(Span<const std::int32_t>(rows.data(), rows.size()), stream);
    build_anchors<T>(host_pool_view(ids_.data()), anchors_.data(), config_.policy.config(), stream);
    std::vector<UnitCopy> copies;
    for (const TierSlot& s : placed) {
      copies.push_back({tiers_->host_block(s.block.seq, s.block.block), s.slot});
      slot_table_host_.data()[tiers_->host_block(s.block.seq, s.block.block)] = s.slot;
    }
    DeviceBuffer<UnitCopy> list(std::max<std::size_t>(1, copies.size()));
    if (!copies.empty()) list.copy_from(copies, stream);
    copy_units(host_k_.data(), host_v_.data(), gpu_k_.data(), gpu_v_.data(), list.data(),
               static_cast<int>(copies.size()), block_elems_ * sizeof(T), stream);
    slot_table_.copy_from(Span<const std::int32_t>(slot_table_host_.data(), slot_table_host_.size()), stream);
    stream.synchronize();
  }

  // Appends one token per sequence: k_new, v_new T [batch][kv_heads][head_dim] in device
  // memory, ordered on `stream`; step: the decode step it belongs to (recency for
  // victims). New blocks take GPU slots (TierTable::append); the new tokens' blocks get
  // their anchors; blocks it fills are written back to the host on the copy stream.
  // Throws ekv::Error, having changed nothing, past a sequence's capacity or where no
  // slot is left (TierTable::append's sentence).
  void append(const T* k_new, const T* v_new, const Stream& stream, std::int64_t step) {
    if (k_new == nullptr || v_new == nullptr) throw Error("TieredKVCache::append: null k_new or v_new");
    poll_copies();
    for (int b = 0; b < config_.batch; ++b) {
      if (length(b) + 1 > max_blocks_ * config_.block_len) {
        throw Error("TieredKVCache::append: sequence " + std::to_string(b) + " is full (" +
                    std::to_string(length(b)) + " tokens)");
      }
    }
    std::vector<BlockRef> filled;
    const std::vector<int> one(ib_, 1);
    for (const TierSlot& s : tiers_->append(one, step, &filled)) {  // all rows or none
      const std::int32_t g = tiers_->host_block(s.block.seq, s.block.block);
      slot_table_host_.data()[g] = s.slot;
      EKV_CUDA_CHECK(cudaMemcpyAsync(slot_table_.data() + g, slot_table_host_.data() + g, sizeof(std::int32_t),
                                     cudaMemcpyHostToDevice, stream.get()),
                     "TieredKVCache::append: cannot update the block table");
    }
    for (int& len : host_lengths_) ++len;
    EKV_CUDA_CHECK(cudaMemcpyAsync(from_.data(), lengths_.data(), lengths_.size_bytes(), cudaMemcpyDeviceToDevice,
                                   stream.get()),
                   "TieredKVCache::append: cannot copy the lengths");
    const KVView<T> view = gpu_pool_view(slot_table_.data());
    append_kv<T>(view, k_new, v_new, 1, stream);
    update_anchors_at<T>(view, ids_.data(), anchors_.data(), config_.policy.config(), from_.data(), 1, stream);
    if (filled.empty()) return;
    appended_.record(stream);
    appended_.make_wait(copy_stream_);
    for (const BlockRef& f : filled) {
      const std::size_t host = static_cast<std::size_t>(tiers_->host_block(f.seq, f.block)) * block_elems_;
      const std::size_t gpu = static_cast<std::size_t>(tiers_->gpu_slot(f.seq, f.block)) * block_elems_;
      const std::size_t bytes = block_elems_ * sizeof(T);
      EKV_CUDA_CHECK(cudaMemcpyAsync(host_k_.data() + host, gpu_k_.data() + gpu, bytes, cudaMemcpyDeviceToHost,
                                     copy_stream_.get()),
                     "TieredKVCache::append: cannot write a block back");
      EKV_CUDA_CHECK(cudaMemcpyAsync(host_v_.data() + host, gpu_v_.data() + gpu, bytes, cudaMemcpyDeviceToHost,
                                     copy_stream_.get()),
                     "TieredKVCache::append: cannot write a block back");
    }
    auto done = std::make_unique<Event>(cudaEventDisableTiming);
    done->record(copy_stream_);
    write_backs_.push_back({std::move(done), std::move(filled)});
  }

  // One elastic decode step over both tiers: q, o T [batch][q_heads][head_dim], lse float
  // [batch][q_heads] (natural log), device memory, ordered on `stream`. Waits on the host
  // for the selection (step 2 above), so o is complete when the stream reaches it, not when
  // attn returns. Throws ekv::Error before enqueueing anything for a null pointer or a
  // stream that is capturing; a CPU-side exception is rethrown by the pool's next sync().
  TieredStepReport attn(const T* q, T* o, float* lse, const Stream& stream, std::int64_t step) {
    if (q == nullptr || o == nullptr || lse == nullptr) throw Error("TieredKVCache::attn: null q, o or lse");
    check_not_capturing(stream, "attn");
    const auto entered = std::chrono::steady_clock::now();
    TieredStepReport report;
    poll_copies();
    report.promotions_completed = std::exchange(completed_, 0);
    const TieredConfig& c = config_;
    const std::size_t rows = static_cast<std::size_t>(c.batch) * c.kv_heads;
    // 1-2: select on the GPU, the selection to the host
    timing_.selecting.record(stream);
    elastic_->select(selection_view(), q, anchors_.data(), stream);
    const std::int32_t* attended = elastic_->attended();
    std::int32_t* sel = selection_host_.data();
    EKV_CUDA_CHECK(cudaMemcpyAsync(sel, attended, rows * max_attended_ * sizeof(std::int32_t),
                                   cudaMemcpyDeviceToHost, stream.get()),
                   "TieredKVCache::attn: cannot copy the selection");
    EKV_CUDA_CHECK(cudaMemcpyAsync(sel + rows * max_attended_, elastic_->num_attended(), rows * sizeof(std::int32_t),
                                   cudaMemcpyDeviceToHost, stream.get()),
                   "TieredKVCache::attn: cannot copy the selection");
    timing_.selected.record(stream);
    selected_.record(stream);
    selected_.synchronize();
    const auto selected_at = std::chrono::steady_clock::now();
    report.wait_us = 1e6 * std::chrono::duration<double>(selected_at - entered).count();
    read_timings(report);

    // 3: recency, the host blocks wanted, the split, the in-step promotions
    const std::int32_t* counts = sel + rows * max_attended_;
    wanted_.clear();
    for (std::size_t r = 0; r < rows; ++r) {
      const int b = static_cast<int>(r / ikv_);
      for (int j = 0; j < counts[r]; ++j) {
        const int block = sel[r * max_attended_ + j];
        ++report.units;
        // all of them noted before any victim is chosen; the slot kept for the table below
        const int slot = tiers_->note_selected({b, block}, step);
        sel_slot_[r * max_attended_ + j] = slot;
        if (slot >= 0) continue;
        ++report.host_units;
        const std::int32_t home = tiers_->host_block(b, block);
        if (seen_[home] != step) {
          seen_[home] = step;
          wanted_.push_back({b, block});
        }
      }
    }
    const std::size_t unit_bytes = 2 * unit_elems_ * sizeof(T);
    const double gpu_bytes = static_cast<double>(report.units - report.host_units) * unit_bytes;
    // the wanted blocks (each with the kv heads a slot holds, all of them selected) to copy in
    const int to_gpu = split_host_blocks(report, gpu_bytes, static_cast<double>(ikv_) * unit_bytes);
    int copies = 0;
    if (to_gpu > 0) {
      const std::vector<TierMove> moves =
          tiers_->plan_promotions(Span<const BlockRef>(wanted_.data(), to_gpu), step, to_gpu);
      for (const TierMove& m : moves) {
        tiers_->complete(m);  // the copy below precedes every later read of the slot, on S
        const std::int64_t home = tiers_->host_block(m.block.seq, m.block.block);
        for (int h = 0; h < ikv_; ++h) copy_in_.data()[copies++] = {home * ikv_ + h, std::int64_t{m.slot} * ikv_ + h};
      }
      report.promoted_units = copies;
      for (int i = 0; i < to_gpu; ++i) to_copy_[tiers_->host_block(wanted_[i].seq, wanted_[i].block)] = step;
    }

    std::int32_t* gpu_table = gpu_rows_host_.data();
    std::int32_t* gpu_lengths = gpu_table + rows * max_attended_;
    for (std::size_t r = 0; r < rows; ++r) {
      const int b = static_cast<int>(r / ikv_), h = static_cast<int>(r % ikv_);
      const int len = host_lengths_[b];
      int on_gpu = 0, on_cpu = 0, gpu_len = 0, cpu_len = 0, staged = 0;
      for (int j = 0; j < counts[r]; ++j) {
        const int block = sel[r * max_attended_ + j];
        const int tokens = block_valid_tokens(len, c.block_len, block);
        int slot = sel_slot_[r * max_attended_ + j];
        if (slot < 0) slot = tiers_->gpu_slot(b, block);  // promoted in this step, or still host only
        const std::int32_t home = tiers_->host_block(b, block);
        if (slot >= 0) {
          gpu_table[r * max_attended_ + on_gpu++] = slot;
          gpu_len += tokens;
        } else if (to_copy_[home] == step && staged < staging_) {
          const std::int64_t stage = slots_ + static_cast<std::int64_t>(b) * staging_ + staged++;
          copy_in_.data()[copies++] = {std::int64_t{home} * ikv_ + h, stage * ikv_ + h};
          gpu_table[r * max_attended_ + on_gpu++] = static_cast<std::int32_t>(stage);
          gpu_len += tokens;
        } else {
          cpu_table_[r * max_attended_ + on_cpu++] = home;
          cpu_len += tokens;
        }
      }
      gpu_lengths[r] = gpu_len;
      cpu_lengths_[r] = cpu_len;
      report.cpu_units += on_cpu;
    }
    report.copied_units = copies;
    report.path = report.cpu_units == 0 ? HostPath::kCopyIn : copies == 0 ? HostPath::kCpu : HostPath::kAuto;
    report.copy_in_bytes = static_cast<std::size_t>(copies) * unit_bytes;

    const auto since = [](std::chrono::steady_clock::time_point t) {
      return 1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    };
    report.book_us = since(selected_at);
    const auto launching = std::chrono::steady_clock::now();
    // 4: the CPU side beside the GPU's copy-in and decode, then the merge
    const std::size_t q_rows = static_cast<std::size_t>(c.batch) * c.q_heads;
    T* cpu_o = reinterpret_cast<T*>(cpu_state_.data());
    float* cpu_lse = reinterpret_cast<float*>(cpu_state_.data() + lse_offset_);
    const bool cpu_side = report.cpu_units > 0;
    if (cpu_side) {
      forked_.record(stream);
      forked_.make_wait(cpu_stream_);
      EKV_CUDA_CHECK(cudaMemcpyAsync(q_host_.data(), q, q_rows * c.head_dim * sizeof(T), cudaMemcpyDeviceToHost,
                                     cpu_stream_.get()),
                     "TieredKVCache::attn: cannot copy q to the host");
      const KVView<T> host_view =
          block_sparse_view<T>(host_pool_view(ids_.data()), cpu_table_.data(), cpu_lengths_.data(), max_attended_);
      const double bytes = static_cast<double>(report.cpu_units) * unit_bytes;
      pool_->submit_with_cuda_stream(cpu_stream_, [pool = pool_, host_view, q_host = q_host_.data(), cpu_o, cpu_lse,
                                                   q_heads = iq_, scale = plan_.scale, rate = cpu_rate_,
                                                   took = cpu_us_, bytes] {
        const auto start = std::chrono::steady_clock::now();
        cpu_decode<T>(*pool, host_view, q_host, q_heads, cpu_o, cpu_lse, scale);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        took->store(1e6 * s);
        const double measured = bytes / std::max(s, 1e-9), old = rate->load();
        rate->store(old > 0 ? (1 - kRateAverage) * old + kRateAverage * measured : measured);
      });
      EKV_CUDA_CHECK(cudaMemcpyAsync(cpu_state_dev_.data(), cpu_state_.data(), cpu_state_.size_bytes(),
                                     cudaMemcpyHostToDevice, cpu_stream_.get()),
                     "TieredKVCache::attn: cannot copy the CPU's state to the device");
      cpu_done_.record(cpu_stream_);
    }
    EKV_CUDA_CHECK(cudaMemcpyAsync(gpu_rows_.data(), gpu_rows_host_.data(), gpu_rows_host_.size_bytes(),
                                   cudaMemcpyHostToDevice, stream.get()),
                   "TieredKVCache::attn: cannot copy the GPU's rows");
    timing_.copy_bytes = static_cast<double>(report.copy_in_bytes);
    timing_.decode_bytes = gpu_bytes + static_cast<double>(report.copy_in_bytes);
    timing_.start.record(stream);
    copy_units(host_k_.data(), host_v_.data(), gpu_k_.data(), gpu_v_.data(), copy_in_.data(), copies,
               unit_elems_ * sizeof(T), stream);
    timing_.copied.record(stream);
    const KVView<T> gpu_view = block_sparse_view<T>(gpu_pool_view(ids_.data()), gpu_rows_.data(),
                                                    gpu_rows_.data() + rows * max_attended_, max_attended_);
    run_decode<T>(plan_, gpu_view, q, cpu_side ? gpu_o_.data() : o, cpu_side ? gpu_lse_.data() : lse,
                  workspace_.data(), stream);
    timing_.decoded.record(stream);
    timing_.pending = true;
    if (cpu_side) {
      cpu_done_.make_wait(stream);
      merge_state_pair<T>(gpu_o_.data(), gpu_lse_.data(), reinterpret_cast<const T*>(cpu_state_dev_.data()),
                          reinterpret_cast<const float*>(cpu_state_dev_.data() + lse_offset_),
                          static_cast<int>(q_rows), c.head_dim, o, lse, stream);
    }
    timing_.done.record(stream);
    step_done_.record(stream);

    report.launch_us = since(launching);
    // 5: promotions, after this step, never waited for by one
    if (promotion_moves_.empty() && !wanted_.empty()) {
      std::vector<TierMove> moves = tiers_->plan_promotions(wanted_, step);
      if (!moves.empty()) {
        for (std::size_t m = 0; m < moves.size(); ++m) {
          promotions_.data()[m] = {tiers_->host_block(moves[m].block.seq, moves[m].block.block), moves[m].slot};
        }
        step_done_.make_wait(copy_stream_);
        copy_units(host_k_.data(), host_v_.data(), gpu_k_.data(), gpu_v_.data(), promotions_.data(),
                   static_cast<int>(moves.size()), block_elems_ * sizeof(T), copy_stream_);
        promoted_.record(copy_stream_);
        report.promotions_started = static_cast<int>(moves.size());
        report.promotion_bytes = moves.size() * block_bytes();
        promotion_moves_ = std::move(moves);
      }
    }
    report.resident_blocks = tiers_->resident_blocks();
    report.cpu_us = cpu_us_->load();
    report.plan_us = since(selected_at);
    return report;
  }

  // Exact attention over both tiers (HybridDecode: the GPU's resident blocks on the GPU,
  // the others on the CPU, merged); waits for the step before it returns.
  void attn_exact(const T* q, T* o, float* lse, const Stream& stream) {
    check_not_capturing(stream, "attn_exact");
    poll_copies();
    const TieredConfig& c = config_;
    if (!exact_) {
      const DecodeProblem p{kDTypeOf<T>, ib_, iq_, ikv_, c.head_dim, c.max_seq_len};
      exact_ = std::make_unique<HybridDecode<T>>(p, c.block_len, max_blocks_, *pool_, device_, stream,
                                                 std::max(1, slots_) * c.block_len);
    }
    std::vector<std::int32_t> table(static_cast<std::size_t>(ib_) * max_blocks_, 0);
    for (int b = 0; b < ib_; ++b) {
      for (int i = 0; i < tiers_->blocks(b); ++i) {
        const int slot = tiers_->gpu_slot(b, i);
        table[static_cast<std::size_t>(b) * max_blocks_ + i] =
            slot >= 0 ? slot : host_block_entry(tiers_->host_block(b, i));
      }
    }
    HybridKV<T> kv;
    kv.gpu_k = gpu_k_.data();
    kv.gpu_v = gpu_v_.data();
    kv.host_k = host_k_.data();
    kv.host_v = host_v_.data();
    kv.block_table = table.data();
    kv.lengths = host_lengths_.data();
    kv.gpu_blocks = slots_;
    kv.host_blocks = ib_ * max_blocks_;
    kv.batch = ib_;
    kv.kv_heads = ikv_;
    kv.head_dim = c.head_dim;
    kv.block_len = c.block_len;
    kv.max_blocks_per_seq = max_blocks_;
    exact_->run(kv, q, o, lse, stream);
    stream.synchronize();
    pool_->sync();
  }

  // Waits for the promotions and write-backs in flight and applies them (tests, and before
  // a measurement that wants a settled cache).
  void settle() {
    copy_stream_.synchronize();
    poll_copies();
  }
  // The measured rates, bytes per second (0 until measured).
  double copy_rate() const { return copy_rate_; }
  double cpu_rate() const { return cpu_rate_->load(); }
  double gpu_rate() const { return gpu_rate_; }

 private:
  struct WriteBack {
    std::unique_ptr<Event> done;
    std::vector<BlockRef> blocks;
  };
  struct Timing {
    Event selecting, selected, start, copied, decoded, done;
    double copy_bytes = 0, decode_bytes = 0;
    bool pending = false;
  };

  static void check_not_capturing(const Stream& stream, const char* what) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    EKV_CUDA_CHECK(cudaStreamIsCapturing(stream.get(), &capture),
                   std::string("TieredKVCache::") + what + ": cannot query the stream");
    if (capture != cudaStreamCaptureStatusNone) {
      throw Error(std::string("TieredKVCache::") + what +
                  ": the stream is capturing a graph; a tiered step waits on the host and cannot be captured");
    }
  }
  void check_seq(int seq, const char* what) const {
    if (seq < 0 || seq >= config_.batch) {
      throw Error(std::string("TieredKVCache::") + what + ": sequence " + std::to_string(seq) + " outside 0 .. " +
                  std::to_string(config_.batch - 1));
    }
  }
  // The host unit (TierTable's host block x slot_kv_heads() + head within it) of a kv head's block.
  std::size_t host_unit(int seq, int block, int head) const {
    check_seq(seq, "host_k");
    if (head < 0 || head >= config_.kv_heads) {
      throw Error("TieredKVCache::host_k: kv head " + std::to_string(head) + " outside 0 .. " +
                  std::to_string(config_.kv_heads - 1));
    }
    const int row = seq * fan_ + (fan_ > 1 ? head : 0);
    return static_cast<std::size_t>(tiers_->host_block(row, block)) * ikv_ + (fan_ > 1 ? 0 : head);
  }
  // The cost model (the file's comment): how many of wanted_ (in order), each block_bytes
  // of host reads, the GPU takes, beside gpu_bytes of resident ones; the report's predictions.
  int split_host_blocks(TieredStepReport& report, double gpu_bytes, double block_bytes) const {
    const int n = static_cast<int>(wanted_.size());
    if (n == 0) return 0;
    const double gpu = gpu_rate_ > 0 ? gpu_rate_ : 3e12, copy = copy_rate_, cpu = cpu_rate();
    const double fixed = 1e-6 * kCpuPathFixedUs;
    const auto cost_us = [&](int x) {
      const double on_gpu = copy > 0 ? x * block_bytes * (1 / copy + 1 / gpu) : 0;
      const double on_cpu = x < n && cpu > 0 ? std::max(0.0, (n - x) * block_bytes / cpu + fixed - gpu_bytes / gpu) : 0;
      return 1e6 * std::max(on_gpu, on_cpu);
    };
    report.predicted_copy_us = cost_us(n);
    report.predicted_cpu_us = cost_us(0);
    int x = n;
    if (config_.path == HostPath::kCpu) {
      x = 0;
    } else if (config_.path == HostPath::kAuto && copy > 0) {  // unmeasured: all copied in, first
      if (cpu <= 0) {
        x = 0;  // then all on the CPU, once
      } else {
        const double a = block_bytes * (1 / copy + 1 / gpu), b = block_bytes / cpu;
        const double meet = (n * b + fixed - gpu_bytes / gpu) / (a + b);
        for (const double m : {0.0, std::floor(meet), std::ceil(meet)}) {
          const int candidate = static_cast<int>(std::clamp(m, 0.0, static_cast<double>(n)));
          if (cost_us(candidate) < cost_us(x)) x = candidate;
        }
      }
    }
    report.predicted_us = cost_us(x);
    return x;
  }
  static bool finished(const Event& e) {
    const cudaError_t s = cudaEventQuery(e.get());
    if (s == cudaErrorNotReady) return false;
    EKV_CUDA_CHECK(s, "TieredKVCache: a copy failed");
    return true;
  }
  // Applies the promotions and write-backs whose copies are done; returns the promotions.
  int poll_copies() {
    int completed = 0;
    if (!promotion_moves_.empty() && finished(promoted_)) {
      for (const TierMove& m : promotion_moves_) tiers_->complete(m);
      completed = static_cast<int>(promotion_moves_.size());
      completed_ += completed;
      promotion_moves_.clear();
    }
    while (!write_backs_.empty() && finished(*write_backs_.front().done)) {
      for (const BlockRef& b : write_backs_.front().blocks) tiers_->mark_written(b);
      write_backs_.erase(write_backs_.begin());
    }
    return completed;
  }
  // After the selection is on the host: this step's select time, and the previous step's
  // copy, decode and tail (its rates, averaged).
  void read_timings(TieredStepReport& report) {
    const auto elapsed_ms = [](const Event& from, const Event& to) {
      float ms = 0;
      EKV_CUDA_CHECK(cudaEventElapsedTime(&ms, from.get(), to.get()), "TieredKVCache: cannot read a step's times");
      return ms;
    };
    report.select_us = 1e3 * elapsed_ms(timing_.selecting, timing_.selected);
    if (!timing_.pending) return;
    timing_.pending = false;
    const float copy_ms = elapsed_ms(timing_.start, timing_.copied);
    const float decode_ms = elapsed_ms(timing_.copied, timing_.decoded);
    report.copy_us = 1e3 * copy_ms;
    report.decode_us = 1e3 * decode_ms;
    report.tail_us = 1e3 * elapsed_ms(timing_.decoded, timing_.done);
    const auto average = [](double old, double measured) {
      return old > 0 ? (1 - kRateAverage) * old + kRateAverage * measured : measured;
    };
    if (timing_.copy_bytes > 0 && copy_ms > 0) copy_rate_ = average(copy_rate_, timing_.copy_bytes / (1e-3 * copy_ms));
    if (timing_.decode_bytes > 0 && decode_ms > 0) {
      gpu_rate_ = average(gpu_rate_, timing_.decode_bytes / (1e-3 * decode_ms));
    }
  }
  // Paged views over a pool with `table` ([TierTable rows][max_blocks_per_seq]).
  KVView<T> gpu_pool_view(const std::int32_t* table) const {
    return paged_kv<T>(gpu_k_.data(), gpu_v_.data(), table, lengths_.data(), ib_, ikv_,
                       config_.head_dim, config_.block_len, max_blocks_);
  }
  KVView<T> host_pool_view(const std::int32_t* table) const {
    return paged_kv<T>(host_k_.data(), host_v_.data(), table, lengths_.data(), ib_, ikv_,
                       config_.head_dim, config_.block_len, max_blocks_);
  }
  // What selection reads: every block's anchors by host block, the device lengths.
  KVView<T> selection_view() const { return host_pool_view(ids_.data()); }

  TieredConfig config_;
  CPUInfer* pool_ = nullptr;
  DeviceInfo device_;
  int fan_ = 1;             // TierTable rows per sequence: kv_heads under KVHEAD, else 1
  int ib_ = 1, iq_ = 1, ikv_ = 1;  // TierTable's rows, and each row's q and kv heads
  int max_blocks_ = 1;
  int slots_ = 0;
  int staging_ = 1;
  int max_attended_ = 1;
  std::size_t unit_elems_ = 0, block_elems_ = 0;
  std::unique_ptr<ElasticDecode<T>> elastic_;
  std::unique_ptr<TierTable> tiers_;
  std::unique_ptr<HybridDecode<T>> exact_;
  PinnedBuffer<T> host_k_, host_v_;
  DeviceBuffer<T> gpu_k_, gpu_v_, anchors_;
  DeviceBuffer<std::int32_t> ids_, slot_table_, lengths_, from_;
  PinnedBuffer<std::int32_t> slot_table_host_;
  std::vector<std::int32_t> host_lengths_;
  PinnedBuffer<std::int32_t> selection_host_, gpu_rows_host_;
  DeviceBuffer<std::int32_t> gpu_rows_;
  std::vector<std::int32_t> cpu_table_, cpu_lengths_;
  PinnedBuffer<UnitCopy> copy_in_, promotions_;
  std::vector<std::int64_t> seen_, to_copy_;  // by host block: the last step that wanted it, copied it in
  std::vector<BlockRef> wanted_;
  std::vector<int> sel_slot_;  // the step's selection's GPU slots when noted (-1: host only then)
  std::vector<TierMove> promotion_moves_;
  std::vector<WriteBack> write_backs_;
  DecodePlan plan_;
  DeviceBuffer<unsigned char> workspace_;
  DeviceBuffer<T> gpu_o_;
  DeviceBuffer<float> gpu_lse_;
  PinnedBuffer<T> q_host_;
  std::size_t lse_offset_ = 0;
  PinnedBuffer<unsigned char> cpu_state_;
  DeviceBuffer<unsigned char> cpu_state_dev_;
  std::shared_ptr<std::atomic<double>> cpu_rate_, cpu_us_;
  double copy_rate_ = 0, gpu_rate_ = 0;
  int completed_ = 0;  // promotions completed since the last step's report
  Timing timing_;
  Stream copy_stream_, cpu_stream_;
  Event selected_{cudaEventDisableTiming}, forked_{cudaEventDisableTiming}, cpu_done_{cudaEventDisableTiming},
      step_done_{cudaEventDisableTiming}, appended_{cudaEventDisableTiming}, promoted_{cudaEventDisableTiming};
};

}  // namespace ekv
