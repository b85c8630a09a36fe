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

// Runs magnitude_select<kWarps, kLoads> on the device over `host` placed `offset` floats
// into its buffer (an offset of 1 takes the single-float loads); `graph` captures it first
// and replays the graph.
template <int kWarps = 4, int kLoads = 16>
Selected run_select(const std::vector<float>& host, float threshold, bool with_indices, bool graph,
                    std::size_t offset = 0) {
  const std::size_t n = host.size();
  ekv::Stream stream;
  ekv::DeviceBuffer<float> buffer(n + offset), out(n);
  ekv::DeviceBuffer<std::int32_t> indices(n), count(1);
  std::vector<float> placed(offset, 0.0f);
  placed.insert(placed.end(), host.begin(), host.end());
  buffer.copy_from(placed);
  const ekv::Span<const float> in(buffer.data() + offset, n);
  out.fill_bytes(0xFF, stream);  // poisoned: NaN values, -1 positions
  indices.fill_bytes(0xFF, stream);
  ekv::DeviceBuffer<std::byte> workspace(ekv::magnitude_select_workspace_bytes<kWarps, kLoads>(n, with_indices));
  auto select = [&](const ekv::Stream& s) {
    ekv::magnitude_select<kWarps, kLoads>(in, threshold, out.data(), with_indices ? indices.data() : nullptr,
                                          count.data(), workspace.span(), s);
  };
  if (graph) {
    ekv::Graph g = ekv::Graph::capture(stream, select);
    g.launch(stream);
    g.launch(stream);  // a replay resets the tile states it reads
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

template <int kWarps = 4, int kLoads = 16>
void check_select(const std::vector<float>& host, float threshold, std::size_t offset = 0) {
  const ekv::MagnitudeSelection want = ekv::reference_magnitude_select(host.data(), host.size(), threshold);
  for (bool with_indices : {false, true}) {
    for (bool graph : {false, true}) {
      INFO("warps=" << kWarps << " loads=" << kLoads << " n=" << host.size() << " threshold=" << threshold
                    << " offset=" << offset << " indices=" << with_indices << " graph=" << graph);
      const Selected got = run_select<kWarps, kLoads>(host, threshold, with_indices, graph, offset);
      REQUIRE(got.count == static_cast<std::int32_t>(want.values.size()));
      CHECK(std::memcmp(got.values.data(), want.values.data(), want.values.size() * sizeof(float)) == 0);
      if (with_indices) CHECK(got.indices == want.indices);
    }
  }
}

}  // namespace

TEST_CASE("magnitude_select keeps |x| > threshold in order, bit for bit, with positions") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  // around the default tile (4 warps x 32 lanes x 16 loads x 4 floats = 8,192) and its warps' parts (2,048)
  for (std::size_t n : {1, 33, 2047, 2048, 8191, 8192, 8193, 3 * 8192 + 2049, 1000003}) {
    const std::vector<float> host = random_with_specials(n, seed + n);
    for (float threshold : {0.25f, 0.0f, -1.0f}) check_select(host, threshold);
  }
}

TEST_CASE("magnitude_select: other tile shapes, an unaligned input, nothing kept") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (std::size_t n : {100, 4097, 300001}) {
    const std::vector<float> host = random_with_specials(n, seed + 7 * n);
    check_select(host, 0.5f, 1);         // unaligned: single-float loads
    check_select<1, 1>(host, 0.5f);      // 128-float tiles: thousands of look-backs, many past 32 tiles
    check_select<1, 1>(host, 0.5f, 3);
    check_select<8, 4>(host, 0.5f);
    check_select<4, 2>(host, 0.9f);
    check_select<16, 2>(host, 0.1f);
    check_select<16, 8>(host, -1.0f);    // everything kept; 16,384-float tiles, 96 KiB of shared memory
    check_select<8, 16>(host, 0.5f, 2);
  }
  const std::vector<float> none(70001, std::numeric_limits<float>::quiet_NaN());
  check_select(none, -1.0f);
  check_select<1, 1>(none, -1.0f);
  const std::vector<float> empty;
  check_select(empty, 0.0f);
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
      ("magnitude_select: the workspace holds " + std::to_string(bytes - 1) + " bytes, it needs " +
       std::to_string(bytes)).c_str(),
      ekv::Error);
  ekv::DeviceBuffer<std::byte> workspace(bytes);
  CHECK_THROWS_WITH_AS(
      ekv::magnitude_select(in.span(), 0.5f, out.data(), nullptr, nullptr, workspace.span(), stream),
      "magnitude_select: in, out and num_selected must not be null", ekv::Error);
  ekv::DeviceBuffer<std::byte> wide(bytes + 8);
  const ekv::Span<std::byte> shifted(wide.data() + 8, bytes);
  CHECK_THROWS_WITH_AS(ekv::magnitude_select(in.span(), 0.5f, out.data(), nullptr, count.data(), shifted, stream),
                       "magnitude_select: the workspace must be 16-byte aligned (as a DeviceBuffer is)", ekv::Error);
}
