// magnitude_select, the C++ call under ekv_compress: its result against the host
// reference (stable, bit for bit, positions), inside a captured CUDA graph too, and its
// errors. The C API's tests (tests/c_api/) cover host memory, timings and sizes to 100M.

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/core/stream.hpp"
#include "ekv/kernels/magnitude_select.cuh"
#include "ekv/kernels/magnitude_select_reference.hpp"
#include "test_seed.hpp"

namespace {

std::vector<float> random_with_specials(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::uniform_int_distribution<int> kind(0, 31);
  std::vector<float> v(n);
  for (float& x : v) {
    const int k = kind(rng);
    x = k == 0   ? std::numeric_limits<float>::quiet_NaN()
        : k == 1 ? -std::numeric_limits<float>::infinity()
        : k == 2 ? -0.0f
        : k == 3 ? std::numeric_limits<float>::denorm_min() * 3
                 : uniform(rng);
  }
  return v;
}

struct Selected {
  std::vector<float> values;
  std::vector<std::int32_t> indices;
  std::int32_t count = -1;
};

// Runs magnitude_select on the device; `graph` captures it first and replays the graph.
Selected run_select(const std::vector<float>& host, float threshold, bool with_indices, bool graph) {
  const std::size_t n = host.size();
  ekv::Stream stream;
  ekv::DeviceBuffer<float> in(n), out(n);
  ekv::DeviceBuffer<std::int32_t> indices(n), count(1);
  in.copy_from(host);
  ekv::DeviceBuffer<std::byte> workspace(ekv::magnitude_select_workspace_bytes(n, with_indices));
  auto select = [&](const ekv::Stream& s) {
    ekv::magnitude_select(in.span(), threshold, out.data(), with_indices ? indices.data() : nullptr, count.data(),
                          workspace.span(), s);
  };
  if (graph) {
    ekv::Graph g = ekv::Graph::capture(stream, select);
    g.launch(stream);
  } else {
    select(stream);
  }
  stream.synchronize();
  Selected s;
  count.copy_to(ekv::Span<std::int32_t>(&s.count, 1));
  s.values.resize(n);
  out.copy_to(s.values);
  s.values.resize(static_cast<std::size_t>(s.count));
  if (with_indices) {
    s.indices.resize(n);
    indices.copy_to(s.indices);
    s.indices.resize(static_cast<std::size_t>(s.count));
  }
  return s;
}

}  // namespace

TEST_CASE("magnitude_select keeps |x| > threshold in order, bit for bit, with positions") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (std::size_t n : {1, 33, 4097, 1000003}) {
    const std::vector<float> host = random_with_specials(n, seed + n);
    for (float threshold : {0.25f, 0.0f, -1.0f}) {
      const ekv::MagnitudeSelection want = ekv::reference_magnitude_select(host.data(), n, threshold);
      for (bool with_indices : {false, true}) {
        for (bool graph : {false, true}) {
          INFO("n=" << n << " threshold=" << threshold << " indices=" << with_indices << " graph=" << graph);
          const Selected got = run_select(host, threshold, with_indices, graph);
          REQUIRE(got.count == static_cast<std::int32_t>(want.values.size()));
          CHECK(std::memcmp(got.values.data(), want.values.data(), want.values.size() * sizeof(float)) == 0);
          if (with_indices) CHECK(got.indices == want.indices);
        }
      }
    }
  }
}

TEST_CASE("magnitude_select's errors name the call") {
  CHECK_THROWS_WITH_AS(ekv::magnitude_select_workspace_bytes(std::size_t{1} << 31, false),
                       "magnitude_select: 2147483648 elements; supported: at most 2147483647 (positions are int32)",
                       ekv::Error);
  ekv::Stream stream;
  ekv::DeviceBuffer<float> in(100), out(100);
  ekv::DeviceBuffer<std::int32_t> count(1);
  const std::size_t bytes = ekv::magnitude_select_workspace_bytes(100, false);
  CHECK(bytes > 0);
  ekv::DeviceBuffer<std::byte> small(bytes - 1);
  CHECK_THROWS_WITH_AS(
      ekv::magnitude_select(in.span(), 0.5f, out.data(), nullptr, count.data(), small.span(), stream),
      ("magnitude_select: the workspace holds " + std::to_string(bytes - 1) + " bytes, CUB needs " +
       std::to_string(bytes)).c_str(),
      ekv::Error);
  ekv::DeviceBuffer<std::byte> workspace(bytes);
  CHECK_THROWS_WITH_AS(
      ekv::magnitude_select(in.span(), 0.5f, out.data(), nullptr, nullptr, workspace.span(), stream),
      "magnitude_select: in, out and num_selected must not be null", ekv::Error);
}
