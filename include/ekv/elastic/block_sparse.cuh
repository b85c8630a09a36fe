#pragma once
// Block-sparse decode is exact decode over a view that holds only the selected blocks:
// each selection row (a kv head, or a query head under QHEAD) gets its own compacted
// block-table row and length, and the decode kernels (split-KV and merge included) run
// on it unchanged, so the sparse path reuses the dense inner loop rather than a copy of it.

#include <climits>
#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/elastic/block_sparse_view.hpp"
#include "ekv/kernels/dependent_launch.cuh"

namespace ekv {

// Selection rows to gather: blocks [batch][rows_per_seq][max_per_row], logical block
// indices ascending, the first counts[row] of each used; rows_per_seq is kv_heads, or
// q_heads for a QHEAD selection (row r reads kv head r / group). A selection reused on a
// later step names in blocks_then [batch][rows_per_seq] the blocks its sequence had when
// it was made: the blocks appended since join it.
struct SelectionRows {
  const std::int32_t* blocks = nullptr;
  const std::int32_t* counts = nullptr;
  int max_per_row = 0;
  int rows_per_seq = 0;
  const std::int32_t* blocks_then = nullptr;
};

// Where the gathered rows go: tables and lengths as block_sparse_view reads them (or,
// with head_units, qhead_sparse_view), rows of max_per_row; past it the oldest blocks are
// dropped, so the newest are always read. attended and num_attended, if given, receive
// the rows' logical blocks and counts.
struct SparseRows {
  std::int32_t* tables = nullptr;
  std::int32_t* lengths = nullptr;
  int max_per_row = 0;
  bool head_units = false;
  std::int32_t* attended = nullptr;
  std::int32_t* num_attended = nullptr;
};

namespace detail {

// One CTA per (row, sequence): keeps the selected blocks that exist (ids outside the
// sequence's blocks are dropped, never clamped onto another block), adds the blocks
// appended since a reused selection, and sums the valid tokens. Only a sequence's last
// block can be partial, and ascending rows put it last, so a row's tokens are contiguous
// from 0. A selection made for a longer sequence (its slot since reused) is stale: the
// row reads the sequence's newest blocks.
template <typename T>
__global__ void gather_selection_kernel(const KVView<T> base, const SelectionRows in, const SparseRows out) {
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const int row_head = blockIdx.x, seq = blockIdx.y;
  const int head = row_head / (in.rows_per_seq / base.kv_heads);
  const std::int64_t row = static_cast<std::int64_t>(seq) * in.rows_per_seq + row_head;
  const int len = min(base.length(seq, head), base.capacity());
  const int n = sequence_blocks(len, base.block_len);
  const bool stale = in.blocks_then != nullptr && in.blocks_then[row] > n;
  const int then = in.blocks_then == nullptr ? n : stale ? 0 : in.blocks_then[row];
  const std::int32_t* list = in.blocks + row * in.max_per_row;
  const int count = stale ? 0 : max(0, min(in.counts[row], in.max_per_row));
  // the valid part of the ascending row: ids in [0, then), found by counting over the whole
  // CTA (one round of loads; a binary search waited on one load per step)
  int below_zero = 0, below_then = 0;
  for (int base = 0; base < count; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const std::int32_t id = i < count ? list[i] : INT_MAX;
    below_zero += __syncthreads_count(id < 0);
    below_then += __syncthreads_count(id < then);
  }
  const int first = below_zero, kept = below_then - below_zero;
  const int total = kept + n - then, skip = max(0, total - out.max_per_row);
  const auto logical_at = [&](int i) { return i < kept ? list[first + i] : then + i - kept; };
  const std::int64_t units = out.head_units ? head_units_per_block(base) : 1;
  for (int j = threadIdx.x; j < total - skip; j += blockDim.x) {
    const int logical = logical_at(j + skip);
    const std::int64_t id = base.block_id(seq, head, logical);
    out.tables[row * out.max_per_row + j] = static_cast<std::int32_t>(out.head_units ? id * units + head : id);
    if (out.attended != nullptr) out.attended[row * out.max_per_row + j] = logical;
  }
  if (threadIdx.x == 0) {
    const int rows = total - skip;
    out.lengths[row] =
        rows > 0 ? (rows - 1) * base.block_len + block_valid_tokens(len, base.block_len, logical_at(total - 1)) : 0;
    if (out.num_attended != nullptr) out.num_attended[row] = rows;
  }
}

}  // namespace detail

// Gathers selection rows of a paged view into block-sparse rows (see SelectionRows and
// SparseRows). Stream-ordered; reads lengths and the block table on the device.
template <typename T>
void gather_selection(const KVView<T>& base, const SelectionRows& in, const SparseRows& out, const Stream& stream) {
  if (base.block_table == nullptr) throw Error("gather_selection: the base view must be paged");
  if (in.blocks == nullptr || in.counts == nullptr || in.max_per_row < 1 || out.tables == nullptr ||
      out.lengths == nullptr || out.max_per_row < 1) {
    throw Error("gather_selection: null selection or output, or rows shorter than 1");
  }
  if (out.head_units && head_units_per_block(base) == 0) {
    throw Error("gather_selection: block-head units need the base view's block stride a multiple of its head "
                "stride, got " + std::to_string(base.block_stride) + " and " + std::to_string(base.head_stride));
  }
  if (in.blocks_then != nullptr && out.max_per_row < in.max_per_row) {
    throw Error("gather_selection: a reused selection needs output rows at least as long as its own");
  }
  if (base.batch < 1 || base.batch > 65535 || base.kv_heads < 1 || in.rows_per_seq < base.kv_heads ||
      in.rows_per_seq % base.kv_heads != 0) {
    throw Error("gather_selection: batch must be 1 to 65535 and rows_per_seq a multiple of kv_heads " +
                std::to_string(base.kv_heads) + ", got batch " + std::to_string(base.batch) + ", rows_per_seq " +
                std::to_string(in.rows_per_seq));
  }
  launch_dependent(detail::gather_selection_kernel<T>, dim3(in.rows_per_seq, base.batch), 128, 0, stream.get(), base,
                   in, out);
  check_launch("gather_selection", stream.get());
}

// From selected [batch][kv_heads][max_selected] logical block indices (ascending, the
// first counts[b][h] of each row used) of a paged view, writes the block-sparse view's
// tables and lengths (see block_sparse_view). Ids outside a sequence's blocks are dropped.
template <typename T>
void gather_selected_blocks(const KVView<T>& base, const std::int32_t* selected, const std::int32_t* counts,
                            int max_selected, std::int32_t* tables, std::int32_t* lengths, const Stream& stream) {
  gather_selection<T>(base, {selected, counts, max_selected, base.kv_heads}, {tables, lengths, max_selected}, stream);
}

}  // namespace ekv
