#pragma once
// HybridDecode: one decode step over an offloaded paged cache (HybridKV: a GPU pool, a
// pinned host pool, one block table saying where each block lives). The table is split on
// the host; the GPU attends to its blocks with run_decode while a CPUInfer attends to the
// host's with cpu_decode, and the two states merge through their LSE on the GPU. Sized
// once: every buffer is allocated at construction, so a step allocates no device or
// pinned memory and one object serves every step.
//
// Per step, on the caller's stream S and a second stream C owned here:
//   S: fork event | H2D GPU rows | run_decode -> O_gpu, LSE_gpu | wait C | merge -> o, lse
//   C: wait fork  | D2H q (pinned) | host function: cpu_decode on the pool -> pinned O, LSE
//      | H2D O, LSE | done event
// The host function makes no CUDA call (CPUInfer::submit_with_cuda_stream). A step with
// no host tokens runs run_decode alone into o and lse; one with no GPU tokens copies the
// CPU's result into them, without a merge.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ekv/attention/decode.cuh"
#include "ekv/attention/merge_states.cuh"
#include "ekv/cache/hybrid_table.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/thread_pool.hpp"
#include "ekv/kernels/vec.cuh"

namespace ekv {

template <typename T>
class HybridDecode {
 public:
  // problem: dtype T, max_seq_len the longest sequence; max_blocks_per_seq: the table's
  // row length (covering max_seq_len). max_gpu_tokens: the most tokens of one sequence the
  // GPU side is expected to hold (its budget's share), which sizes the GPU's split-KV
  // plan; 0 means max_seq_len. A longer GPU side stays exact, on fewer CTAs than fill the
  // GPU. `pool` runs the CPU side and must outlive this object. Allocates the buffers of
  // kSlots steps in flight. Throws ekv::Error for what decode or cpu_decode cannot do.
  HybridDecode(const DecodeProblem& problem, int block_len, int max_blocks_per_seq, CPUInfer& pool,
               const DeviceInfo& device, const Stream& stream, int max_gpu_tokens = 0) {
    if (problem.dtype != kDTypeOf<T>) {
      throw Error(std::string("HybridDecode: the problem is for ") + to_string(problem.dtype) + ", the class for " +
                  to_string(kDTypeOf<T>));
    }
    if (block_len < 1 || max_blocks_per_seq < 1 || std::int64_t{block_len} * max_blocks_per_seq < problem.max_seq_len) {
      throw Error("HybridDecode: block_len=" + std::to_string(block_len) + " x max_blocks_per_seq=" +
                  std::to_string(max_blocks_per_seq) + " must be positive and cover max_seq_len=" +
                  std::to_string(problem.max_seq_len));
    }
    if (Support s = cpu_decode_supports(problem); !s) throw Error("HybridDecode: " + s.why);
    DecodeProblem gpu_problem = problem;
    if (max_gpu_tokens > 0) gpu_problem.max_seq_len = std::min(max_gpu_tokens, problem.max_seq_len);
    state_ = std::make_unique<State>();
    state_->pool = &pool;
    state_->block_len = block_len;
    state_->max_blocks_per_seq = max_blocks_per_seq;
    state_->plan = plan_decode(gpu_problem, device);
    const std::size_t rows = static_cast<std::size_t>(problem.batch) * problem.q_heads;
    const std::size_t table = static_cast<std::size_t>(problem.batch) * max_blocks_per_seq;
    const std::size_t o_bytes = rows * problem.head_dim * sizeof(T);
    state_->lse_offset = (o_bytes + 15) / 16 * 16;
    const std::size_t state_bytes = state_->lse_offset + rows * sizeof(float);
    for (Slot& slot : state_->slots) {
      slot.gpu_rows = PinnedBuffer<std::int32_t>(table + problem.batch);
      slot.gpu_rows_dev = DeviceBuffer<std::int32_t>(table + problem.batch);
      slot.host_table.resize(table);
      slot.host_lengths.resize(problem.batch);
      slot.q = PinnedBuffer<T>(rows * problem.head_dim);
      slot.cpu_state = PinnedBuffer<unsigned char>(state_bytes);
      slot.cpu_state_dev = DeviceBuffer<unsigned char>(state_bytes);
      slot.gpu_o = DeviceBuffer<T>(rows * problem.head_dim);
      slot.gpu_lse = DeviceBuffer<float>(rows);
      slot.workspace = make_decode_workspace(state_->plan, stream);
    }
  }

