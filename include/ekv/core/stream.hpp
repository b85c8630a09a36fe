#pragma once
// Stream: a CUDA stream, owned (created and destroyed here) or borrowed (an engine's own).

#include <cuda_runtime_api.h>

#include <utility>

#include "ekv/core/error.hpp"

namespace ekv {

class Stream {
 public:
  // A new non-blocking stream: it never waits on the legacy default stream, and it can
  // be captured into a Graph.
  Stream() {
    EKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                   "Stream: cannot create a CUDA stream");
    owned_ = true;
  }

  // Uses `stream` without taking ownership: the caller keeps it alive and destroys it.
  static Stream borrow(cudaStream_t stream) noexcept { return Stream(stream, false); }

  Stream(const Stream&) = delete;  // two owners would destroy the stream twice
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& other) noexcept
      : stream_(std::exchange(other.stream_, nullptr)), owned_(std::exchange(other.owned_, false)) {}
  Stream& operator=(Stream&& other) noexcept {
    if (this != &other) {
      const bool owned = other.owned_;
      reset(other.release(), owned);
    }
    return *this;
  }
  ~Stream() { reset(nullptr, false); }

  cudaStream_t get() const noexcept { return stream_; }
  bool owned() const noexcept { return owned_; }

  // Gives up ownership; the caller destroys the returned stream if it was owned.
  cudaStream_t release() noexcept {
    owned_ = false;
    return std::exchange(stream_, nullptr);
  }

  void synchronize() const {
    EKV_CUDA_CHECK(cudaStreamSynchronize(stream_), "Stream::synchronize: work on the stream failed");
  }

 private:
  Stream(cudaStream_t stream, bool owned) noexcept : stream_(stream), owned_(owned) {}

  void reset(cudaStream_t stream, bool owned) noexcept {
    if (owned_ && stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = stream;
    owned_ = owned;
  }

  cudaStream_t stream_ = nullptr;
  bool owned_ = false;
};

}  // namespace ekv
