// CPUInfer's stream-ordered tasks on a GPU: a task sees the stream's earlier work and the
// stream's later work sees the task's; tasks run in stream order; their exceptions surface
// at sync_with_cuda_stream; a pool destroyed before the stream reaches its task.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/cpu/thread_pool.hpp"

namespace {

// Keeps the stream busy for a while, so that what follows it is enqueued long before it runs.
__global__ void spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

}  // namespace

TEST_CASE("a stream task runs after the stream's earlier work and before its later work") {
  ekv::CPUInfer pool(2);
  ekv::Stream stream;
  ekv::DeviceBuffer<std::uint32_t> device(2);
  ekv::PinnedBuffer<std::uint32_t> seen(1), answer(1), result(1);  // pinned: the copies are truly async
  seen[0] = answer[0] = result[0] = 0;
  spin<<<1, 1, 0, stream.get()>>>(100'000'000);
  EKV_CUDA_CHECK(cudaMemsetAsync(device.data(), 0x07, sizeof(std::uint32_t), stream.get()));
  EKV_CUDA_CHECK(cudaMemcpyAsync(seen.data(), device.data(), sizeof(std::uint32_t), cudaMemcpyDeviceToHost,
                                 stream.get()));
  pool.submit_with_cuda_stream(stream, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a stream that did not wait would copy too early
    answer[0] = seen[0] + 1;
  });
  EKV_CUDA_CHECK(cudaMemcpyAsync(device.data() + 1, answer.data(), sizeof(std::uint32_t), cudaMemcpyHostToDevice,
                                 stream.get()));
  EKV_CUDA_CHECK(cudaMemcpyAsync(result.data(), device.data() + 1, sizeof(std::uint32_t), cudaMemcpyDeviceToHost,
                                 stream.get()));
  pool.sync_with_cuda_stream(stream);
  CHECK(seen[0] == 0x07070707u);
  CHECK(result[0] == 0x07070708u);
}

TEST_CASE("stream tasks run one at a time in stream order, on a pool of several workers") {
  ekv::CPUInfer pool(4);
  ekv::Stream stream;
  std::vector<int> order;  // no lock: the stream runs one task at a time
  for (int i = 0; i < 200; ++i) pool.submit_with_cuda_stream(stream, [&order, i] { order.push_back(i); });
  pool.sync_with_cuda_stream(stream);
  REQUIRE(order.size() == 200);
  for (int i = 0; i < 200; ++i) CHECK(order[i] == i);
}

TEST_CASE("a stream task's exception surfaces at sync_with_cuda_stream; later tasks still run") {
  ekv::CPUInfer pool(2);
  ekv::Stream stream;
  std::atomic<int> after{0};
  pool.submit_with_cuda_stream(stream, [] { throw std::runtime_error("stream task failed"); });
  pool.submit_with_cuda_stream(stream, [&] { after.fetch_add(1); });
  CHECK_THROWS_WITH_AS(pool.sync_with_cuda_stream(stream), "stream task failed", std::runtime_error);
  CHECK(after.load() == 1);
  CHECK_NOTHROW(pool.sync_with_cuda_stream(stream));
  pool.submit_with_cuda_stream(stream, [] { throw std::runtime_error("seen by sync too"); });
  stream.synchronize();
  CHECK_THROWS_WITH_AS(pool.sync(), "seen by sync too", std::runtime_error);
}

TEST_CASE("a stream task still runs, in order, when its pool is gone before the stream gets there") {
  ekv::Stream stream;
  ekv::PinnedBuffer<int> flag(1);
  flag[0] = 0;
  {
    ekv::CPUInfer pool(2);
    spin<<<1, 1, 0, stream.get()>>>(200'000'000);
    pool.submit_with_cuda_stream(stream, [&] { flag[0] = 1; });
  }
  stream.synchronize();
  CHECK(flag[0] == 1);
}

TEST_CASE("submit_with_cuda_stream refuses a capturing stream") {
  ekv::CPUInfer pool(1);
  ekv::Stream stream;
  EKV_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
  CHECK_THROWS_AS(pool.submit_with_cuda_stream(stream, [] {}), ekv::Error);
  cudaGraph_t graph = nullptr;
  EKV_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
  EKV_CUDA_CHECK(cudaGraphDestroy(graph));
}
