// Host conversions are bit-exact: every 16-bit pattern of half and bfloat16 and every
// fp8 e4m3 pattern survives float and back, and rounding is to nearest, ties to even.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "ekv/core/dtype.hpp"

namespace {

template <typename T, typename Bits>
Bits bits_of(T x) {
  Bits b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}
template <typename T, typename Bits>
T from_bits(Bits b) {
  T x;
  std::memcpy(static_cast<void*>(&x), &b, sizeof(b));
  return x;
}
template <typename T>
std::uint16_t bits16(float f) {
  return bits_of<T, std::uint16_t>(ekv::DTypeTraits<T>::from_float(f));
}
std::uint8_t bits8(float f) { return bits_of<__nv_fp8_e4m3, std::uint8_t>(ekv::DTypeTraits<__nv_fp8_e4m3>::from_float(f)); }

template <typename T>
void check_all_16_bit_patterns_round_trip() {
  int non_nan = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = ekv::DTypeTraits<T>::to_float(from_bits<T, std::uint16_t>(static_cast<std::uint16_t>(b)));
    if (std::isnan(f)) continue;
    ++non_nan;
    REQUIRE(bits16<T>(f) == b);
  }
  CHECK(non_nan > 60000);
}

}  // namespace

TEST_CASE("float16: every non-NaN pattern round-trips and known values are exact") {
  using Half = ekv::DTypeTraits<__half>;
  check_all_16_bit_patterns_round_trip<__half>();
  CHECK(bits16<__half>(1.0f) == 0x3C00);
  CHECK(bits16<__half>(-2.0f) == 0xC000);
  CHECK(bits16<__half>(65504.0f) == 0x7BFF);
  CHECK(bits16<__half>(65520.0f) == 0x7C00);               // rounds up to +inf
  CHECK(bits16<__half>(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(bits16<__half>(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);  // tie to even (down)
  CHECK(bits16<__half>(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);  // tie to even (up)
  CHECK(std::isnan(Half::to_float(Half::from_float(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("bfloat16: every non-NaN pattern round-trips and rounding is to nearest even") {
  check_all_16_bit_patterns_round_trip<__nv_bfloat16>();
  CHECK(bits16<__nv_bfloat16>(1.0f) == 0x3F80);
  CHECK(bits16<__nv_bfloat16>(-0.5f) == 0xBF00);
  CHECK(bits16<__nv_bfloat16>(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);      // tie, even stays
  CHECK(bits16<__nv_bfloat16>(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);  // tie, odd goes up
  CHECK(bits16<__nv_bfloat16>(std::numeric_limits<float>::max()) == 0x7F80);  // overflow to inf
}

TEST_CASE("float8 e4m3: every non-NaN pattern round-trips; overflow saturates") {
  using Fp8 = ekv::DTypeTraits<__nv_fp8_e4m3>;
  int non_nan = 0;
  for (std::uint32_t b = 0; b < 256; ++b) {
    const float f = Fp8::to_float(from_bits<__nv_fp8_e4m3, std::uint8_t>(static_cast<std::uint8_t>(b)));
    if (std::isnan(f)) continue;
    ++non_nan;
    REQUIRE(bits8(f) == b);
  }
  CHECK(non_nan == 254);  // e4m3 has only 0x7F and 0xFF as NaN
  CHECK(bits8(1.0f) == 0x38);
  CHECK(bits8(448.0f) == 0x7E);
  CHECK(bits8(1e6f) == 0x7E);
  CHECK(bits8(-1e6f) == 0xFE);
  CHECK(bits8(std::ldexp(1.0f, -9)) == 0x01);  // smallest subnormal
}

TEST_CASE("dtype names, sizes and parsing") {
  CHECK(ekv::dtype_size(ekv::DType::kFloat32) == 4);
  CHECK(ekv::dtype_size(ekv::DType::kFloat16) == 2);
  CHECK(ekv::dtype_size(ekv::DType::kBFloat16) == 2);
  CHECK(ekv::dtype_size(ekv::DType::kFloat8E4M3) == 1);
  for (ekv::DType d : ekv::kAllDTypes) CHECK(ekv::parse_dtype(ekv::to_string(d)) == d);
  CHECK(ekv::parse_dtype("fp16") == ekv::DType::kFloat16);
  CHECK(ekv::parse_dtype("bf16") == ekv::DType::kBFloat16);
  CHECK(ekv::kDTypeOf<__half> == ekv::DType::kFloat16);
  CHECK_THROWS_WITH_AS(ekv::parse_dtype("int4"),
                       "unknown dtype 'int4'; supported: float32 (fp32), float16 (fp16, half), "
                       "bfloat16 (bf16), float8_e4m3 (fp8, e4m3), q8_0, q4_0",
                       ekv::Error);
  // the block formats have no size per element: a row's bytes are kv_row_bytes
  for (ekv::DType d : {ekv::DType::kQ8_0, ekv::DType::kQ4_0}) {
    CHECK(ekv::is_block_dtype(d));
    CHECK_THROWS_WITH_AS(ekv::dtype_size(d), doctest::Contains("is a block format"), ekv::Error);
  }
  CHECK_FALSE(ekv::is_block_dtype(ekv::DType::kFloat8E4M3));
}
