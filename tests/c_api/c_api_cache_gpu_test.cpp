// The C API's cache handle on the GPU (EKV_DEVICE_CUDA) with device pointers: append and
// exact attention against the float64 reference, elastic attention (or its exact
// fallback, as attended_exactly says), descriptors that lie about their memory or name
// another device rejected by name, the block accessors from host memory, and a GPU dump
// loaded into a CPU handle that answers the same. Tolerances: tests/cache/
// kv_cache_checks.hpp's (half 2e-3 relative L2 per head).

#include <doctest/doctest.h>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "c_api/descriptor.hpp"
#include "cache/kv_cache_checks.hpp"
#include "cache/reliability.hpp"
#include "ekv/c_api.h"
#include "ekv/core/device.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/span.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::Descriptor;

constexpr const char* kConfig =
    "layer_num=2 kv_head_num=2 q_head_num=8 head_dim=64 block_len=16 kv_type=fp16 max_block_num=40 "
    "max_batch_size=2 max_thread_num=2";

std::string last_error() { return ekv_last_error(); }

struct Handle {
  explicit Handle(int device_type) {
    REQUIRE(ekv_cache_create_from_text(kConfig, device_type, 0, &cache) == EKV_SUCCESS);
  }
  Handle(const Handle&) = delete;  // one destroy per handle
  Handle& operator=(const Handle&) = delete;
  ~Handle() { ekv_cache_destroy(cache); }
  ekv_cache* cache = nullptr;
};

// A host vector's copy in device memory.
ekv::DeviceBuffer<__half> on_device(const std::vector<__half>& host) {
  ekv::DeviceBuffer<__half> d(host.size());
  d.copy_from(ekv::Span<const __half>(host.data(), host.size()));
  return d;
}

std::vector<__half> on_host(const ekv::DeviceBuffer<__half>& d) {
  std::vector<__half> host(d.size());
  d.copy_to(ekv::Span<__half>(host.data(), host.size()));
  return host;
}

// One decode step's device query (random, its host copy beside it), output and LSE, with
// their descriptors: batch x 8 heads x 64.
struct Decode {
  Decode(int batch, std::uint64_t seed)
      : q(ekv::bench::random_uniform<__half>(static_cast<std::size_t>(batch) * 8 * 64, -1.0f, 1.0f, seed)),
        dq(on_device(q)),
        dout(q.size()),
        dlse(static_cast<std::size_t>(batch) * 8),
        qd(dq.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA),
        od(dout.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA),
        ld(dlse.data(), {batch, 8}, EKV_DTYPE_FLOAT32, EKV_DEVICE_CUDA) {}
  std::vector<__half> q;
  ekv::DeviceBuffer<__half> dq, dout;
  ekv::DeviceBuffer<float> dlse;
  Descriptor qd, od, ld;
};

// kConfig as the C++ config the shadow cache takes.
ekv::KVCacheConfig config_of_kconfig() {
  ekv::KVCacheConfig config = ekv::test::small_config(ekv::DType::kFloat16);
  config.layer_num = 2;
  config.max_batch_size = 2;
  return config;
}

}  // namespace

