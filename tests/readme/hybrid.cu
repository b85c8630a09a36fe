// README's hybrid snippet, as written: three uneven sequences placed by score under a GPU
// budget of 20 blocks, the rest in pinned host memory, attended by the GPU and a CPUInfer
// and merged; against the float64 reference over the pools the table points into. The
// pools are filled before the placement, so whatever it decides, every block holds
// random K and V. Tolerance: fp16 outputs, 2e-3 per head.
// @README-INCLUDES@

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <ekv/ekv.cuh>

#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("README: hybrid GPU + CPU decode over a cache split by a GPU budget") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  using T = __half;
  const int batch = 3, q_heads = 16, kv_heads = 4, head_dim = 128, block_len = 16, max_blocks = 40;
  std::vector<std::int32_t> lengths = {max_blocks * block_len, 1, 333};
  const std::size_t block_elems = std::size_t{1} * kv_heads * block_len * head_dim;
  const std::size_t block_bytes = 2 * block_elems * sizeof(T);  // K and V, all kv heads
  const int gpu_capacity = 20, host_capacity = batch * max_blocks;
  const std::size_t gpu_budget_bytes = gpu_capacity * block_bytes;
  const std::vector<float> score_values =
      ekv::bench::random_uniform<float>(std::size_t{1} * batch * max_blocks, 0.0f, 1.0f, seed);
  const float* scores = score_values.data();

  // both pools full of random K and V, the host's copy of all of it kept for the reference
  const std::vector<T> gpu_k_host = ekv::bench::random_uniform<T>(gpu_capacity * block_elems, -1.0f, 1.0f, seed + 1);
  const std::vector<T> gpu_v_host = ekv::bench::random_uniform<T>(gpu_capacity * block_elems, -1.0f, 1.0f, seed + 2);
  ekv::DeviceBuffer<T> gpu_k_pool(gpu_k_host.size()), gpu_v_pool(gpu_v_host.size());
  gpu_k_pool.copy_from(gpu_k_host);
  gpu_v_pool.copy_from(gpu_v_host);
  ekv::PinnedBuffer<T> host_k_pool(host_capacity * block_elems), host_v_pool(host_capacity * block_elems);
  const std::vector<T> host_k_init = ekv::bench::random_uniform<T>(host_k_pool.size(), -1.0f, 1.0f, seed + 3);
  const std::vector<T> host_v_init = ekv::bench::random_uniform<T>(host_v_pool.size(), -1.0f, 1.0f, seed + 4);
  std::copy(host_k_init.begin(), host_k_init.end(), host_k_pool.data());
  std::copy(host_v_init.begin(), host_v_init.end(), host_v_pool.data());
  T *gpu_k = gpu_k_pool.data(), *gpu_v = gpu_v_pool.data(), *host_k = host_k_pool.data(), *host_v = host_v_pool.data();

  const std::vector<T> q_host = ekv::bench::random_uniform<T>(std::size_t{1} * batch * q_heads * head_dim, -1.0f,
                                                              1.0f, seed + 5);
  ekv::DeviceBuffer<T> q_buf(q_host.size()), o_buf(q_host.size());
  ekv::DeviceBuffer<float> lse_buf(std::size_t{1} * batch * q_heads);
  q_buf.copy_from(q_host);
  o_buf.copy_from(std::vector<T>(o_buf.size(), __float2half(std::numeric_limits<float>::quiet_NaN())));
  const T* q = q_buf.data();
  T* o = o_buf.data();
  float* lse = lse_buf.data();
  const ekv::DecodeProblem problem{ekv::DType::kFloat16, batch, q_heads, kv_heads, head_dim, max_blocks * block_len};
  ekv::CPUInfer pool(2);
  const ekv::Stream stream;

  // @README hybrid@

  std::vector<T> got(o_buf.size());
  o_buf.copy_to(got, stream);
  stream.synchronize();
  CHECK(where.gpu_blocks <= gpu_capacity);
  CHECK(where.gpu_blocks > 0);
  CHECK(where.host_blocks > 0);
  // one pool for the reference: the GPU's blocks, then the host's
  std::vector<T> all_k(gpu_k_host), all_v(gpu_v_host);
  all_k.insert(all_k.end(), host_k_init.begin(), host_k_init.end());
  all_v.insert(all_v.end(), host_v_init.begin(), host_v_init.end());
  std::vector<std::int32_t> all_table(table.size());
  for (std::size_t i = 0; i < table.size(); ++i) all_table[i] = table[i] >= 0 ? table[i] : gpu_capacity - 1 - table[i];
  const auto reference_kv = ekv::paged_kv<T>(all_k.data(), all_v.data(), all_table.data(), lengths.data(), batch,
                                             kv_heads, head_dim, block_len, max_blocks);
  const auto reference = ekv::reference_decode(reference_kv, q_host.data(), q_heads, 1.0 / std::sqrt(double{head_dim}));
  const ekv::L2Error error = ekv::relative_l2_error(got.data(), reference, head_dim);
  INFO("pooled " << error.pooled << ", worst head " << error.worst);
  CHECK(error.worst < 2e-3);
}
