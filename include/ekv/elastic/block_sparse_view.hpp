#pragma once
// block_sparse_view: a paged view narrowed to selected blocks, each (sequence, kv head)
// with its own block-table row and length, so exact decode (GPU or CPU) runs on it
// unchanged; qhead_sparse_view, the same per query head. Host and device memory alike:
// the view only points.

#include <cstdint>
#include <string>

#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

// A view of base's blocks listed in tables [batch][kv_heads][max_selected] (physical
// block ids) holding lengths [batch][kv_heads] tokens: what gather_selected_blocks writes.
template <typename T>
KVView<T> block_sparse_view(const KVView<T>& base, const std::int32_t* tables, std::int32_t* lengths,
                            int max_selected) {
  if (base.block_table == nullptr) throw Error("block_sparse_view: the base view must be paged");
  if (tables == nullptr || lengths == nullptr || max_selected < 1) {
    throw Error("block_sparse_view: needs tables, lengths and max_selected >= 1");
  }
  KVView<T> view = base;
  view.block_table = tables;
  view.lengths = lengths;
  view.max_blocks_per_seq = max_selected;
  view.table_seq_stride = static_cast<std::int64_t>(base.kv_heads) * max_selected;
  view.table_head_stride = max_selected;
  view.length_seq_stride = base.kv_heads;
  view.length_head_stride = 1;
  view.page_indptr = nullptr;  // the rows above replace a page index's
  view.last_page_len = nullptr;
  return view;
}

// A view's block arithmetic (table, lengths, block_len, batch, kv heads): the view itself,
// or a quantized view's codes, with which its scales share it.
template <typename T>
const KVView<T>& block_layout(const KVView<T>& kv) {
  return kv;
}
inline const KVView<std::uint8_t>& block_layout(const QuantKVView& kv) { return kv.codes; }

// The same over quantized storage: codes and scales narrowed to the same blocks.
inline QuantKVView block_sparse_view(const QuantKVView& base, const std::int32_t* tables, std::int32_t* lengths,
                                     int max_selected) {
  QuantKVView view = base;
  view.codes = block_sparse_view(base.codes, tables, lengths, max_selected);
  view.scales = block_sparse_view(base.scales, tables, lengths, max_selected);  // null rows stay null (FP8)
  return view;
}

// Block-head units per pool block in a QHEAD table: unit = physical block x this + kv
// head addresses (block, head) as unit x head_stride, for any layout whose block stride is
// a multiple of its head stride (ekv's pool: kv_heads; vLLM's and FlashInfer's NHD pages:
// block_len x kv_heads; 0 where the layout has no such units). Units must fit int32.
template <typename T>
EKV_HOST_DEVICE std::int64_t head_units_per_block(const KVView<T>& base) {
  if (base.head_stride <= 0 || base.block_stride % base.head_stride != 0) return 0;
  return base.block_stride / base.head_stride;
}

// The QHEAD form: one row per query head, each its own kv head to the decode kernels
// (group 1), so tables hold block-head units (head_units_per_block), with rows
// [batch][q_heads][max_selected] and lengths [batch][q_heads].
template <typename T>
KVView<T> qhead_sparse_view(const KVView<T>& base, int q_heads, const std::int32_t* tables, std::int32_t* lengths,
                            int max_selected) {
  KVView<T> view = block_sparse_view(base, tables, lengths, max_selected);
  if (q_heads < 1 || q_heads % base.kv_heads != 0 || head_units_per_block(base) == 0) {
    throw Error("qhead_sparse_view: q_heads must be a multiple of kv_heads and the base view's block stride a "
                "multiple of its head stride, got q_heads=" + std::to_string(q_heads) + ", kv_heads=" +
                std::to_string(base.kv_heads) + ", block_stride=" + std::to_string(base.block_stride) +
                ", head_stride=" + std::to_string(base.head_stride));
  }
  view.kv_heads = q_heads;
  view.block_stride = base.head_stride;
  view.head_stride = 0;
  view.table_seq_stride = static_cast<std::int64_t>(q_heads) * max_selected;
  view.length_seq_stride = q_heads;
  return view;
}

}  // namespace ekv