TEST_CASE("a GPU handle with device pointers: append, attention, errors, and its dump on the CPU backend") {
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  const std::uint64_t seed = ekv::test::seed();
  INFO("seed " << seed);
  ekv::test::Shadow<__half> shadow(config_of_kconfig(), 40);
  Handle gpu(EKV_DEVICE_CUDA), cpu(EKV_DEVICE_CPU);
  int device_type = 0, device_id = -1;
  ekv_cache_config back;
  CHECK(ekv_cache_get_config(gpu.cache, &back, &device_type, &device_id) == EKV_SUCCESS);
  CHECK(device_type == EKV_DEVICE_CUDA);
  CHECK(device_id == 0);

  const int batch = 2, prompt = 45;
  for (int layer = 0; layer < 2; ++layer) {
    const std::size_t n = static_cast<std::size_t>(batch) * prompt * 2 * 64;
    const std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + layer);
    const std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 7 + layer);
    ekv::DeviceBuffer<__half> dk = on_device(k), dv = on_device(v);
    Descriptor kd(dk.data(), {batch, prompt, 2, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA);
    Descriptor vd(dv.data(), {batch, prompt, 2, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA);
    REQUIRE(ekv_cache_append(gpu.cache, layer, &kd.t, &vd.t) == EKV_SUCCESS);
    REQUIRE(ekv::cpu_append_kv<__half>(shadow.view(layer, batch), k.data(), v.data(), prompt));
  }

  const std::size_t rows = static_cast<std::size_t>(batch) * 8;
  Decode io(batch, seed + 99);
  std::vector<__half>& q = io.q;
  ekv::DeviceBuffer<__half>& dq = io.dq;
  ekv::DeviceBuffer<__half>& dout = io.dout;
  ekv::DeviceBuffer<float>& dlse = io.dlse;
  const Descriptor &qd = io.qd, &od = io.od, &ld = io.ld;
  for (int layer = 0; layer < 2; ++layer) {
    int exact = -1;
    REQUIRE(ekv_cache_attn(gpu.cache, &qd.t, &od.t, &ld.t, layer, 0, -1, 1, 1, &exact) == EKV_SUCCESS);
    CHECK(exact == 1);
    const std::vector<__half> o = on_host(dout);
    std::vector<float> lse(rows);
    dlse.copy_to(ekv::Span<float>(lse.data(), lse.size()));
    ekv::test::check_exact(shadow, layer, batch, q.data(), o.data(), lse.data());
    REQUIRE(ekv_cache_attn(gpu.cache, &qd.t, &od.t, &ld.t, layer, 0, 1, 1, 1, &exact) == EKV_SUCCESS);
    if (exact == 1) {  // the budget cannot pay at 3 blocks: KVCache::attn attended every block
      const std::vector<__half> fallback = on_host(dout);
      ekv::test::check_exact(shadow, layer, batch, q.data(), fallback.data(), lse.data());
    }
  }

  // descriptors checked against the memory they point to
  // host memory, described as device memory
  Descriptor lying(q.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA);
  CHECK(ekv_cache_attn(gpu.cache, &lying.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr) == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error() == "ekv_cache_attn: q is host memory, but q.device_type is EKV_DEVICE_CUDA; supported: device "
                        "memory for EKV_DEVICE_CUDA, EKV_DEVICE_CPU for host memory");
  Descriptor elsewhere(dq.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA);
  elsewhere.t.device_id = 1;
  CHECK(ekv_cache_attn(gpu.cache, &elsewhere.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr) ==
        EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error() == "ekv_cache_attn: q.device_id=1 not supported; supported: 0 (the cache's device)");
  Descriptor host_q(q.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16);
  CHECK(ekv_cache_attn(gpu.cache, &host_q.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr) == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error() == "ekv_cache_attn: KVCache::attn: q is in host memory; this cache needs cuda");
  ekv_cache* none = nullptr;
  const int count = ekv::device_count();
  CHECK(ekv_cache_create_from_text(kConfig, EKV_DEVICE_CUDA, count, &none) == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error() == "ekv_cache_create_from_text: device_id=" + std::to_string(count) +
                            " not supported; supported: 0 to " + std::to_string(count - 1) +
                            " (the visible CUDA devices)");

  // the block accessors take host memory on the GPU cache
  std::vector<std::int32_t> table(2 * 40);
  int width = 0;
  REQUIRE(ekv_cache_get_block_table(gpu.cache, table.data(), 80, &width) == EKV_SUCCESS);
  std::vector<__half> kb(2 * 16 * 64), vb(kb.size());
  Descriptor kbd(kb.data(), {2, 16, 64}, EKV_DTYPE_FLOAT16), vbd(vb.data(), {2, 16, 64}, EKV_DTYPE_FLOAT16);
  REQUIRE(ekv_cache_get_kvcache_one_block(gpu.cache, &kbd.t, &vbd.t, 1, table[0]) == EKV_SUCCESS);
  for (int i = 0; i < 16 * 64; ++i) CHECK(__half2float(kb[i]) == __half2float(shadow.k[1][i]));

  // the GPU's file on the CPU backend: the same tables, and attention within tolerance
  const std::string path = ekv::test::scratch_path("c_api_cache_gpu_test");  // several runs at once
  REQUIRE(ekv_cache_dump_kvcache(gpu.cache, path.c_str()) == EKV_SUCCESS);
  REQUIRE(ekv_cache_load_kvcache(cpu.cache, path.c_str()) == EKV_SUCCESS);
  std::vector<std::int32_t> cpu_table(80);
  REQUIRE(ekv_cache_get_block_table(cpu.cache, cpu_table.data(), 80, &width) == EKV_SUCCESS);
  CHECK(cpu_table == table);
  std::vector<__half> o(rows * 64);
  std::vector<float> lse(rows);
  Descriptor hq(q.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16), ho(o.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT16);
  Descriptor hl(lse.data(), {batch, 8}, EKV_DTYPE_FLOAT32);
  REQUIRE(ekv_cache_attn(cpu.cache, &hq.t, &ho.t, &hl.t, 1, 0, -1, 1, 1, nullptr) == EKV_SUCCESS);
  ekv::test::check_exact(shadow, 1, batch, q.data(), o.data(), lse.data());
  std::remove(path.c_str());
  int current = -1;
  REQUIRE(cudaGetDevice(&current) == cudaSuccess);
  CHECK(current == 0);
}

