#pragma once
// All of ekv, for a .cu file built by nvcc: <ekv/ekv.hpp> and the kernels: vector loads,
// cp.async, mma, the tile pipeline, the streaming copy, FMA chains and selection by
// magnitude; append, exact decode and merge_states; anchors, scoring, selection,
// importance, block-sparse and elastic decode; hybrid GPU + CPU decode and the tiered
// cache. Device code needs sm_80 or newer.

#include "ekv/ekv.hpp"

#include "ekv/kernels/arch_check.cuh"
#include "ekv/kernels/async_copy.cuh"
#include "ekv/kernels/bulk_copy.cuh"
#include "ekv/kernels/unit_copy.cuh"
#include "ekv/kernels/copy.cuh"
#include "ekv/kernels/dependent_launch.cuh"
#include "ekv/kernels/fill.cuh"
#include "ekv/kernels/fma_chains.cuh"
#include "ekv/kernels/magnitude_select.cuh"
#include "ekv/kernels/mma.cuh"
#include "ekv/kernels/tile_pipeline.cuh"
#include "ekv/kernels/vec.cuh"

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_quant.cuh"
#include "ekv/attention/decode_block.cuh"
#include "ekv/attention/decode_kernel.cuh"
#include "ekv/attention/decode_tc_block.cuh"
#include "ekv/attention/merge_states.cuh"

#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/block_sparse.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/elastic/importance.cuh"
#include "ekv/elastic/score_mma.cuh"
#include "ekv/elastic/select.cuh"

#include "ekv/cache/kv_cache.cuh"

#include "ekv/cpu/hybrid_decode.cuh"
#include "ekv/cpu/tiered_cache.cuh"
