#pragma once
// A caller's ekv_tensor (c_api.h, DLPack's fields) as the TensorView the caches check and
// read: the descriptor's own fields are checked here, naming the argument (`q.ndim=5 not
// supported; ...`); what the call needs of it (dtype, shape, memory, contiguity) is
// checked by the cache through kv_cache_args.hpp, as for C++ callers.

#include <cstdint>
#include <string>

#include "ekv/c_api.h"
#include "ekv/c_api/arguments.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/dtype.hpp"

namespace ekv::capi {

// Tensors of every dtype: the float types, and the storage types a quantized cache's block
// accessors take (kv_type); what a call needs is checked by the cache.
inline constexpr NamedValue kTensorDTypes[] = {
    {EKV_DTYPE_FLOAT32, "EKV_DTYPE_FLOAT32"},         {EKV_DTYPE_FLOAT16, "EKV_DTYPE_FLOAT16"},
    {EKV_DTYPE_BFLOAT16, "EKV_DTYPE_BFLOAT16"},       {EKV_DTYPE_FLOAT8_E4M3, "EKV_DTYPE_FLOAT8_E4M3"},
    {EKV_DTYPE_Q8_0, "EKV_DTYPE_Q8_0"},               {EKV_DTYPE_Q4_0, "EKV_DTYPE_Q4_0"}};
inline constexpr NamedValue kDeviceTypes[] = {
    {EKV_DEVICE_CPU, "EKV_DEVICE_CPU"}, {EKV_DEVICE_CUDA, "EKV_DEVICE_CUDA"},
    {EKV_DEVICE_CUDA_HOST, "EKV_DEVICE_CUDA_HOST"}};

// ekv_dtype's values are DType's, so that the two convert by a cast.
static_assert(EKV_DTYPE_FLOAT32 == static_cast<int>(DType::kFloat32) &&
                  EKV_DTYPE_FLOAT16 == static_cast<int>(DType::kFloat16) &&
                  EKV_DTYPE_BFLOAT16 == static_cast<int>(DType::kBFloat16) &&
                  EKV_DTYPE_FLOAT8_E4M3 == static_cast<int>(DType::kFloat8E4M3) &&
                  EKV_DTYPE_Q8_0 == static_cast<int>(DType::kQ8_0) && EKV_DTYPE_Q4_0 == static_cast<int>(DType::kQ4_0),
              "ekv_dtype mirrors ekv::DType");

// Where memory of `device_type` is, to a cache: pinned host memory is host memory.
inline DeviceKind device_kind(int device_type) {
  return device_type == EKV_DEVICE_CUDA ? DeviceKind::kCuda : DeviceKind::kHost;
}

// The argument `name`'s descriptor as a TensorView (its data pointer is checked by the
// cache, which names the call).
inline TensorView tensor_view(const ekv_tensor* t, const char* name) {
  require_pointer(t, name, "an ekv_tensor");
  const std::string field = std::string(name) + ".";
  require_one_of(t->dtype, field + "dtype", kTensorDTypes);
  require_one_of(t->device_type, field + "device_type", kDeviceTypes);
  if (t->ndim < 1 || t->ndim > TensorView::kMaxDims) {
    reject(field + "ndim=" + std::to_string(t->ndim) + " not supported; supported: 1 to " +
           std::to_string(TensorView::kMaxDims));
  }
  if (t->shape == nullptr) reject(field + "shape is NULL; it must point to ndim int64_t");
  TensorView v;
  v.data = t->data;
  v.dtype = static_cast<DType>(t->dtype);
  v.ndim = t->ndim;
  v.device = device_kind(t->device_type);
  std::int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    if (t->shape[d] < 0) {
      reject(field + "shape[" + std::to_string(d) + "]=" + std::to_string(t->shape[d]) +
             " not supported; supported: >= 0");
    }
    v.shape[d] = t->shape[d];
    v.strides[d] = t->strides != nullptr ? t->strides[d] : stride;
    // unsigned: a shape too large to count wraps instead of overflowing; check() refuses it
    stride = static_cast<std::int64_t>(static_cast<std::uint64_t>(stride) * static_cast<std::uint64_t>(t->shape[d]));
  }
  return v;
}

}  // namespace ekv::capi
