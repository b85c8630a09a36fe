#pragma once
// Decode attention, one query token per sequence: plan_decode (host: validates, picks the
// split-KV count, sizes the workspace) and run_decode (stream-ordered, never allocates or
// synchronises, so a decode step can be captured in a CUDA Graph and replayed for any
// lengths up to the planned maximum, since lengths are read on the device).
//
// Shapes: q and o [batch][q_heads][head_dim] (o in q's dtype), lse float [batch][q_heads],
// the natural log of sum(exp(scale * q.k)); K and V as a KVView. Query head h reads kv
// head h / (q_heads / kv_heads). dtypes float, half, bfloat16 with float accumulation.
// A sequence of length 0 gives o = 0 and lse = -inf.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include "ekv/attention/decode_kernel.cuh"
#include "ekv/attention/decode_support.hpp"
#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/kernels/dependent_launch.cuh"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/vec.cuh"

namespace ekv {

struct DecodePlan {
  DecodeProblem problem;
  int device = 0;  // the ordinal planned for: kernel attributes are per device
  float scale = 0;
  int head_tile = 1;
  int head_tiles = 1;
  int num_splits = 1;
  int split_tokens = 0;  // a multiple of kDecodeSplitAlign
  DecodeCopy copy = DecodeCopy::kCpAsync;  // as resolved by plan_decode, never kAuto
  // how K and V are stored: the dtype's dense storage from plan_decode, a quantized one
  // from plan_quant_decode (decode_quant.cuh)
  KVStorage kv_storage = KVStorage::kFloat16;

