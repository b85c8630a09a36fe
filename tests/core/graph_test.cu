#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>
#include <utility>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/kernels/fill.cuh"
#include "harness/bandwidth.cuh"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {
std::vector<float> read_back(const ekv::DeviceBuffer<float>& b) {
  std::vector<float> out(b.size());
  b.copy_to(out);
  return out;
}
}  // namespace

TEST_CASE("a captured graph replays the same work as direct launches") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const std::vector<float> host = ekv::bench::random_uniform<float>(4099, -2.0f, 2.0f, seed);
  ekv::DeviceBuffer<float> src(host.size()), dst(host.size()), scratch(17);
  src.copy_from(host);
  dst.fill_bytes(0xFF, stream);

  ekv::Graph graph = ekv::Graph::capture(stream, [&](const ekv::Stream& s) {
    ekv::fill<float>(scratch.span(), 5.0f, s);
    ekv::bench::copy<float>(src.span(), dst.span(), device, s);
  });
  CHECK_FALSE(graph.empty());
  stream.synchronize();
  CHECK(std::isnan(read_back(dst)[0]));  // capture alone runs nothing
  graph.launch(stream);
  stream.synchronize();
  CHECK(read_back(dst) == host);
  CHECK(read_back(scratch) == std::vector<float>(17, 5.0f));

  // replays again after the inputs change: the graph reads whatever src holds
  const std::vector<float> host2 = ekv::bench::random_uniform<float>(host.size(), -2.0f, 2.0f, seed + 1);
  src.copy_from(host2);
  graph.launch(stream);
  stream.synchronize();
  CHECK(read_back(dst) == host2);
}

TEST_CASE("recapture updates the graph to new parameters") {
  ekv::Stream stream;
  ekv::DeviceBuffer<float> a(1000);
  float value = 1.0f;
  auto issue = [&](const ekv::Stream& s) { ekv::fill<float>(a.span(), value, s); };
  ekv::Graph graph = ekv::Graph::capture(stream, issue);
  value = 7.0f;
  graph.recapture(stream, issue);  // same topology: updated in place
  graph.launch(stream);
  stream.synchronize();
  CHECK(read_back(a) == std::vector<float>(1000, 7.0f));

  ekv::DeviceBuffer<float> b(10);
  graph.recapture(stream, [&](const ekv::Stream& s) {  // new topology: instantiated anew
    ekv::fill<float>(a.span(), 2.0f, s);
    ekv::fill<float>(b.span(), 3.0f, s);
  });
  graph.launch(stream);
  stream.synchronize();
  CHECK(read_back(a) == std::vector<float>(1000, 2.0f));
  CHECK(read_back(b) == std::vector<float>(10, 3.0f));
}

TEST_CASE("an exception during capture leaves the stream usable") {
  ekv::Stream stream;
  ekv::DeviceBuffer<float> a(10);
  CHECK_THROWS_AS(ekv::Graph::capture(stream, [&](const ekv::Stream& s) {
    ekv::fill<float>(a.span(), 1.0f, s);
    throw std::runtime_error("issue failed");
  }), std::runtime_error);
  cudaStreamCaptureStatus status{};
  REQUIRE(cudaStreamIsCapturing(stream.get(), &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusNone);
  ekv::fill<float>(a.span(), 4.0f, stream);
  stream.synchronize();
  CHECK(read_back(a) == std::vector<float>(10, 4.0f));
}

TEST_CASE("Graph rejects the legacy default stream and launching nothing") {
  const ekv::Stream legacy = ekv::Stream::borrow(nullptr);
  CHECK_THROWS_AS(ekv::Graph::capture(legacy, [](const ekv::Stream&) {}), ekv::Error);
  ekv::Graph empty;
  ekv::Stream stream;
  CHECK_THROWS_WITH_AS(empty.launch(stream), "Graph::launch: nothing was captured", ekv::Error);
}

TEST_CASE("Graph moves: construct, assign onto a live graph, self-move, destroy moved-from") {
  ekv::Stream stream;
  ekv::DeviceBuffer<float> a(10);
  auto issue = [&](const ekv::Stream& s) { ekv::fill<float>(a.span(), 9.0f, s); };
  ekv::Graph g1 = ekv::Graph::capture(stream, issue);
  cudaGraphExec_t const exec = g1.exec();
  ekv::Graph g2(std::move(g1));
  CHECK(g1.empty());
  CHECK(g2.exec() == exec);
  ekv::Graph g3 = ekv::Graph::capture(stream, issue);
  g3 = std::move(g2);
  CHECK(g3.exec() == exec);
  ekv::Graph& alias = g3;
  g3 = std::move(alias);
  g3.launch(stream);
  stream.synchronize();
  CHECK(read_back(a) == std::vector<float>(10, 9.0f));
}
