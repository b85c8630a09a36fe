#pragma once
// magnitude_select: keeps the elements whose magnitude exceeds a threshold, in their
// order, with their positions; CUB's device select (decoupled look-back): one pass that
// reads the input once and writes only what it keeps, and for the positions a second pass
// before it (positions selected by the value they point at), which on the H200 runs faster
// than one pass over (position, value) pairs: 100M floats, half kept, 0.494 against 0.538
// ms, a tenth kept 0.410 against 0.506 (benchmarks/RESULTS.md).

#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

// Positions are int32: kMagnitudeSelectMaxItems elements at most.
inline constexpr std::size_t kMagnitudeSelectMaxItems = INT32_MAX;

// |x| > threshold. NaN is never kept (every comparison with it is false); built without
// fast math, denormals are compared as they are, not flushed to zero.
struct AboveMagnitude {
  float threshold;
  __host__ __device__ bool operator()(float x) const { return fabsf(x) > threshold; }
};

// Whether the element at a position is kept: the positions' select.
struct AboveMagnitudeAt {
  const float* in;
  float threshold;
  __host__ __device__ bool operator()(std::int32_t i) const { return AboveMagnitude{threshold}(in[i]); }
};

namespace detail {

// One CUB call for both the workspace query (workspace == nullptr) and the run, so the
// two cannot use different iterator types; with_indices picks them.
inline cudaError_t magnitude_select_call(void* workspace, std::size_t& workspace_bytes, bool with_indices,
                                         const float* in, std::size_t n, float threshold, float* out,
                                         std::int32_t* indices, std::int32_t* num_selected, cudaStream_t stream) {
  const auto items = static_cast<std::int64_t>(n);
  auto values = [&](std::size_t& bytes) {
    return cub::DeviceSelect::If(workspace, bytes, in, out, num_selected, items, AboveMagnitude{threshold}, stream);
  };
  if (!with_indices) return values(workspace_bytes);
  // the positions first, then the values; both passes count the same kept elements into
  // num_selected, and share the workspace (the larger of their two sizes)
  auto positions = [&](std::size_t& bytes) {
    return cub::DeviceSelect::If(workspace, bytes, thrust::counting_iterator<std::int32_t>(0), indices, num_selected,
                                 items, AboveMagnitudeAt{in, threshold}, stream);
  };
  std::size_t position_bytes = workspace_bytes, value_bytes = workspace_bytes;
  cudaError_t status = positions(position_bytes);
  if (status == cudaSuccess) status = values(value_bytes);
  if (workspace == nullptr) workspace_bytes = std::max(position_bytes, value_bytes);
  return status;
}

inline void check_magnitude_select_items(std::size_t n) {
  if (n > kMagnitudeSelectMaxItems) {
    throw Error("magnitude_select: " + std::to_string(n) + " elements; supported: at most " +
                std::to_string(kMagnitudeSelectMaxItems) + " (positions are int32)");
  }
}

}  // namespace detail

// Device workspace bytes that magnitude_select needs for `n` elements, with or without
// positions. Throws ekv::Error for more than kMagnitudeSelectMaxItems elements.
inline std::size_t magnitude_select_workspace_bytes(std::size_t n, bool with_indices) {
  detail::check_magnitude_select_items(n);
  std::size_t bytes = 0;
  EKV_CUDA_CHECK(detail::magnitude_select_call(nullptr, bytes, with_indices, nullptr, n, 0.0f, nullptr, nullptr,
                                               nullptr, nullptr),
                 "magnitude_select_workspace_bytes: CUB's workspace query failed");
  return bytes;
}

// Writes the k elements x of `in` with |x| > threshold to out[0, k), in their order and
// bit for bit, their positions in `in` to indices[0, k) unless indices is nullptr, and k
// to *num_selected (device memory). All pointers are device memory; out and indices hold
// in.size() elements, none overlaps another; workspace holds
// magnitude_select_workspace_bytes(in.size(), indices != nullptr) bytes. Throws
// ekv::Error for null pointers, a short workspace or more than kMagnitudeSelectMaxItems
// elements. Stream-ordered, graph-capturable.
inline void magnitude_select(Span<const float> in, float threshold, float* out, std::int32_t* indices,
                             std::int32_t* num_selected, Span<std::byte> workspace, const Stream& stream) {
  detail::check_magnitude_select_items(in.size());
  if ((in.data() == nullptr && !in.empty()) || (out == nullptr && !in.empty()) || num_selected == nullptr) {
    throw Error("magnitude_select: in, out and num_selected must not be null");
  }
  const bool with_indices = indices != nullptr;
  std::size_t bytes = magnitude_select_workspace_bytes(in.size(), with_indices);
  if (workspace.size() < bytes || workspace.data() == nullptr) {
    throw Error("magnitude_select: the workspace holds " + std::to_string(workspace.size()) + " bytes, CUB needs " +
                std::to_string(bytes));
  }
  EKV_CUDA_CHECK(detail::magnitude_select_call(workspace.data(), bytes, with_indices, in.data(), in.size(),
                                               threshold, out, indices, num_selected, stream.get()),
                 "magnitude_select: CUB's device select failed");
  check_launch("magnitude_select", stream.get());
}

}  // namespace ekv
