#pragma once
// A caller's array as the device sees it: the caller's pointer where it is device memory,
// a device copy where it is host memory (pageable or pinned), so that a numpy caller
// needs no CUDA package. Each pointer is classified on its own by cudaPointerGetAttributes.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <type_traits>

#include "ekv/c_api/arguments.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv::capi {

enum class MemoryKind { kHost, kDevice };

// Where `p` (the argument `name`) lives. Device memory must be on `device` (the call's);
// managed memory counts as device memory, host memory the device cannot address
// directly (pageable), or should not read in place over the bus (pinned), as host.
inline MemoryKind memory_kind(const void* p, const char* name, int device) {
  cudaPointerAttributes attributes{};
  EKV_CUDA_CHECK(cudaPointerGetAttributes(&attributes, p), std::string("cannot tell where ") + name + " points");
  if (attributes.type == cudaMemoryTypeManaged) return MemoryKind::kDevice;
  if (attributes.type != cudaMemoryTypeDevice) return MemoryKind::kHost;
  if (attributes.device != device) {
    reject(std::string(name) + " is memory of device " + std::to_string(attributes.device) +
           ", and the calling thread's current device is " + std::to_string(device) +
           "; supported: host memory or memory of the current device (cudaSetDevice first)");
  }
  return MemoryKind::kDevice;
}

// `count` elements at the caller's pointer, usable by kernels on `stream`'s device; T may
// be const for an input.
template <typename T>
class DeviceSide {
 public:
  DeviceSide(T* caller, std::size_t count, const char* name, int device, const Stream& stream)
      : caller_(caller), count_(count) {
    if (memory_kind(caller, name, device) == MemoryKind::kHost) {
      staging_ = DeviceBuffer<std::remove_const_t<T>>(count, stream);
    }
  }

  T* data() const noexcept { return staged() ? staging_.data() : caller_; }
  Span<T> span() const noexcept { return {data(), count_}; }
  bool staged() const noexcept { return !staging_.empty(); }

  // The caller's first `count` elements to the device (nothing where they are there).
  void copy_in(std::size_t count, const Stream& stream) {
    if (staged() && count > 0) staging_.copy_from(Span<const T>(caller_, count), stream);
  }
  // The device's first `count` elements back to the caller (nothing where they are there).
  void copy_out(std::size_t count, const Stream& stream) {
    static_assert(!std::is_const_v<T>, "an input is never copied back");
    if (staged() && count > 0) staging_.copy_to(Span<T>(caller_, count), stream);
  }

 private:
  T* caller_;
  std::size_t count_;
  DeviceBuffer<std::remove_const_t<T>> staging_;
};

}  // namespace ekv::capi