  // The split counters, then the partial states: [batch][q_heads][num_splits][head_dim]
  // o and [batch][q_heads][num_splits] lse.
  std::size_t workspace_bytes() const {
    if (num_splits == 1) return 0;
    const std::size_t rows = static_cast<std::size_t>(problem.batch) * problem.q_heads;
    return counter_bytes() + rows * num_splits * (problem.head_dim + 1) * sizeof(float);
  }
  // one counter per CTA column (sequence, kv head, head tile): how many splits have
  // finished; 16-byte aligned so the partials after them are
  std::size_t counter_bytes() const {
    const std::size_t counters = static_cast<std::size_t>(problem.batch) * problem.kv_heads * head_tiles;
    return (counters * sizeof(int) + 15) / 16 * 16;
  }
};

// Half and bfloat16 run on tensor cores; float on CUDA cores.
template <typename T>
inline constexpr bool kDecodeOnTensorCores = !std::is_same_v<T, float>;

namespace detail {

// Calls f(TypeTag<T>, integral_constant head_dim): the one place where decode's runtime
// dtype and head_dim become template arguments.
template <typename F>
void dispatch_decode(DType dtype, int head_dim, F&& f) {
  dispatch<kDecodeDTypes>("dtype", "decode", dtype, [&](auto type) {
    dispatch<kDecodeHeadDims>("head_dim", "decode", head_dim, [&](auto dim) { f(type, dim); });
  });
}

// Calls f(kernel, cta_threads, dynamic_smem_bytes) for the decode kernel instance of
// (T, HeadDim) and, on tensor cores, of the copy (kBulk or not), on CUDA cores of the
// head tile.
template <typename T, int HeadDim, typename F>
void with_decode_kernel(int head_tile, DecodeCopy copy, F&& f) {
  if constexpr (kDecodeOnTensorCores<T>) {
    using Traits = DecodeTcTraits<T, HeadDim>;
    if (copy == DecodeCopy::kBulk) {
      f(decode_tc_kernel<T, HeadDim, true>, Traits::kCtaThreads, Traits::kBulkSmemBytes);
    } else {
      f(decode_tc_kernel<T, HeadDim, false>, Traits::kCtaThreads, Traits::kSmemBytes);
    }
  } else {
    dispatch<kDecodeHeadTiles>("head_tile", "decode", head_tile, [&](auto tile) {
      f(decode_kernel<T, HeadDim, decltype(tile)::value>, DecodeTraits<T, HeadDim>::kCtaThreads, 0);
    });
  }
}

// Split count whose CTAs fill whole waves best: a last wave a third full costs as
// much time as a full one. Prefers the fewest splits within 5% of the best fill.
inline int choose_splits(long units, long slots, int most) {
  double best = 0;
  std::vector<double> fill(most + 1, 0.0);
  for (int s = 1; s <= most; ++s) {
    const double waves = static_cast<double>(units * s) / static_cast<double>(slots);
    fill[s] = waves / std::ceil(waves);
    best = std::max(best, fill[s]);
  }
  for (int s = 1; s <= most; ++s) {
    if (fill[s] >= 0.95 * best) return s;
  }
  return 1;
}

// The copy plan_decode runs for T: kBulk needs the tensor-core kernel and device code for
// sm_90 or newer in this build (read off the kernel's binary, so a build for sm_80 run on
// an H100 through its PTX keeps cp.async); kAuto takes kBulk where it can.
template <typename T, int HeadDim>
DecodeCopy resolve_decode_copy(DecodeCopy asked) {
  if constexpr (kDecodeOnTensorCores<T>) {
    cudaFuncAttributes attributes{};
    EKV_CUDA_CHECK(cudaFuncGetAttributes(&attributes, decode_tc_kernel<T, HeadDim, true>),
                   "plan_decode: cannot read the decode kernel's attributes");
    const bool built = attributes.binaryVersion >= 90;
    if (asked == DecodeCopy::kBulk && !built) {
      throw Error("plan_decode: copy=bulk needs decode device code for sm_90 or newer, this build runs sm_" +
                  std::to_string(attributes.binaryVersion) + "; supported here: auto, cp.async");
    }
    return asked == DecodeCopy::kAuto ? (built ? DecodeCopy::kBulk : DecodeCopy::kCpAsync) : asked;
  } else {
    if (asked == DecodeCopy::kBulk) {
      throw Error(std::string("plan_decode: copy=bulk runs on the tensor-core kernel (float16, bfloat16), not ") +
                  to_string(kDTypeOf<T>) + "; supported for it: auto, cp.async");
    }
    return DecodeCopy::kCpAsync;
  }
}

}  // namespace detail

// Splits so that batch x kv heads x head tiles x splits CTAs fill whole waves of the
// SMs (occupancy read from the kernel instance), each split a multiple of
// kDecodeSplitAlign tokens. `num_splits` > 0 asks for a count (tests, tuning); the plan
// may take fewer where splits would be shorter than that. `copy` picks how K and V are
// staged (DecodeCopy; the default lets the plan choose).
// Throws ekv::Error for an unsupported problem or copy.
inline DecodePlan plan_decode(const DecodeProblem& problem, const DeviceInfo& device, int num_splits = 0,
                              DecodeCopy copy = DecodeCopy::kAuto) {
  if (Support s = supports(problem); !s) throw Error(s.why);
  int current = 0;
  EKV_CUDA_CHECK(cudaGetDevice(&current), "plan_decode: no usable CUDA device");
  if (current != device.ordinal) {
    throw Error("plan_decode: plans for device " + std::to_string(device.ordinal) + " while device " +
                std::to_string(current) + " is current; make it current first");
  }
  DecodePlan plan;
  plan.problem = problem;
  plan.device = device.ordinal;
  plan.scale = problem.scale > 0.0f ? problem.scale : 1.0f / std::sqrt(static_cast<float>(problem.head_dim));
  plan.kv_storage = dense_storage(problem.dtype);
  int ctas_per_sm = 0;
  detail::dispatch_decode(problem.dtype, problem.head_dim, [&](auto type, auto dim) {
    using T = typename decltype(type)::type;
    if constexpr (kDecodeOnTensorCores<T>) {
      plan.head_tile = DecodeTcTraits<T, decltype(dim)::value>::kHeads;
    } else {
      plan.head_tile = decode_head_tile(problem.group());
    }
    plan.copy = detail::resolve_decode_copy<T, decltype(dim)::value>(copy);
    detail::with_decode_kernel<T, decltype(dim)::value>(plan.head_tile, plan.copy, [&](auto kernel, int threads,
                                                                                       int smem) {
      // above 48 KB a kernel must opt in; plan does it once, so run never sets attributes
      if (smem > 48 * 1024) {
        EKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                       "plan_decode: cannot give the decode kernel " + std::to_string(smem) +
                           " bytes of shared memory");
      }
      EKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas_per_sm, kernel, threads, smem),
                     "plan_decode: cannot read the decode kernel's occupancy");
    });
  });
  plan.head_tiles = (problem.group() + plan.head_tile - 1) / plan.head_tile;
  const int len = std::max(1, problem.max_seq_len);
  const int most = std::min(256, (len + kDecodeSplitAlign - 1) / kDecodeSplitAlign);
  if (num_splits <= 0) {
    const long units = static_cast<long>(problem.batch) * problem.kv_heads * plan.head_tiles;
    const long slots = static_cast<long>(std::max(1, ctas_per_sm)) * device.sm_count;
    num_splits = detail::choose_splits(units, slots, most);
  }
  const int per_split = (len + std::min(num_splits, most) - 1) / std::min(num_splits, most);
  plan.split_tokens = (per_split + kDecodeSplitAlign - 1) / kDecodeSplitAlign * kDecodeSplitAlign;
  plan.num_splits = (len + plan.split_tokens - 1) / plan.split_tokens;
  return plan;
}

namespace detail {

template <typename T, int HeadDim>
void launch_decode(const DecodePlan& plan, const DecodeParams<T>& params, const Stream& stream) {
  const dim3 grid(plan.num_splits, plan.problem.kv_heads * plan.head_tiles, plan.problem.batch);
  with_decode_kernel<T, HeadDim>(plan.head_tile, plan.copy, [&](auto kernel, int threads, int smem) {
    launch_dependent(kernel, grid, threads, smem, stream.get(), params);
  });
  check_launch("decode", stream.get());
}

}  // namespace detail

