#pragma once
// check_launch: the one check after every kernel launch.

#include <cuda_runtime_api.h>

#include <string>

#include "ekv/core/error.hpp"

namespace ekv {

// Throws ekv::Error naming `what` if the launch failed. Built with EKV_DEBUG_SYNC, it
// also waits for the kernel (outside stream capture), so a fault is reported by the
// launch that caused it.
inline void check_launch(const char* what, [[maybe_unused]] cudaStream_t stream) {
  EKV_CUDA_CHECK(cudaGetLastError(), std::string(what) + ": kernel launch failed");
#ifdef EKV_DEBUG_SYNC
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  EKV_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture), std::string(what) + ": cannot query the stream");
  if (capture == cudaStreamCaptureStatusNone) {
    EKV_CUDA_CHECK(cudaStreamSynchronize(stream), std::string(what) + ": kernel failed");
  }
#endif
}

}  // namespace ekv
