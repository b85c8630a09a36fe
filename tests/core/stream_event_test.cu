#include <doctest/doctest.h>

#include <utility>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/event.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/fill.cuh"

TEST_CASE("Stream moves: construct, assign onto a live stream, self-move, destroy moved-from") {
  ekv::Stream a;
  cudaStream_t const handle = a.get();
  CHECK(a.owned());
  ekv::Stream b(std::move(a));
  CHECK(b.get() == handle);
  CHECK(a.get() == nullptr);
  ekv::Stream c;
  c = std::move(b);
  CHECK(c.get() == handle);
  ekv::Stream& alias = c;
  c = std::move(alias);
  CHECK(c.get() == handle);
  CHECK(cudaStreamQuery(c.get()) == cudaSuccess);
}

TEST_CASE("a borrowed stream is not destroyed with its Stream") {
  cudaStream_t raw = nullptr;
  REQUIRE(cudaStreamCreate(&raw) == cudaSuccess);
  { const ekv::Stream borrowed = ekv::Stream::borrow(raw); CHECK_FALSE(borrowed.owned()); }
  CHECK(cudaStreamQuery(raw) == cudaSuccess);
  CHECK(cudaStreamDestroy(raw) == cudaSuccess);
}

TEST_CASE("Event orders two streams and times work") {
  ekv::Stream producer, consumer;
  ekv::DeviceBuffer<float> a(1 << 24), b(1 << 24);
  ekv::Event start, stop, ready(cudaEventDisableTiming);
  start.record(producer);
  ekv::fill<float>(a.span(), 3.0f, producer);
  stop.record(producer);
  ready.record(producer);
  ready.make_wait(consumer);
  // b = a, ordered after the fill only through the event
  EKV_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), a.size_bytes(), cudaMemcpyDeviceToDevice, consumer.get()));
  consumer.synchronize();
  std::vector<float> host(b.size());
  b.copy_to(host);
  CHECK(host.front() == 3.0f);
  CHECK(host.back() == 3.0f);
  stop.synchronize();
  CHECK(ekv::Event::elapsed_ms(start, stop) > 0.0f);
  CHECK_THROWS_AS(ekv::Event::elapsed_ms(ready, stop), ekv::Error);  // not a timing event

  ekv::Event moved(std::move(start));
  CHECK(start.get() == nullptr);
  ekv::Event& alias = moved;
  moved = std::move(alias);
  CHECK(moved.get() != nullptr);
  moved = std::move(stop);
  CHECK(stop.get() == nullptr);
}