TEST_CASE("the _on_stream calls: ordered on the caller's stream, the attention captured into a CUDA graph") {
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  const std::uint64_t seed = ekv::test::seed();
  INFO("seed " << seed);
  ekv::test::Shadow<__half> shadow(config_of_kconfig(), 40);
  Handle gpu(EKV_DEVICE_CUDA);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  const int batch = 2;
  // appends on the caller's stream; the buffers live until the stream has read them
  const auto append = [&](int layer, int tokens, std::uint64_t salt) {
    const std::size_t n = static_cast<std::size_t>(batch) * tokens * 2 * 64;
    const std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + salt);
    const std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + salt + 1);
    ekv::DeviceBuffer<__half> dk = on_device(k), dv = on_device(v);
    Descriptor kd(dk.data(), {batch, tokens, 2, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA);
    Descriptor vd(dv.data(), {batch, tokens, 2, 64}, EKV_DTYPE_FLOAT16, EKV_DEVICE_CUDA);
    REQUIRE(ekv_cache_append_on_stream(gpu.cache, layer, &kd.t, &vd.t, stream) == EKV_SUCCESS);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    REQUIRE(ekv::cpu_append_kv<__half>(shadow.view(layer, batch), k.data(), v.data(), tokens));
  };
  for (int layer = 0; layer < 2; ++layer) append(layer, 45, 10 * layer);

  const std::size_t rows = static_cast<std::size_t>(batch) * 8;
  Decode io(batch, seed + 99);
  const auto poison = [&] {  // NaN outputs: a call that writes nothing fails the check
    REQUIRE(cudaMemsetAsync(io.dout.data(), 0xFF, io.dout.size() * sizeof(__half), stream) == cudaSuccess);
    REQUIRE(cudaMemsetAsync(io.dlse.data(), 0xFF, io.dlse.size() * sizeof(float), stream) == cudaSuccess);
  };
  const auto check = [&](int layer) {
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const std::vector<__half> o = on_host(io.dout);
    std::vector<float> lse(rows);
    io.dlse.copy_to(ekv::Span<float>(lse.data(), lse.size()));
    ekv::test::check_exact(shadow, layer, batch, io.q.data(), o.data(), lse.data());
  };
  for (int layer = 0; layer < 2; ++layer) {
    poison();
    int exact = -1;
    REQUIRE(ekv_cache_attn_on_stream(gpu.cache, &io.qd.t, &io.od.t, &io.ld.t, layer, 0, -1, 1, 1, &exact,
                                     stream) == EKV_SUCCESS);
    CHECK(exact == 1);
    check(layer);
  }

  // layer 0's exact attention, warmed up above, captured; replayed after appends (within
  // the plan's length) it attends the tokens they added
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  const ekv_status captured =
      ekv_cache_attn_on_stream(gpu.cache, &io.qd.t, &io.od.t, &io.ld.t, 0, 1, -1, 1, 1, nullptr, stream);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  REQUIRE_MESSAGE(captured == EKV_SUCCESS, last_error());
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int tokens : {3, 20}) {  // to 48 tokens (3 whole blocks), then 68 (two new blocks)
    append(0, tokens, 100 + tokens);
    poison();
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    check(0);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  // a stream of another device, where there is one, is rejected by name
  if (ekv::device_count() > 1) {
    cudaStream_t other = nullptr;
    REQUIRE(cudaSetDevice(1) == cudaSuccess);
    REQUIRE(cudaStreamCreate(&other) == cudaSuccess);
    REQUIRE(cudaSetDevice(0) == cudaSuccess);
    CHECK(ekv_cache_attn_on_stream(gpu.cache, &io.qd.t, &io.od.t, &io.ld.t, 0, 1, -1, 1, 1, nullptr, other) ==
          EKV_ERROR_INVALID_ARGUMENT);
    CHECK(last_error() == "ekv_cache_attn_on_stream: stream is a stream of device 1; supported: a stream of device 0 "
                          "(the cache's)");
    cudaStreamDestroy(other);
  }
  cudaStreamDestroy(stream);
}
