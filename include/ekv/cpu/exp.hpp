#pragma once
// exp_row: e^x over a row of softmax exponents, in a branch-free loop that -O3 vectorizes
// for any target. std::exp is a call per value: 13% of CPU attention's time at group 4
// (AMD EPYC, fp16, head_dim 128). Within 2 ulp of it (tests/cpu/exp_test.cpp).

#include <cstdint>

#include "ekv/cpu/row_ops.hpp"
#include "ekv/cpu/to_float.hpp"

namespace ekv {

// e^x for x <= 0 (a score minus the running maximum); below -87.3, -inf included, it
// returns e^-87.3 (about 1e-38: nothing next to the maximum's weight of 1); NaN, and +inf
// (scores of K or q holding NaN or infinities), give NaN. Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2 / 2, Cephes' expf polynomial for e^r, and 2^n built in the
// exponent bits.
inline float exp_nonpositive(float x) {
  // a mask, not ?: or std::max, so that the loop vectorizes (g++ 12 keeps those a branch here)
  const std::uint32_t below = 0u - static_cast<std::uint32_t>(x < -87.3f);
  x = detail::float_from_bits((detail::bits_from_float(x) & ~below) | (detail::bits_from_float(-87.3f) & below));
  const float t = x * 1.44269504f;
  const float shifted = t + 12582912.0f;  // rounds to nearest: 1.5 * 2^23, n in the low mantissa bits
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the bits that hold n, not by converting n to int, which is undefined for the
  // NaN and infinities that K or q holding them give (UBSan, tests/fuzz's c_api_tensor);
  // r, p and the result are NaN then
  const std::uint32_t exponent = (detail::bits_from_float(shifted) - detail::bits_from_float(12582912.0f) + 127u)
                                 << 23;
  return p * detail::float_from_bits(exponent);
}

// x[i] = e^(x[i] - shift) for i < n, every x[i] <= shift; returns the sum of the results,
// in eight partial sums: one chain of scalar adds cost 12% of CPU attention's time at
// group 4 (AMD EPYC, fp16, head_dim 128, one thread).
inline float exp_row(float* x, int n, float shift) {
  for (int i = 0; i < n; ++i) x[i] = exp_nonpositive(x[i] - shift);
  Float8 partial = {}, v;
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    load8(v, x + i);
    partial += v;
  }
  float sum = sum8(partial);
  for (; i < n; ++i) sum += x[i];
  return sum;
}

}  // namespace ekv
