#include <doctest/doctest.h>

#include <string>

#include "harness/json.hpp"

TEST_CASE("Stats serialise with every field") {
  const ekv::bench::Stats s = ekv::bench::summarize({1.0, 2.0, 3.0, 4.0});
  const nlohmann::json j = s;
  CHECK(j.at("count").get<int>() == 4);
  CHECK(j.at("mean").get<double>() == doctest::Approx(2.5));
  CHECK(j.at("median").get<double>() == doctest::Approx(2.5));
  for (const char* key : {"p5", "p95", "min", "max", "stddev", "cv", "trimmed_mean"}) {
    CHECK(j.contains(key));
    CHECK(j.at(key).is_number());
  }
  CHECK(nlohmann::json::parse(j.dump()) == j);
}

TEST_CASE("DeviceInfo serialises its identity and limits") {
  ekv::DeviceInfo d;
  d.name = "NVIDIA H100 80GB HBM3";
  d.cc_major = 9;
  d.cc_minor = 0;
  d.family = ekv::ArchFamily::kHopper;
  d.sm_count = 132;
  d.l2_cache_bytes = 52428800;
  const nlohmann::json j = d;
  CHECK(j.at("name") == "NVIDIA H100 80GB HBM3");
  CHECK(j.at("compute_capability") == "9.0");
  CHECK(j.at("arch_family") == "Hopper");
  CHECK(j.at("sm_count") == 132);
  CHECK(j.at("l2_cache_bytes") == 52428800);
}

TEST_CASE("build information names the version and toolkit") {
  const nlohmann::json j = ekv::bench::build_json();
  CHECK(j.at("ekv_version") == std::string(ekv::kVersion));
  CHECK(j.at("cuda_toolkit").get<int>() >= 12000);
  CHECK(j.at("cplusplus").get<long>() >= 201703L);
}
