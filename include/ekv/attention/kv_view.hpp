#pragma once
// KVView<T>: where a batch's keys and values live, as pointers and strides, for the
// paged pool and both contiguous layouts alike. A view owns nothing; kernels and the CPU
// reference take it by value, so it works for device and host memory. Attention only
// reads through it; append writes K and V (and lengths) through it.

#include <cstdint>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

// Token `pos` of sequence `seq`, head `head` starts at
//   k + block(seq, pos / block_len) * block_stride + head * head_stride
//     + (pos % block_len) * token_stride
// where block() reads block_table [batch][max_blocks_per_seq] (int32), or is `seq` when
// block_table is null (contiguous: one block of block_len = capacity per sequence).
// lengths: int32 [batch], the number of valid tokens of each sequence. A block-sparse
// view (block_sparse_view) gives each kv head its own table row and length, through the
// table and length strides. In FlashInfer's page-index form (page_index_kv) a sequence's
// row starts at page_indptr[seq] and its length comes from the row's page count and
// last_page_len; lengths is null there.
template <typename T>
struct KVView {
  T* k = nullptr;
  T* v = nullptr;
  const std::int32_t* block_table = nullptr;
  std::int32_t* lengths = nullptr;
  int batch = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int block_len = 0;
  int max_blocks_per_seq = 1;
  std::int64_t block_stride = 0;
  std::int64_t head_stride = 0;
  std::int64_t token_stride = 0;
  int block_shift = -1;  // log2(block_len) where that is a power of two: no division per token
  // block_table row of (seq, head): seq * table_seq_stride + head * table_head_stride;
  // a table_seq_stride of 0 means max_blocks_per_seq (one row per sequence)
  std::int64_t table_seq_stride = 0;
  std::int64_t table_head_stride = 0;
  // length of (seq, head): lengths[seq * length_seq_stride + head * length_head_stride]
  int length_seq_stride = 1;
  int length_head_stride = 0;
  // FlashInfer's page index, where not null: sequence seq's pages are
  // block_table[page_indptr[seq] .. page_indptr[seq + 1]) (int32 [batch + 1]), and it holds
  // (pages - 1) x block_len + last_page_len[seq] tokens (int32 [batch], 1 .. block_len).
  const std::int32_t* page_indptr = nullptr;
  const std::int32_t* last_page_len = nullptr;

  EKV_HOST_DEVICE std::int64_t offset(int seq, int head, int pos) const {
    return row_offset(pool_row(seq, head, pos), head);
  }
  // Where token pos of (seq, head) lies: its pool block (the sequence, for a contiguous
  // view) and its row within it. Views over one block table (a quantized view's codes and
  // scales) share it: offset() is row_offset(pool_row(...)) of either.
  struct PoolRow {
    std::int64_t block;
    int within;
  };
  EKV_HOST_DEVICE PoolRow pool_row(int seq, int head, int pos) const {
    if (block_table == nullptr) return {seq, pos};  // contiguous: pos < block_len, no division needed
    const int logical = block_shift >= 0 ? pos >> block_shift : pos / block_len;
    const int within = block_shift >= 0 ? pos & (block_len - 1) : pos % block_len;
    return {block_id(seq, head, logical), within};
  }
  EKV_HOST_DEVICE std::int64_t row_offset(PoolRow r, int head) const {
    return r.block * block_stride + head * head_stride + static_cast<std::int64_t>(r.within) * token_stride;
  }
  // The pool block holding logical block `logical` of (seq, head); paged views only.
  EKV_HOST_DEVICE std::int64_t block_id(int seq, int head, int logical) const {
    return block_table[table_row(seq, head) + logical];
  }
  // Where (seq, head)'s row of block_table starts.
  EKV_HOST_DEVICE std::int64_t table_row(int seq, int head) const {
    if (page_indptr != nullptr) return page_indptr[seq];
    return seq * (table_seq_stride != 0 ? table_seq_stride : max_blocks_per_seq) + head * table_head_stride;
  }
  EKV_HOST_DEVICE int length(int seq, int head) const {
    if (page_indptr != nullptr) {
      const int pages = page_indptr[seq + 1] - page_indptr[seq];
      return pages > 0 ? (pages - 1) * block_len + last_page_len[seq] : 0;
    }
    return lengths[seq * length_seq_stride + head * length_head_stride];
  }
  // Whether length() has something to read: lengths, or a page index.
  EKV_HOST_DEVICE bool has_lengths() const {
    return lengths != nullptr || (page_indptr != nullptr && last_page_len != nullptr);
  }
  // Tokens a sequence can hold.
  EKV_HOST_DEVICE int capacity() const { return block_len * max_blocks_per_seq; }
};

