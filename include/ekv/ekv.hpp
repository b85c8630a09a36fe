#pragma once
// ekv's host-compilable half, for a translation unit built by a C++ compiler alone (g++,
// clang++, or the host side of a .cu file): errors, buffers, streams, events, graphs,
// device info, dtypes, streaming grid sizes, the reference of selection by magnitude; KV
// views and the float64 references; elastic configs, budgets, policies and accuracy
// tools; cache placement and the hybrid block table; the CPU backend (CPUInfer,
// cpu_decode, CpuElasticDecode). The kernels need nvcc: <ekv/ekv.cuh>.

#include "ekv/core/allocation.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/core/host_device.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/core/version.hpp"

#include "ekv/kernels/magnitude_select_reference.hpp"
#include "ekv/kernels/streaming_grid.hpp"

#include "ekv/attention/decode_support.hpp"
#include "ekv/attention/decode_traits.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/attention/reference.hpp"
#include "ekv/attention/sequence_blocks.hpp"

#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/block_sparse_view.hpp"
#include "ekv/elastic/budget.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/elastic_problem.hpp"
#include "ekv/elastic/policy.hpp"
#include "ekv/elastic/reference.hpp"
#include "ekv/elastic/reference_anchors.hpp"
#include "ekv/elastic/reference_select.hpp"

#include "ekv/cache/block_allocator.hpp"
#include "ekv/cache/hybrid_table.hpp"
#include "ekv/cache/kv_cache_args.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/kv_cache_file.hpp"
#include "ekv/cache/kv_cache_views.hpp"
#include "ekv/cache/placement.hpp"
#include "ekv/cache/safetensors.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/cache/tier_table.hpp"

#include "ekv/cpu/attend_range.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/cpu_elastic.hpp"
#include "ekv/cpu/exp.hpp"
#include "ekv/cpu/group_tile.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "ekv/cpu/kvcache.hpp"
#include "ekv/cpu/merge_states.hpp"
#include "ekv/cpu/quant_rows.hpp"
#include "ekv/cpu/row_ops.hpp"
#include "ekv/cpu/thread_pool.hpp"
#include "ekv/cpu/to_float.hpp"
