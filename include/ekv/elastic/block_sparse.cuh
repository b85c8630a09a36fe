#pragma once
// Block-sparse decode is exact decode over a view that holds only the selected blocks:
// each (sequence, kv head) gets its own compacted block-table row and length, and the
// decode kernels (split-KV and merge included) run on it unchanged, so the sparse path
// reuses the dense inner loop rather than a copy of it.

#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/elastic/block_sparse_view.hpp"

namespace ekv {
namespace detail {

// The first index of an ascending list whose id is >= bound.
__device__ __forceinline__ int lower_bound(const std::int32_t* list, int count, int bound) {
  int lo = 0, hi = count;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (list[mid] < bound) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One CTA per (kv head, sequence): copies the physical ids of the selected blocks that
// exist (ids outside [0, blocks) are dropped, never clamped onto another block) and sums
// their valid tokens. Only a sequence's last block can be partial, and ascending lists
// put it last, so the compacted row's tokens are contiguous from 0.
template <typename T>
__global__ void gather_selected_kernel(const KVView<T> base, const std::int32_t* selected, const std::int32_t* counts,
                                       int max_selected, std::int32_t* tables, std::int32_t* lengths) {
  const int head = blockIdx.x, seq = blockIdx.y;
  const std::int64_t row = static_cast<std::int64_t>(seq) * base.kv_heads + head;
  const int len = min(base.length(seq, head), base.capacity());
  const int blocks = (len + base.block_len - 1) / base.block_len;
  const std::int32_t* list = selected + row * max_selected;
  const int count = max(0, min(counts[row], max_selected));
  const int first = lower_bound(list, count, 0), end = lower_bound(list, count, blocks);
  for (int i = first + threadIdx.x; i < end; i += blockDim.x) {
    tables[row * max_selected + i - first] = static_cast<std::int32_t>(base.block_id(seq, head, list[i]));
  }
  if (threadIdx.x == 0) {
    const int kept = end - first;
    lengths[row] = kept > 0 ? (kept - 1) * base.block_len + min(base.block_len, len - list[end - 1] * base.block_len)
                            : 0;
  }
}

}  // namespace detail

// From selected [batch][kv_heads][max_selected] logical block indices (ascending, the
// first counts[b][h] of each row used) of a paged view, writes the block-sparse view's
// tables and lengths (see block_sparse_view). Ids outside a sequence's blocks are
// dropped. Stream-ordered; reads lengths and the block table on the device.
template <typename T>
void gather_selected_blocks(const KVView<T>& base, const std::int32_t* selected, const std::int32_t* counts,
                            int max_selected, std::int32_t* tables, std::int32_t* lengths, const Stream& stream) {
  if (base.block_table == nullptr) throw Error("gather_selected_blocks: the base view must be paged");
  if (selected == nullptr || counts == nullptr || tables == nullptr || lengths == nullptr || max_selected < 1) {
    throw Error("gather_selected_blocks: null selection or output, or max_selected < 1");
  }
  if (base.batch < 1 || base.batch > 65535 || base.kv_heads < 1) {
    throw Error("gather_selected_blocks: batch must be 1 to 65535, got " + std::to_string(base.batch));
  }
  detail::gather_selected_kernel<T><<<dim3(base.kv_heads, base.batch), 128, 0, stream.get()>>>(
      base, selected, counts, max_selected, tables, lengths);
  check_launch("gather_selected_blocks", stream.get());
}

}  // namespace ekv