// Paged pool, K and V each [num_blocks][kv_heads][block_len][head_dim].
template <typename T>
KVView<T> paged_kv(T* k, T* v, const std::int32_t* block_table, std::int32_t* lengths,
                   int batch, int kv_heads, int head_dim, int block_len, int max_blocks_per_seq) {
  if (block_table == nullptr) throw Error("paged_kv: a paged cache needs a block table");
  KVView<T> view{k, v, block_table, lengths, batch, kv_heads, head_dim, block_len, max_blocks_per_seq};
  view.token_stride = head_dim;
  view.head_stride = static_cast<std::int64_t>(block_len) * head_dim;
  view.block_stride = view.head_stride * kv_heads;
  if (block_len > 0 && (block_len & (block_len - 1)) == 0) {
    view.block_shift = 0;
    while ((1 << view.block_shift) < block_len) ++view.block_shift;
  }
  return view;
}

// vLLM's paged blocks, K and V each [num_blocks][block_len][kv_heads][head_dim] (tokens
// outer within a block: vLLM's key_cache / value_cache, kv_cache[0] and kv_cache[1] of its
// FlashAttention backend), block_table int32 [batch][max_blocks_per_seq] and lengths
// (vLLM's seq_lens) int32 [batch].
template <typename T>
KVView<T> paged_nhd_kv(T* k, T* v, const std::int32_t* block_table, std::int32_t* lengths, int batch, int kv_heads,
                       int head_dim, int block_len, int max_blocks_per_seq) {
  KVView<T> view = paged_kv<T>(k, v, block_table, lengths, batch, kv_heads, head_dim, block_len, max_blocks_per_seq);
  view.token_stride = static_cast<std::int64_t>(kv_heads) * head_dim;
  view.head_stride = head_dim;
  view.block_stride = view.token_stride * block_len;
  return view;
}

// How a page of FlashInfer's paged cache is laid out: kv_layout "NHD", [page_size]
// [kv_heads][head_dim], or "HND", [kv_heads][page_size][head_dim].
enum class PageLayout { kNHD, kHND };

// FlashInfer's page-index form (BatchDecodeWithPagedKVCacheWrapper's paged_kv_indptr,
// paged_kv_indices, paged_kv_last_page_len), int32, wherever the view's kernels run.
struct PageIndex {
  const std::int32_t* indptr = nullptr;         // [batch + 1], indptr[0] = 0
  const std::int32_t* indices = nullptr;        // [indptr[batch]], page ids
  const std::int32_t* last_page_len = nullptr;  // [batch], 1 .. page_size (a sequence with no pages: ignored)
};

// FlashInfer's paged cache through its page index, K and V each [max_num_pages][page]
// with the page laid out as `layout` says. page_stride: elements from one page of K to the
// next, 0 for separate K and V tensors (page_size x kv_heads x head_dim); FlashInfer's
// single tensor [max_num_pages][2][page] has v = k + page_size x kv_heads x head_dim and
// page_stride twice that. max_pages_per_seq bounds every sequence's page count (kernels
// clamp a longer sequence to it), as max_blocks_per_seq does for a paged view.
template <typename T>
KVView<T> page_index_kv(T* k, T* v, const PageIndex& index, int batch, int kv_heads, int head_dim, int page_size,
                        int max_pages_per_seq, PageLayout layout = PageLayout::kNHD, std::int64_t page_stride = 0) {
  if (index.indptr == nullptr || index.indices == nullptr || index.last_page_len == nullptr) {
    throw Error("page_index_kv: needs indptr, indices and last_page_len");
  }
  if (page_stride < 0) throw Error("page_index_kv: page_stride must be >= 0, got " + std::to_string(page_stride));
  KVView<T> view =
      layout == PageLayout::kNHD
          ? paged_nhd_kv<T>(k, v, index.indices, nullptr, batch, kv_heads, head_dim, page_size, max_pages_per_seq)
          : paged_kv<T>(k, v, index.indices, nullptr, batch, kv_heads, head_dim, page_size, max_pages_per_seq);
  if (page_stride != 0) view.block_stride = page_stride;
  view.page_indptr = index.indptr;
  view.last_page_len = index.last_page_len;
  return view;
}

// Contiguous, K and V each [batch][kv_heads][capacity][head_dim] ("HND").
template <typename T>
KVView<T> contiguous_hnd_kv(T* k, T* v, std::int32_t* lengths, int batch, int kv_heads,
                            int head_dim, int capacity) {
  KVView<T> view{k, v, nullptr, lengths, batch, kv_heads, head_dim, capacity, 1};
  view.token_stride = head_dim;
  view.head_stride = static_cast<std::int64_t>(capacity) * head_dim;
  view.block_stride = view.head_stride * kv_heads;
  return view;
}

// Contiguous, K and V each [batch][capacity][kv_heads][head_dim] ("NHD").
template <typename T>
KVView<T> contiguous_nhd_kv(T* k, T* v, std::int32_t* lengths, int batch, int kv_heads,
                            int head_dim, int capacity) {
  KVView<T> view{k, v, nullptr, lengths, batch, kv_heads, head_dim, capacity, 1};
  view.token_stride = static_cast<std::int64_t>(kv_heads) * head_dim;
  view.head_stride = head_dim;
  view.block_stride = view.token_stride * capacity;
  return view;
}

}  // namespace ekv