  HybridDecode(const HybridDecode&) = delete;  // the buffers of steps in flight belong to one object
  HybridDecode& operator=(const HybridDecode&) = delete;
  HybridDecode(HybridDecode&&) noexcept = default;
  HybridDecode& operator=(HybridDecode&&) noexcept = default;
  // Waits for this object's steps in flight (never throws).
  ~HybridDecode() = default;

  // One decode step: q, o T [batch][q_heads][head_dim] and lse float [batch][q_heads]
  // (natural log) in device memory, ordered on `stream`; kv's table and lengths are read
  // on the host before run returns, so the caller may change them at once. Returns the
  // tokens on each side. Waits (on the host) for the step kSlots steps back, whose
  // buffers it reuses. Not graph-capturable: the CPU side is a host function, which runs
  // once. Throws ekv::Error, before enqueueing anything, where kv disagrees with the
  // construction or its table does with its pools; an exception of the CPU side is kept
  // by the pool and rethrown by its next sync().
  HybridSplit run(const HybridKV<T>& kv, const T* q, T* o, float* lse, const Stream& stream) {
    if (!state_) throw Error("HybridDecode::run: this object was moved from");
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    EKV_CUDA_CHECK(cudaStreamIsCapturing(stream.get(), &capture), "HybridDecode::run: cannot query the stream");
    if (capture != cudaStreamCaptureStatusNone) {
      throw Error("HybridDecode::run: the stream is capturing a graph; the CPU side is a host task that runs once and "
                  "cannot be replayed");
    }
    State& st = *state_;
    const DecodeProblem& p = st.plan.problem;
    if (kv.batch != p.batch || kv.kv_heads != p.kv_heads || kv.head_dim != p.head_dim ||
        kv.block_len != st.block_len || kv.max_blocks_per_seq != st.max_blocks_per_seq) {
      throw Error("HybridDecode::run: the cache's batch, kv_heads, head_dim, block_len or max_blocks_per_seq differ "
                  "from the ones it was built for");
    }
    if (q == nullptr || o == nullptr || lse == nullptr) throw Error("HybridDecode::run: null q, o or lse");
    if (kv.gpu_blocks < 0 || kv.host_blocks < 0 || kv.gpu_blocks + kv.host_blocks == 0) {
      throw Error("HybridDecode::run: the cache needs a GPU pool, a host pool or both, got gpu_blocks=" +
                  std::to_string(kv.gpu_blocks) + ", host_blocks=" + std::to_string(kv.host_blocks));
    }
    if ((kv.gpu_blocks > 0 && (kv.gpu_k == nullptr || kv.gpu_v == nullptr)) ||
        (kv.host_blocks > 0 && (kv.host_k == nullptr || kv.host_v == nullptr))) {
      throw Error("HybridDecode::run: null K or V for a pool of more than 0 blocks");
    }
    if (kv.gpu_blocks > 0 && (!is_aligned<16>(kv.gpu_k) || !is_aligned<16>(kv.gpu_v) || !is_aligned<16>(q))) {
      throw Error("HybridDecode::run: the GPU pool's K and V and q must be 16-byte aligned");
    }
    int current = 0;
    EKV_CUDA_CHECK(cudaGetDevice(&current), "HybridDecode::run: no usable CUDA device");
    if (current != st.plan.device) {
      throw Error("HybridDecode::run: built for device " + std::to_string(st.plan.device) + ", device " +
                  std::to_string(current) + " is current");
    }

    Slot& slot = st.slots[st.next];
    slot.done.synchronize();  // the step that last used this slot's buffers has finished
    const std::size_t table = static_cast<std::size_t>(p.batch) * st.max_blocks_per_seq;
    const SideRows gpu_rows{slot.gpu_rows.data(), slot.gpu_rows.data() + table};
    const SideRows host_rows{slot.host_table.data(), slot.host_lengths.data()};
    const HybridSplit split = split_hybrid_table(kv, gpu_rows, host_rows);
    const SideRows gpu_rows_dev{slot.gpu_rows_dev.data(), slot.gpu_rows_dev.data() + table};
    const std::pair<KVView<T>, KVView<T>> views = hybrid_side_views(kv, gpu_rows_dev, host_rows);

    const bool gpu_only = split.host_tokens == 0 && kv.gpu_blocks > 0;
    const bool cpu_only = !gpu_only && split.gpu_tokens == 0;
    const std::size_t rows = static_cast<std::size_t>(p.batch) * p.q_heads;
    T* cpu_o = reinterpret_cast<T*>(slot.cpu_state.data());
    float* cpu_lse = reinterpret_cast<float*>(slot.cpu_state.data() + st.lse_offset);
    if (!gpu_only) {
      slot.forked.record(stream);
      slot.forked.make_wait(st.cpu_stream);
      EKV_CUDA_CHECK(
          cudaMemcpyAsync(slot.q.data(), q, slot.q.size_bytes(), cudaMemcpyDeviceToHost, st.cpu_stream.get()),
          "HybridDecode::run: cannot copy q to the host");
      st.pool->submit_with_cuda_stream(st.cpu_stream, [pool = st.pool, host_view = views.second, q_host = slot.q.data(),
                                                       cpu_o, cpu_lse, q_heads = p.q_heads, scale = st.plan.scale] {
        cpu_decode<T>(*pool, host_view, q_host, q_heads, cpu_o, cpu_lse, scale);
      });
      if (cpu_only) {  // the CPU's state is the answer
        copy_to_device(o, cpu_o, rows * p.head_dim * sizeof(T), st.cpu_stream);
        copy_to_device(lse, cpu_lse, rows * sizeof(float), st.cpu_stream);
      } else {
        copy_to_device(slot.cpu_state_dev.data(), slot.cpu_state.data(), slot.cpu_state.size_bytes(), st.cpu_stream);
      }
      slot.cpu_done.record(st.cpu_stream);
    }
    if (!cpu_only) {
      copy_to_device(slot.gpu_rows_dev.data(), slot.gpu_rows.data(), slot.gpu_rows.size_bytes(), stream);
      run_decode<T>(st.plan, views.first, q, gpu_only ? o : slot.gpu_o.data(), gpu_only ? lse : slot.gpu_lse.data(),
                    slot.workspace.data(), stream);
    }
    if (!gpu_only) slot.cpu_done.make_wait(stream);
    if (!gpu_only && !cpu_only) {
      merge_state_pair<T>(slot.gpu_o.data(), slot.gpu_lse.data(), reinterpret_cast<const T*>(slot.cpu_state_dev.data()),
                          reinterpret_cast<const float*>(slot.cpu_state_dev.data() + st.lse_offset),
                          static_cast<int>(rows), p.head_dim, o, lse, stream);
    }
    slot.done.record(stream);
    st.next = (st.next + 1) % kSlots;
    return split;
  }

