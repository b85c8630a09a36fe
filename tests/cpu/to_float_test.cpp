// Widening half and bfloat16 rows to float: exact for every one of the 65536 bit patterns.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ekv/cpu/to_float.hpp"

namespace {

// Every 16-bit pattern widened by to_float_row equals DTypeTraits' conversion, bit for
// bit (any NaN for a NaN).
template <typename T>
void check_all_patterns() {
  using Raw = std::conditional_t<std::is_same_v<T, __half>, __half_raw, __nv_bfloat16_raw>;
  std::vector<T> values(1 << 16);
  for (std::uint32_t i = 0; i < values.size(); ++i) {
    Raw raw;
    raw.x = static_cast<unsigned short>(i);
    values[i] = raw;
  }
  std::vector<float> widened(values.size());
  ekv::to_float_row(values.data(), widened.data(), static_cast<int>(values.size()));
  int wrong = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float want = ekv::DTypeTraits<T>::to_float(values[i]);
    const bool same = std::isnan(want) ? std::isnan(widened[i])
                                       : std::memcmp(&want, &widened[i], sizeof want) == 0;  // -0 differs from 0
    if (!same) ++wrong;
  }
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("to_float_row is exact for every half, subnormals, infinities and NaN included") {
  check_all_patterns<__half>();
}

TEST_CASE("to_float_row is exact for every bfloat16") { check_all_patterns<__nv_bfloat16>(); }

TEST_CASE("row_as_float reads float rows in place and widens the others") {
  std::vector<float> f = {1.5f, -2.0f};
  std::vector<float> buffer(2);
  CHECK(ekv::row_as_float(f.data(), buffer.data(), 2) == f.data());
  const std::vector<__half> h = {__float2half(1.5f), __float2half(-2.0f)};
  CHECK(ekv::row_as_float(h.data(), buffer.data(), 2) == buffer.data());
  CHECK(buffer == f);
}
