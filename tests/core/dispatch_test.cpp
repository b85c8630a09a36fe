#include <doctest/doctest.h>

#include <string>
#include <type_traits>

#include "ekv/core/dispatch.hpp"

namespace {
inline constexpr int kHeadDims[] = {64, 128, 256};
inline constexpr ekv::DType kDTypes[] = {ekv::DType::kFloat32, ekv::DType::kFloat16, ekv::DType::kBFloat16};

template <typename T>
int type_id() {
  if (std::is_same_v<T, float>) return 32;
  if (std::is_same_v<T, __half>) return 16;
  if (std::is_same_v<T, __nv_bfloat16>) return 17;
  return -1;
}
}  // namespace

TEST_CASE("dispatch turns each supported runtime value into the same compile-time value") {
  for (int dim : kHeadDims) {
    const int got = ekv::dispatch<kHeadDims>("head_dim", "decode", dim, [](auto d) {
      static_assert(decltype(d)::value % 64 == 0, "compile-time constant");
      return decltype(d)::value;
    });
    CHECK(got == dim);
  }
}

TEST_CASE("dispatch over a DType passes the element type") {
  CHECK(ekv::dispatch<kDTypes>("dtype", "decode", ekv::DType::kFloat32,
                               [](auto t) { return type_id<typename decltype(t)::type>(); }) == 32);
  CHECK(ekv::dispatch<kDTypes>("dtype", "decode", ekv::DType::kFloat16,
                               [](auto t) { return type_id<typename decltype(t)::type>(); }) == 16);
  CHECK(ekv::dispatch<kDTypes>("dtype", "decode", ekv::DType::kBFloat16,
                               [](auto t) { return type_id<typename decltype(t)::type>(); }) == 17);
  int calls = 0;
  ekv::dispatch<kDTypes>("dtype", "decode", ekv::DType::kFloat16, [&](auto) { ++calls; });
  CHECK(calls == 1);
}

TEST_CASE("unsupported values throw the message listing what is supported") {
  CHECK_THROWS_WITH_AS(ekv::dispatch<kHeadDims>("head_dim", "decode", 96, [](auto d) { return decltype(d)::value; }),
                       "head_dim=96 not supported by decode; supported: [64, 128, 256]", ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::dispatch<kDTypes>("dtype", "decode", ekv::DType::kFloat8E4M3, [](auto) {}),
                       "dtype=float8_e4m3 not supported by decode; supported: [float32, float16, bfloat16]",
                       ekv::Error);
}

TEST_CASE("check_supported answers without throwing") {
  CHECK(ekv::check_supported<kHeadDims>("head_dim", "decode", 128).ok);
  CHECK(ekv::check_supported<kHeadDims>("head_dim", "decode", 128).why.empty());
  const ekv::Support no = ekv::check_supported<kHeadDims>("head_dim", "decode", 100);
  CHECK_FALSE(no.ok);
  CHECK(no.why == "head_dim=100 not supported by decode; supported: [64, 128, 256]");
}
