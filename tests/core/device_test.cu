#include <doctest/doctest.h>

#include "ekv/core/device.hpp"

TEST_CASE("DeviceInfo reads a real device") {
  REQUIRE(ekv::device_count() >= 1);
  const ekv::DeviceInfo d = ekv::DeviceInfo::current();
  CHECK_FALSE(d.name.empty());
  CHECK(d.cc_major >= 7);
  CHECK(d.family == ekv::arch_family(d.cc_major, d.cc_minor));
  CHECK(d.sm_count > 0);
  CHECK(d.global_memory_bytes > (std::size_t{1} << 30));
  CHECK(d.l2_cache_bytes > 0);
  CHECK(d.shared_memory_per_cta_bytes >= 48 * 1024);
  CHECK(d.shared_memory_per_cta_optin_bytes >= d.shared_memory_per_cta_bytes);
  CHECK(d.max_threads_per_sm >= 1024);
  CHECK(ekv::DeviceInfo::query(d.ordinal).name == d.name);
  CHECK_THROWS_AS(ekv::DeviceInfo::query(ekv::device_count()), ekv::Error);
}
