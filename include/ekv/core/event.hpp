#pragma once
// Event: a CUDA event, for ordering streams and for timing GPU work.

#include <cuda_runtime_api.h>

#include <utility>

#include "ekv/core/error.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

class Event {
 public:
  // Timing events by default; pass cudaEventDisableTiming for pure synchronisation.
  explicit Event(unsigned flags = cudaEventDefault) {
    EKV_CUDA_CHECK(cudaEventCreateWithFlags(&event_, flags), "Event: cannot create a CUDA event");
  }
  Event(const Event&) = delete;  // two owners would destroy the event twice
  Event& operator=(const Event&) = delete;
  Event(Event&& other) noexcept : event_(other.release()) {}
  Event& operator=(Event&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ~Event() { reset(nullptr); }

  cudaEvent_t get() const noexcept { return event_; }
  cudaEvent_t release() noexcept { return std::exchange(event_, nullptr); }

  void record(const Stream& stream) {
    EKV_CUDA_CHECK(cudaEventRecord(event_, stream.get()), "Event::record: cannot record the event");
  }
  // Later work on `stream` waits until this event has completed.
  void make_wait(const Stream& stream) const {
    EKV_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), event_, 0),
                   "Event::make_wait: the stream cannot wait on the event");
  }
  void synchronize() const {
    EKV_CUDA_CHECK(cudaEventSynchronize(event_), "Event::synchronize: work before the event failed");
  }

  // Milliseconds between two recorded timing events; both must have completed.
  static float elapsed_ms(const Event& start, const Event& stop) {
    float ms = 0.0f;
    EKV_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, stop.event_),
                   "Event::elapsed_ms: both events must be recorded, completed and timing-enabled");
    return ms;
  }

 private:
  void reset(cudaEvent_t event) noexcept {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = event;
  }

  cudaEvent_t event_ = nullptr;
};

}  // namespace ekv