// Zeroes a new workspace's split counters, once, before its first run_decode. Each run
// leaves them at zero again, so later steps and graph replays of the same plan need no
// clearing. Another plan lays its partial states out differently: clear again before a
// workspace serves another plan.
inline void clear_decode_workspace(const DecodePlan& plan, void* workspace, const Stream& stream) {
  if (plan.num_splits == 1) return;
  if (workspace == nullptr) throw Error("clear_decode_workspace: null workspace for a plan that splits KV");
  EKV_CUDA_CHECK(cudaMemsetAsync(workspace, 0, plan.counter_bytes(), stream.get()),
                 "clear_decode_workspace: cannot clear the split counters");
}

// A workspace for `plan`, allocated and cleared before it returns (plain device memory,
// so usable on any stream; it waits for the clearing, once, at allocation time).
inline DeviceBuffer<unsigned char> make_decode_workspace(const DecodePlan& plan, const Stream& stream) {
  DeviceBuffer<unsigned char> workspace(plan.workspace_bytes());
  clear_decode_workspace(plan, workspace.data(), stream);
  stream.synchronize();
  return workspace;
}

namespace detail {

// A launch's parameters but the view: the plan's shapes and splits, the outputs, and the
// workspace's counters and partial states. Checks the workspace and the current device.
template <typename T, typename View = KVView<T>>
DecodeParams<T, View> decode_params(const DecodePlan& plan, const T* q, T* o, float* lse, void* workspace) {
  const DecodeProblem& p = plan.problem;
  if (plan.num_splits > 1 && (workspace == nullptr || !is_aligned<16>(workspace))) {
    throw Error("run_decode: the plan splits KV and needs " + std::to_string(plan.workspace_bytes()) +
                " bytes of 16-byte-aligned workspace");
  }
  int current = 0;
  EKV_CUDA_CHECK(cudaGetDevice(&current), "run_decode: no usable CUDA device");
  if (current != plan.device) {
    throw Error("run_decode: the plan is for device " + std::to_string(plan.device) + ", device " +
                std::to_string(current) + " is current");
  }
  DecodeParams<T, View> params;
  params.q = q;
  params.o = o;
  params.lse = lse;
  params.q_heads = p.q_heads;
  params.group = p.group();
  params.head_tiles = plan.head_tiles;
  params.num_splits = plan.num_splits;
  params.split_tokens = plan.split_tokens;
  params.scale_log2 = plan.scale * 1.4426950408889634f;
  if (plan.num_splits > 1) {
    const int rows = p.batch * p.q_heads;
    params.arrivals = static_cast<int*>(workspace);
    params.partial_o = reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) + plan.counter_bytes());
    params.partial_lse = params.partial_o + static_cast<std::size_t>(rows) * plan.num_splits * p.head_dim;
  }
  return params;
}

}  // namespace detail

// Runs the plan: one kernel launch. `workspace` must hold plan.workspace_bytes() (may be
// null when 0), cleared once by clear_decode_workspace, and not be shared by concurrent
// launches.
// kv.lengths and kv.block_table are read on the device. Lengths up to the view's
// capacity give exact results; beyond plan.problem.max_seq_len the last split takes the
// extra tokens (slower, still exact). Throws ekv::Error where the view disagrees with
// the plan or the plan's device is not current.
template <typename T>
void run_decode(const DecodePlan& plan, const KVView<T>& kv, const T* q, T* o, float* lse, void* workspace,
                const Stream& stream) {
  const DecodeProblem& p = plan.problem;
  if (is_quantized(plan.kv_storage)) {
    throw Error(std::string("run_decode: the plan is for ") + to_string(plan.kv_storage) +
                " storage (plan_quant_decode), the view is dense");
  }
  if (kDTypeOf<T> != p.dtype) {
    throw Error(std::string("run_decode: the plan is for ") + to_string(p.dtype) + ", the view holds " +
                to_string(kDTypeOf<T>));
  }
  if (kv.batch != p.batch || kv.kv_heads != p.kv_heads || kv.head_dim != p.head_dim) {
    throw Error("run_decode: the view's batch, kv_heads or head_dim differ from the plan's");
  }
  if (kv.capacity() < p.max_seq_len) {
    throw Error("run_decode: the view holds " + std::to_string(kv.capacity()) + " tokens per sequence, the plan " +
                std::to_string(p.max_seq_len));
  }
  if (kv.k == nullptr || kv.v == nullptr || !kv.has_lengths() || q == nullptr || o == nullptr || lse == nullptr) {
    throw Error("run_decode: null K, V, lengths, q, o or lse");
  }
  if (!is_aligned<16>(kv.k) || !is_aligned<16>(kv.v) || !is_aligned<16>(q)) {
    throw Error("run_decode: K, V and q must be 16-byte aligned");
  }
  DecodeParams<T> params = detail::decode_params<T>(plan, q, o, lse, workspace);
  params.kv = kv;
  detail::dispatch_decode(p.dtype, p.head_dim, [&](auto type, auto dim) {
    if constexpr (std::is_same_v<typename decltype(type)::type, T>) {  // checked above
      detail::launch_decode<T, decltype(dim)::value>(plan, params, stream);
    }
  });
}

}  // namespace ekv
