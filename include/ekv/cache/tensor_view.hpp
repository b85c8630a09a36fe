#pragma once
// TensorView: a non-owning view of a caller's tensor (pointer, dtype, shape, strides in
// elements, device), what KVCache's calls take for every array, so that neither torch nor
// any other tensor library is needed. check() compares it with what a call expects and
// throws ekv::Error naming the call, the argument, what it got and what it needed.

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"

namespace ekv {

enum class DeviceKind { kHost, kCuda };

inline const char* to_string(DeviceKind kind) { return kind == DeviceKind::kHost ? "host" : "cuda"; }

struct TensorView {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int ndim = 0;
  std::array<std::int64_t, kMaxDims> shape{};
  std::array<std::int64_t, kMaxDims> strides{};  // in elements; row-major when made by contiguous()
  DeviceKind device = DeviceKind::kHost;

  // A row-major view of `data` with the given shape.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> dims,
                               DeviceKind device) {
    if (dims.size() > kMaxDims) throw Error("TensorView: at most 4 dimensions");
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.ndim = static_cast<int>(dims.size());
    t.device = device;
    int i = 0;
    for (std::int64_t d : dims) t.shape[i++] = d;
    std::int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.strides[d] = stride;
      stride *= t.shape[d];
    }
    return t;
  }
  template <typename T>
  static TensorView of(T* data, std::initializer_list<std::int64_t> dims, DeviceKind device) {
    return contiguous(const_cast<std::remove_const_t<T>*>(data), kDTypeOf<std::remove_const_t<T>>, dims, device);
  }

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  bool is_contiguous() const {
    std::int64_t stride = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != stride) return false;
      stride *= shape[d];
    }
    return true;
  }
  std::string shape_string() const {
    std::string s = "[";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + "]";
  }

  // Throws unless this is a contiguous tensor of `want_dtype` on `want_device` with shape
  // `dims`, named in the message as `names` (e.g. "[batch, q_head_num, head_dim]").
  void check(const char* call, const char* argument, DType want_dtype, std::initializer_list<std::int64_t> dims,
             const char* names, DeviceKind want_device) const {
    // messages are built only where a check fails: attn checks three tensors every step
    const auto where = [&] { return std::string(call) + ": " + argument; };
    if (data == nullptr) throw Error(where() + " is null");
    if (device != want_device) {
      throw Error(where() + " is in " + to_string(device) + " memory; this cache needs " + to_string(want_device));
    }
    if (dtype != want_dtype) {
      throw Error(where() + " has dtype " + to_string(dtype) + "; needs " + to_string(want_dtype));
    }
    bool same = ndim == static_cast<int>(dims.size());
    int d = 0;
    for (std::int64_t n : dims) same = same && shape[d++] == n;
    if (!same) {
      std::string want = "[";
      d = 0;
      for (std::int64_t n : dims) want += (d++ ? ", " : "") + std::to_string(n);
      throw Error(where() + " has shape " + shape_string() + "; needs " + want + "] " + names);
    }
    if (!is_contiguous()) throw Error(where() + " is strided; needs a contiguous (row-major) tensor");
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

}  // namespace ekv