  const DecodePlan& plan() const { return state().plan; }

  // Steps whose buffers may be in flight at once.
  static constexpr int kSlots = 2;

 private:
  // One step's buffers.
  struct Slot {
    PinnedBuffer<std::int32_t> gpu_rows;      // the GPU side's rows: [batch][max_blocks_per_seq], then [batch]
    DeviceBuffer<std::int32_t> gpu_rows_dev;  // their device copy, which run_decode reads
    std::vector<std::int32_t> host_table, host_lengths;  // the host side's rows, which the CPU reads
    PinnedBuffer<T> q;                        // [batch][q_heads][head_dim]
    PinnedBuffer<unsigned char> cpu_state;    // the CPU's o T [rows][head_dim], then lse float [rows]
    DeviceBuffer<unsigned char> cpu_state_dev;
    DeviceBuffer<T> gpu_o;
    DeviceBuffer<float> gpu_lse;
    DeviceBuffer<unsigned char> workspace;
    Event forked{cudaEventDisableTiming}, cpu_done{cudaEventDisableTiming}, done{cudaEventDisableTiming};
  };

  // Held by pointer, so that a move leaves the buffers of steps in flight where they are.
  struct State {
    State() = default;
    State(const State&) = delete;  // owned by one HybridDecode
    State& operator=(const State&) = delete;
    // Buffers of a step in flight must outlive it: wait for the CPU side (its stream) and
    // for each slot's last step.
    ~State() {
      cudaStreamSynchronize(cpu_stream.get());
      for (Slot& slot : slots) cudaEventSynchronize(slot.done.get());
    }

    CPUInfer* pool = nullptr;
    int block_len = 0;
    int max_blocks_per_seq = 0;
    std::size_t lse_offset = 0;  // 16-byte aligned, after the o of cpu_state
    DecodePlan plan;
    Stream cpu_stream;
    Slot slots[kSlots];
    int next = 0;
  };

  static void copy_to_device(void* dst, const void* src, std::size_t bytes, const Stream& stream) {
    EKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream.get()),
                   "HybridDecode::run: cannot copy " + std::to_string(bytes) + " bytes to the device");
  }
  const State& state() const {
    if (!state_) throw Error("HybridDecode: this object was moved from");
    return *state_;
  }

  std::unique_ptr<State> state_;
};

}  // namespace ekv
