#pragma once
// PinnedBuffer<T>: an owned array in page-locked host memory, which the GPU copies
// asynchronously and can read over the bus.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "ekv/core/allocation.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"

namespace ekv {

template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  // Throws ekv::Error, leaving nothing allocated, when the memory cannot be pinned (or
  // core/allocation.hpp's test hook says it cannot).
  explicit PinnedBuffer(std::size_t count) {
    if (count == 0) return;
    if (count > static_cast<std::size_t>(-1) / sizeof(T)) {
      throw Error("PinnedBuffer: " + std::to_string(count) + " elements overflow size_t");
    }
    EKV_CUDA_CHECK(detail::allocation_fails() ? cudaErrorMemoryAllocation
                                              : cudaMallocHost(reinterpret_cast<void**>(&ptr_), count * sizeof(T)),
                   "PinnedBuffer: cannot allocate " + std::to_string(count * sizeof(T)) +
                       " bytes of pinned host memory");
    count_ = count;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;  // a deep copy must be explicit
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  ~PinnedBuffer() { reset(); }

  void reset() noexcept {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }

  T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return count_; }
  std::size_t size_bytes() const noexcept { return count_ * sizeof(T); }
  bool empty() const noexcept { return count_ == 0; }
  Span<T> span() const noexcept { return {ptr_, count_}; }
  T& operator[](std::size_t i) const noexcept { return ptr_[i]; }
  T* begin() const noexcept { return ptr_; }
  T* end() const noexcept { return ptr_ + count_; }

 private:
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace ekv
