#pragma once
// DeviceBuffer<T>: an owned array in GPU memory, allocated directly or stream-ordered.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "ekv/core/allocation.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;

  // `count` elements from cudaMalloc, freed with cudaFree. Throws ekv::Error (leaving
  // nothing allocated) when the device cannot provide them (or core/allocation.hpp's test
  // hook says it cannot).
  explicit DeviceBuffer(std::size_t count) {
    if (count == 0) return;
    const std::size_t bytes = bytes_for(count);
    EKV_CUDA_CHECK(detail::allocation_fails() ? cudaErrorMemoryAllocation
                                              : cudaMalloc(reinterpret_cast<void**>(&ptr_), bytes),
                   alloc_failure(count));
    count_ = count;
    detail::count_device_bytes(static_cast<long long>(bytes));
  }

  // Stream-ordered: usable by work on `stream` at once, freed on that stream by the
  // destructor, so the stream must outlive the buffer.
  DeviceBuffer(std::size_t count, const Stream& stream) : stream_(stream.get()), stream_ordered_(true) {
    if (count == 0) return;
    const std::size_t bytes = bytes_for(count);
    EKV_CUDA_CHECK(detail::allocation_fails() ? cudaErrorMemoryAllocation
                                              : cudaMallocAsync(reinterpret_cast<void**>(&ptr_), bytes, stream_),
                   alloc_failure(count));
    count_ = count;
    detail::count_device_bytes(static_cast<long long>(bytes));
  }

  DeviceBuffer(const DeviceBuffer&) = delete;  // a deep copy must be explicit: copy_from
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept { take(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return count_; }
  std::size_t size_bytes() const noexcept { return count_ * sizeof(T); }
  bool empty() const noexcept { return count_ == 0; }
  Span<T> span() const noexcept { return {ptr_, count_}; }

  // Frees now (stream-ordered buffers: on their stream) and leaves an empty buffer.
  void reset() noexcept {
    if (ptr_ != nullptr) {
      detail::count_device_bytes(-static_cast<long long>(size_bytes()));
      if (stream_ordered_) {
        cudaFreeAsync(ptr_, stream_);
      } else {
        cudaFree(ptr_);
      }
    }
    ptr_ = nullptr;
    count_ = 0;
    stream_ = nullptr;
    stream_ordered_ = false;
  }

  // Host to device, synchronously: the data is on the device when this returns, so work
  // on any stream may read it. (A plain cudaMemcpy from pageable memory may return
  // before the DMA lands, and ekv's streams do not wait for the legacy stream.)
  void copy_from(Span<const T> host) {
    check_fits("copy_from", host.size());
    EKV_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice),
                   "DeviceBuffer::copy_from: host-to-device copy failed");
    EKV_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy), "DeviceBuffer::copy_from: host-to-device copy failed");
  }
  // Stream-ordered; `host` must stay alive (and pinned, for a truly async copy) until
  // the stream reaches the copy.
  void copy_from(Span<const T> host, const Stream& stream) {
    check_fits("copy_from", host.size());
    EKV_CUDA_CHECK(cudaMemcpyAsync(ptr_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice,
                                   stream.get()),
                   "DeviceBuffer::copy_from: host-to-device copy failed");
  }
  // Device to host, synchronously. Not ordered after work on other streams: synchronise
  // the stream that wrote the buffer first.
  void copy_to(Span<T> host) const {
    check_fits("copy_to", host.size());
    EKV_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, host.size_bytes(), cudaMemcpyDeviceToHost),
                   "DeviceBuffer::copy_to: device-to-host copy failed");
  }
  void copy_to(Span<T> host, const Stream& stream) const {
    check_fits("copy_to", host.size());
    EKV_CUDA_CHECK(cudaMemcpyAsync(host.data(), ptr_, host.size_bytes(), cudaMemcpyDeviceToHost,
                                   stream.get()),
                   "DeviceBuffer::copy_to: device-to-host copy failed");
  }

  // Sets every byte; 0xFF poisons float, half, bfloat16 and fp8 e4m3 data with NaN.
  // Typed values: ekv::fill in kernels/fill.cuh.
  void fill_bytes(unsigned char byte, const Stream& stream) {
    EKV_CUDA_CHECK(cudaMemsetAsync(ptr_, byte, size_bytes(), stream.get()),
                   "DeviceBuffer::fill_bytes: memset failed");
  }

 private:
  static std::size_t bytes_for(std::size_t count) {
    if (count > static_cast<std::size_t>(-1) / sizeof(T)) {
      throw Error("DeviceBuffer: " + std::to_string(count) + " elements of " +
                  std::to_string(sizeof(T)) + " bytes overflow size_t");
    }
    return count * sizeof(T);
  }
  static std::string alloc_failure(std::size_t count) {
    return "DeviceBuffer: cannot allocate " + std::to_string(count * sizeof(T)) +
           " bytes of GPU memory";
  }
  void check_fits(const char* what, std::size_t count) const {
    if (count > count_) {
      throw Error("DeviceBuffer::" + std::string(what) + ": " + std::to_string(count * sizeof(T)) +
                  " bytes do not fit a " + std::to_string(size_bytes()) + "-byte buffer");
    }
  }
  void take(DeviceBuffer& other) noexcept {
    ptr_ = std::exchange(other.ptr_, nullptr);
    count_ = std::exchange(other.count_, 0);
    stream_ = std::exchange(other.stream_, nullptr);
    stream_ordered_ = std::exchange(other.stream_ordered_, false);
  }

  T* ptr_ = nullptr;
  std::size_t count_ = 0;
  cudaStream_t stream_ = nullptr;
  bool stream_ordered_ = false;
};

}  // namespace ekv
