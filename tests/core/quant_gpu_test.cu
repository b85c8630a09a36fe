// Quantization is bit-exact between the GPU and the host: the same quant.hpp functions,
// run by a kernel over fresh random rows (uniform, an outlier per group, and planted
// NaN, +-inf, zeros and subnormals), give the same code and scale bytes as the host for
// every storage format. The kernel is built with nvcc's defaults (fma contraction on),
// which is what quant.hpp's written-out rounding steps guard against.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/core/stream.hpp"
#include "test_seed.hpp"

namespace {

// One thread per row: rows of head_dim floats into rows of row_codes code bytes and
// row_scales float16 scales.
__global__ void quantize_rows_kernel(ekv::KVStorage storage, const float* x, int rows, int head_dim, float s,
                                     unsigned char* codes, std::size_t row_codes, __half* scales,
                                     std::size_t row_scales) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  ekv::quantize_row(storage, x + static_cast<std::size_t>(r) * head_dim, head_dim, codes + r * row_codes,
                    scales + r * row_scales, s);
}

std::vector<float> test_rows(int rows, int head_dim, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(rows) * head_dim);
  for (int r = 0; r < rows; ++r) {
    const float magnitude = std::ldexp(1.0f, r % 40 - 20);  // 2^-20 .. 2^19
    for (int i = 0; i < head_dim; ++i) x[r * head_dim + i] = u(rng) * magnitude;
    x[r * head_dim + (r % head_dim)] *= 11.0f;  // an outlier
  }
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  x[1 * head_dim + 3] = nan;
  x[2 * head_dim + 5] = inf;
  x[3 * head_dim + 7] = -inf;
  for (int i = 0; i < head_dim; ++i) x[4 * head_dim + i] = 0.0f;
  for (int i = 0; i < head_dim; ++i) x[5 * head_dim + i] = std::numeric_limits<float>::denorm_min() * (i - 40);
  return x;
}

}  // namespace

TEST_CASE("GPU and host quantize every format to the same bytes") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int rows = 4099, head_dim = 128;
  const std::vector<float> x = test_rows(rows, head_dim, seed);
  ekv::DeviceBuffer<float> dx(x.size());
  dx.copy_from(x);
  ekv::Stream stream;
  for (ekv::KVStorage storage : ekv::kAllKVStorages) {
    for (float s : {1.0f, 0.0117f}) {
      INFO("storage=" << ekv::to_string(storage) << " fp8 scale=" << s);
      const std::size_t row_codes = ekv::kv_code_bytes(storage, head_dim);
      const std::size_t row_scales = ekv::kv_scale_bytes(storage, head_dim) / sizeof(__half);
      ekv::DeviceBuffer<unsigned char> dcodes(rows * row_codes);
      ekv::DeviceBuffer<__half> dscales(std::max<std::size_t>(1, rows * row_scales));
      dcodes.fill_bytes(0xA5, stream);
      dscales.fill_bytes(0xA5, stream);
      quantize_rows_kernel<<<(rows + 127) / 128, 128, 0, stream.get()>>>(
          storage, dx.data(), rows, head_dim, s, dcodes.data(), row_codes, dscales.data(), row_scales);
      ekv::check_launch("quantize_rows_kernel", stream.get());
      stream.synchronize();
      std::vector<unsigned char> codes(dcodes.size());
      std::vector<__half> scales(dscales.size());
      dcodes.copy_to(codes);
      dscales.copy_to(scales);
      int mismatched_rows = 0;
      for (int r = 0; r < rows; ++r) {
        std::vector<unsigned char> host_codes(row_codes);
        std::vector<__half> host_scales(std::max<std::size_t>(1, row_scales));
        ekv::quantize_row(storage, x.data() + static_cast<std::size_t>(r) * head_dim, head_dim, host_codes.data(),
                          host_scales.data(), s);
        const bool same_codes = std::memcmp(host_codes.data(), codes.data() + r * row_codes, row_codes) == 0;
        const bool same_scales =
            std::memcmp(host_scales.data(), scales.data() + r * row_scales, row_scales * sizeof(__half)) == 0;
        if (!same_codes || !same_scales) ++mismatched_rows;
      }
      CHECK(mismatched_rows == 0);
      if (storage != ekv::KVStorage::kFp8E4M3) break;  // s matters to FP8 alone
    }
  }
}
