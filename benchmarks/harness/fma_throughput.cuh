#pragma once
// FMA chains under the harness's names: the probe lives in the library
// (ekv/kernels/fma_chains.cuh), where the C API's ekv_compute_throughput uses it too.

#include "ekv/kernels/fma_chains.cuh"

namespace ekv::bench {

using ekv::fma_chain_flops;
using ekv::fma_chains;
using ekv::FmaLanes;
using ekv::kFmaChains;
using ekv::kFmaCtaThreads;

namespace detail {
using ekv::detail::lanes_from_float;
}  // namespace detail

}  // namespace ekv::bench
