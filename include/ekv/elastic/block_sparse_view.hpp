#pragma once
// block_sparse_view: a paged view narrowed to selected blocks, each (sequence, kv head)
// with its own block-table row and length, so exact decode (GPU or CPU) runs on it
// unchanged. Host and device memory alike: the view only points.

#include <cstdint>

#include "ekv/attention/kv_view.hpp"
#include "ekv/core/error.hpp"

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
  return view;
}

}  // namespace ekv
