// append_kv into quantized storage on the GPU against cpu_append_kv on the host, bit for
// bit: every format, half and float inputs, a paged pool with a shuffled block table,
// ragged lengths and a sequence that passes its capacity (overflow flag and lengths),
// FP8 with per-head scales; code and scale bytes outside the appended rows untouched.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/core/device_buffer.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

template <typename T>
void check_append(ekv::KVStorage s, std::uint64_t seed) {
  const int batch = 4, kv_heads = 3, head_dim = 128, block_len = 16, blocks = 4, tokens = 7;
  const std::size_t rows = static_cast<std::size_t>(batch) * blocks * kv_heads * block_len;
  const std::size_t code_bytes = ekv::kv_code_bytes(s, head_dim), groups = ekv::kv_scale_bytes(s, head_dim) / 2;
  std::vector<std::int32_t> table(batch * blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<unsigned>(seed)));
  std::vector<std::int32_t> lengths{0, 9, 63, 60};  // 63 and 60 pass the capacity of 64
  const std::vector<T> k_new =
      ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * tokens * kv_heads * head_dim, -5, 5, seed);
  const std::vector<T> v_new = ekv::bench::random_uniform<T>(k_new.size(), -5, 5, seed + 1);
  const std::vector<float> head_scales{0.01f, 1.0f, 0.37f};

  // host: the same pools, poisoned alike
  std::vector<std::uint8_t> k_codes(rows * code_bytes, 0xA5), v_codes(k_codes);
  std::vector<__half> k_scales(std::max<std::size_t>(1, rows * groups)), v_scales(k_scales);
  std::memset(static_cast<void*>(k_scales.data()), 0x5A, k_scales.size() * 2);
  std::memset(static_cast<void*>(v_scales.data()), 0x5A, v_scales.size() * 2);
  std::vector<std::int32_t> host_lengths = lengths;
  ekv::QuantKVView host = ekv::paged_quant_kv(s, {k_codes.data(), v_codes.data(), k_scales.data(), v_scales.data()},
                                              table.data(), host_lengths.data(), batch, kv_heads, head_dim, block_len,
                                              blocks);
  host.k_head_scales = head_scales.data();
  host.v_head_scales = head_scales.data();
  CHECK_FALSE(ekv::cpu_append_kv<T>(host, k_new.data(), v_new.data(), tokens));

  ekv::DeviceBuffer<std::uint8_t> dk_codes(k_codes.size()), dv_codes(v_codes.size());
  ekv::DeviceBuffer<__half> dk_scales(k_scales.size()), dv_scales(v_scales.size());
  ekv::DeviceBuffer<std::int32_t> dtable(table.size()), dlengths(lengths.size()), overflow(1);
  ekv::DeviceBuffer<T> dk_new(k_new.size()), dv_new(v_new.size());
  ekv::DeviceBuffer<float> dhead_scales(head_scales.size());
  dk_codes.copy_from(std::vector<std::uint8_t>(k_codes.size(), 0xA5));
  dv_codes.copy_from(std::vector<std::uint8_t>(v_codes.size(), 0xA5));
  std::vector<__half> poison(k_scales.size());
  std::memset(static_cast<void*>(poison.data()), 0x5A, poison.size() * 2);
  dk_scales.copy_from(poison);
  dv_scales.copy_from(poison);
  dtable.copy_from(table);
  dlengths.copy_from(lengths);
  overflow.copy_from(std::vector<std::int32_t>{0});
  dk_new.copy_from(k_new);
  dv_new.copy_from(v_new);
  dhead_scales.copy_from(head_scales);
  ekv::QuantKVView dev =
      ekv::paged_quant_kv(s, {dk_codes.data(), dv_codes.data(), dk_scales.data(), dv_scales.data()}, dtable.data(),
                          dlengths.data(), batch, kv_heads, head_dim, block_len, blocks);
  dev.k_head_scales = dhead_scales.data();
  dev.v_head_scales = dhead_scales.data();
  ekv::Stream stream;
  ekv::append_kv<T>(dev, dk_new.data(), dv_new.data(), tokens, stream, overflow.data());
  stream.synchronize();

  std::vector<std::uint8_t> got_k(k_codes.size()), got_v(v_codes.size());
  std::vector<__half> got_ks(k_scales.size()), got_vs(v_scales.size());
  std::vector<std::int32_t> got_lengths(lengths.size()), got_overflow(1);
  dk_codes.copy_to(got_k);
  dv_codes.copy_to(got_v);
  dk_scales.copy_to(got_ks);
  dv_scales.copy_to(got_vs);
  dlengths.copy_to(got_lengths);
  overflow.copy_to(got_overflow);
  CHECK(got_lengths == host_lengths);
  CHECK(got_lengths == std::vector<std::int32_t>{7, 16, 64, 64});
  CHECK(got_overflow[0] == 1);
  CHECK(got_k == k_codes);
  CHECK(got_v == v_codes);
  CHECK(std::memcmp(got_ks.data(), k_scales.data(), k_scales.size() * 2) == 0);
  CHECK(std::memcmp(got_vs.data(), v_scales.data(), v_scales.size() * 2) == 0);
}

}  // namespace

TEST_CASE_TEMPLATE("append_kv quantizes on the GPU to the host's bytes", T, __half, float) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (ekv::KVStorage s : ekv::kAllKVStorages) {
    INFO("storage=" << ekv::to_string(s));
    check_append<T>(s, seed);
  }
}

TEST_CASE("append_kv into quantized storage names what it rejects") {
  std::vector<std::int32_t> lengths{0};
  ekv::DeviceBuffer<std::uint8_t> codes(64 * 4);
  ekv::DeviceBuffer<__half> k_new(64);
  const ekv::QuantKVView no_scales = ekv::contiguous_hnd_quant_kv(
      ekv::KVStorage::kFp8E4M3, {codes.data(), codes.data(), nullptr, nullptr}, nullptr, 1, 1, 64, 4);
  ekv::Stream stream;
  CHECK_THROWS_WITH_AS(ekv::append_kv<__half>(no_scales, k_new.data(), k_new.data(), 1, stream),
                       "append_kv: null K or V codes, scales, lengths or new tokens", ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::append_kv<__half>(no_scales, k_new.data(), k_new.data(), -1, stream),
                       "append_kv: new_tokens=-1 must be >= 0", ekv::Error);
}
