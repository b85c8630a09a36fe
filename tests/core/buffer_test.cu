#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/pinned_buffer.hpp"
#include "harness/random.hpp"
#include "device_memory.hpp"
#include "test_seed.hpp"

namespace {

std::vector<float> read_back(const ekv::DeviceBuffer<float>& b) {
  std::vector<float> out(b.size());
  b.copy_to(out);
  return out;
}

}  // namespace

TEST_CASE("DeviceBuffer copies host data there and back, sync and stream-ordered") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const std::vector<float> host = ekv::bench::random_uniform<float>(1001, -1.0f, 1.0f, seed);
  ekv::DeviceBuffer<float> a(host.size());
  CHECK(a.size() == 1001);
  CHECK(a.size_bytes() == 1001 * sizeof(float));
  a.copy_from(host);
  CHECK(read_back(a) == host);

  ekv::Stream stream;
  ekv::DeviceBuffer<float> b(host.size(), stream);
  ekv::PinnedBuffer<float> pinned(host.size());
  b.copy_from(host, stream);
  b.copy_to(pinned.span(), stream);
  stream.synchronize();
  CHECK(std::vector<float>(pinned.begin(), pinned.end()) == host);
}

TEST_CASE("DeviceBuffer rejects copies that do not fit") {
  ekv::DeviceBuffer<float> a(8);
  std::vector<float> big(9, 1.0f);
  CHECK_THROWS_WITH_AS(a.copy_from(big), "DeviceBuffer::copy_from: 36 bytes do not fit a 32-byte buffer", ekv::Error);
  CHECK_THROWS_AS(a.copy_to(big), ekv::Error);
}

TEST_CASE("fill_bytes(0xFF) poisons floats with NaN") {
  ekv::Stream stream;
  ekv::DeviceBuffer<float> a(77);
  a.fill_bytes(0xFF, stream);
  stream.synchronize();
  for (float x : read_back(a)) CHECK(std::isnan(x));
}

TEST_CASE("DeviceBuffer moves: construct, assign onto a live buffer, self-move, destroy moved-from") {
  const ekv::test::DeviceMemory before = ekv::test::device_memory();
  {
    const std::vector<float> host = ekv::bench::random_uniform<float>(300, 0.5f, 1.5f, ekv::test::seed());
    ekv::DeviceBuffer<float> a(300);
    a.copy_from(host);
    float* const p = a.data();

    ekv::DeviceBuffer<float> b(std::move(a));
    CHECK(b.data() == p);
    CHECK(a.data() == nullptr);
    CHECK(a.size() == 0);

    ekv::DeviceBuffer<float> c(64 << 20);  // live, to be freed by the assignment
    c = std::move(b);
    CHECK(c.data() == p);
    CHECK(read_back(c) == host);

    ekv::DeviceBuffer<float>& alias = c;
    c = std::move(alias);
    CHECK(c.data() == p);
    CHECK(read_back(c) == host);

    ekv::Stream stream;
    ekv::DeviceBuffer<float> d(100, stream);
    ekv::DeviceBuffer<float> e = std::move(d);
    e.reset();
    CHECK(e.empty());
    stream.synchronize();
  }
  // all freed: no leak of the 256 MiB buffer or the others (allocator granularity aside)
  CHECK(ekv::test::device_memory_back(before, 4u << 20));
}

TEST_CASE("an impossible allocation throws ekv::Error and leaks nothing") {
  const ekv::test::DeviceMemory before = ekv::test::device_memory();
  const std::size_t huge = std::size_t{1} << 50;  // 1 PiB
  try {
    ekv::DeviceBuffer<unsigned char> a(huge);
    FAIL("allocated 1 PiB");
  } catch (const ekv::Error& e) {
    CHECK(e.code() == cudaErrorMemoryAllocation);
    CHECK(e.message() == "DeviceBuffer: cannot allocate 1125899906842624 bytes of GPU memory");
  }
  ekv::Stream stream;
  CHECK_THROWS_AS(ekv::DeviceBuffer<unsigned char>(huge, stream), ekv::Error);
  CHECK_THROWS_AS(ekv::DeviceBuffer<double>(~std::size_t{0} / 4), ekv::Error);  // overflows size_t
  CHECK_THROWS_AS(ekv::PinnedBuffer<double>(~std::size_t{0} / 4), ekv::Error);  // overflows size_t
  CHECK(cudaGetLastError() == cudaSuccess);  // the failure did not linger
  CHECK(ekv::test::device_memory_back(before, 4u << 20));  // none of the failures holds anything
  ekv::DeviceBuffer<float> after(1024);                    // the device still works
  CHECK(after.data() != nullptr);
  CHECK(ekv::testing::device_bytes_held() == before.held + static_cast<long long>(after.size_bytes()));
}

TEST_CASE("PinnedBuffer moves and frees") {
  ekv::PinnedBuffer<int> a(1000);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int>(i) * 3 + 1;
  int* const p = a.data();
  ekv::PinnedBuffer<int> b(std::move(a));
  CHECK(b.data() == p);
  CHECK(a.data() == nullptr);
  ekv::PinnedBuffer<int> c(10);
  c = std::move(b);
  CHECK(c.data() == p);
  CHECK(c[999] == 999 * 3 + 1);
  ekv::PinnedBuffer<int>& alias = c;
  c = std::move(alias);
  CHECK(c.data() == p);
  cudaPointerAttributes attributes{};
  REQUIRE(cudaPointerGetAttributes(&attributes, c.data()) == cudaSuccess);
  CHECK(attributes.type == cudaMemoryTypeHost);
}
